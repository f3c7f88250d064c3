//! A trivial application state machine for the storage tests: it journals every
//! command it applies and replies with the journal's length.

use std::sync::Mutex;

use starling_storage::{SnapshotEncoder, StateMachine};

#[derive(Default)]
pub struct Journal {
    /// One lock for the whole journal: tests read it while nothing applies.
    applied: Mutex<Vec<Vec<u8>>>,
}

impl Journal {
    // Each test binary compiles this module; not all of them read the journal.
    #[allow(dead_code)]
    pub fn applied(&self) -> Vec<Vec<u8>> {
        self.applied.lock().expect("journal lock").clone()
    }
}

impl StateMachine for Journal {
    fn apply(&self, _term: u64, command: &[u8]) -> Vec<u8> {
        let mut applied = self.applied.lock().expect("journal lock");
        applied.push(command.to_vec());
        (applied.len() as u64).to_be_bytes().to_vec()
    }

    fn snapshot(&self) -> SnapshotEncoder {
        let copy = self.applied.lock().expect("journal lock").clone();
        Box::new(move || postcard::to_stdvec(&copy).map_err(|e| e.to_string()))
    }

    fn restore(&self, snapshot: &[u8]) -> Result<(), String> {
        let applied: Vec<Vec<u8>> = postcard::from_bytes(snapshot).map_err(|e| e.to_string())?;
        *self.applied.lock().expect("journal lock") = applied;
        Ok(())
    }
}
