//! A test application: it journals every command and replies `"<command>#<position>"`,
//! so every caller can check that it got the reply to its own command.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_cluster::{Node, NodeConfig, SnapshotEncoder, StateMachine, Tuning};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Default)]
pub struct Journal {
    /// One lock around the journal; held only inside each call.
    applied: Mutex<Vec<Vec<u8>>>,
}

impl Journal {
    pub fn applied(&self) -> Vec<Vec<u8>> {
        self.applied.lock().expect("journal lock").clone()
    }
}

impl StateMachine for Journal {
    fn apply(&self, _term: u64, command: &[u8]) -> Vec<u8> {
        let mut applied = self.applied.lock().expect("journal lock");
        applied.push(command.to_vec());
        let mut reply = command.to_vec();
        reply.extend_from_slice(format!("#{}", applied.len()).as_bytes());
        reply
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

pub fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        max_batch: 1024,
        listen: ([127, 0, 0, 1], 0).into(),
        ..NodeConfig::default()
    }
}

/// Starts a node on `dir` with a fresh journal and waits until it is ready.
pub async fn start(dir: &Path, tuning: Tuning) -> (Node, Arc<Journal>) {
    let app = Arc::new(Journal::default());
    let node = Node::start_tuned(config(dir), tuning, app.clone())
        .await
        .expect("node starts");
    node.wait_ready(READY_TIMEOUT)
        .await
        .expect("node becomes ready");
    (node, app)
}

pub fn command(i: usize) -> Vec<u8> {
    format!("cmd-{i}").into_bytes()
}

/// Proposes `count` commands from `proposers` concurrent tasks, numbering them from
/// `first`, and checks each reply answers its own command. Returns the positions.
pub async fn propose_concurrently(
    node: &Node,
    first: usize,
    count: usize,
    proposers: usize,
) -> Vec<usize> {
    let mut tasks = Vec::new();
    for p in 0..proposers {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for i in (first + p..first + count).step_by(proposers) {
                let reply = node.propose(command(i)).await.expect("proposal commits");
                positions.push(position_in_reply(&reply, &command(i)));
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.extend(task.await.expect("proposer task"));
    }
    positions
}

/// Checks that `reply` answers `command` and returns its journal position.
pub fn position_in_reply(reply: &[u8], command: &[u8]) -> usize {
    let text = std::str::from_utf8(reply).expect("utf-8 reply");
    let (cmd, position) = text.rsplit_once('#').expect("reply has a position");
    assert_eq!(cmd.as_bytes(), command, "reply to another command");
    position.parse().expect("numeric position")
}
