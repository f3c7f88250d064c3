//! The configuration of the `starling` binary, as a library so that the fuzz
//! targets in `fuzz/` can reach its parser and checks. Everything else of the
//! binary lives in `main.rs` and the modules it declares.

pub mod config;
