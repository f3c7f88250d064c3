//! Durable Raft storage on sled: the log store, the host of the replicated state
//! machine, and the snapshot store. This crate knows Raft but not MQTT: it stores
//! and applies opaque commands for a [`StateMachine`] supplied from above.

mod log_store;
mod snapshot;
mod state_machine;
mod store;
pub mod types;

pub use log_store::{LogReader, LogStore};
pub use state_machine::{SnapshotBuilder, StateMachineStore};
pub use store::{Recovery, Storage, StorageHandle, StoreError};
pub use types::{NodeId, PeerNode, Request, Response, TypeConfig};

/// The application state that Raft replicates. `storage` hosts it; `broker`
/// implements it. Every method is called from one task at a time, in log order.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies one committed command and returns the reply for its proposer.
    /// Must be deterministic: every node applies the same commands in the same order.
    fn apply(&self, command: &[u8]) -> Vec<u8>;
    /// Serializes the whole state, consistent with the last applied command.
    /// An error fails the snapshot (it is tried again later); it never stands
    /// for an empty state.
    fn snapshot(&self) -> Result<Vec<u8>, String>;
    /// Replaces the whole state with a snapshot made by [`StateMachine::snapshot`].
    fn restore(&self, snapshot: &[u8]) -> Result<(), String>;
}
