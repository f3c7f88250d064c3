//! openraft's own conformance suite, run against the sled store.

mod common;

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::{StorageError, StorageIOError};
use starling_storage::{LogStore, StateMachineStore, Storage, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::<u64>::write(&e))?;
        let storage = Storage::open(dir.path(), Arc::new(common::Journal::default()))
            .map_err(|e| StorageIOError::<u64>::write(&e))?;
        Ok((dir, storage.log_store, storage.state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("the sled store passes openraft's suite");
}
