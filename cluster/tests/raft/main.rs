//! The cluster crate end to end, in one process: a one-member cluster
//! (`node`), clusters of several members over real gRPC on loopback
//! (`cluster`), and compaction by bytes measured on disk (`compaction`). One
//! test binary, so that the helpers in `common` are shared without dead code.

mod cluster;
mod common;
mod compaction;
mod node;
