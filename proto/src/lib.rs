//! Every wire format Starling speaks: the MQTT codec ([`mqtt`]) and the cluster's
//! gRPC definitions ([`cluster`]). This crate uses no other Starling crate, so the
//! codec can be fuzzed on its own and tests can write raw, even malformed, packets.

pub mod mqtt;

/// The node-to-node gRPC services, generated from `proto/cluster.proto`.
pub mod cluster {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("starling.cluster.v1");
}
