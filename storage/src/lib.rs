//! Durable Raft storage: the log store (segment files, with votes and marks in
//! sled), the host of the replicated state machine, and the snapshot store. This crate knows Raft but not MQTT: it stores
//! and applies opaque commands for a [`StateMachine`] supplied from above.

mod error;
mod legacy;
mod log_store;
mod marks;
mod segments;
mod shared;
mod snapshot;
mod state_machine;
mod store;
pub mod timing;
pub mod types;

pub use error::StoreError;
pub use log_store::{LogReader, LogStore};
pub use state_machine::{SnapshotBuilder, StateMachineStore};
pub use store::{Recovery, Storage, StorageHandle};
pub use types::{NodeId, PeerNode, Request, Response, TypeConfig};

/// Serializes a copy of the state taken by [`StateMachine::snapshot`].
pub type SnapshotEncoder = Box<dyn FnOnce() -> Result<Vec<u8>, String> + Send + Sync + 'static>;

/// The application state that Raft replicates. `storage` hosts it; `broker`
/// implements it. Every method is called from one task at a time, in log order.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command and returns the reply for its proposer.
    /// Must be deterministic: every node applies the same commands in the same order.
    /// `term` is the Raft term of the entry carrying the command: the term of
    /// the leader that appended it, the same on every node. A command that is
    /// only valid from the leader of the term it was proposed in (e.g. "that
    /// node is silent") can compare the two, so that a retry that a later
    /// leader appended on a deposed leader's behalf does nothing.
    fn apply(&self, term: u64, command: &[u8]) -> Vec<u8>;
    /// Takes what a snapshot needs, consistent with the last applied command,
    /// and returns the work that serializes it. The work runs on a blocking
    /// thread while commands go on being applied, so this should only copy
    /// (cheaply: shared payloads stay shared). An error of the work fails the
    /// snapshot (it is tried again later); it never stands for an empty state.
    fn snapshot(&self) -> SnapshotEncoder;
    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`].
    fn restore(&self, snapshot: &[u8]) -> Result<(), String>;
}
