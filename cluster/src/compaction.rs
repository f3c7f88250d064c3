//! Compaction by bytes: keeps the Raft log within about `Tuning::max_log_bytes`
//! whatever the size of its entries.
//!
//! openraft 0.9 snapshots and purges by entry count only, while one entry is a
//! batch of up to megabytes of commands, so a count says nothing of the disk
//! used or of how long a restart replays. This task looks at the log's bytes a
//! few times a second and acts on two thresholds of the bound:
//! - once the entries after the last snapshot hold half of it, it asks for a
//!   new snapshot, ahead of the bound rather than at it, since building one takes
//!   a while during which the log keeps growing;
//! - once the entries that snapshot covers hold more than a quarter of it, it
//!   purges the oldest of them, keeping that quarter for followers a little
//!   behind.
//!
//! So the log holds about three quarters of the bound, plus what arrives while
//! a snapshot is built. openraft's count policy still applies beside this.

use std::sync::Arc;

use starling_storage::StorageHandle;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::shared::Core;
use crate::timeouts;

pub(crate) struct Compactor {
    pub(crate) core: Arc<Core>,
    pub(crate) storage: StorageHandle,
    pub(crate) max_log_bytes: u64,
}

impl Compactor {
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(timeouts::COMPACTION_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
            }
            self.check().await;
        }
    }

    /// Bytes of log after the last snapshot that call for a new one.
    fn snapshot_after(&self) -> u64 {
        self.max_log_bytes / 2
    }

    /// Bytes of log kept behind the last snapshot.
    fn keep(&self) -> u64 {
        self.max_log_bytes / 4
    }

    async fn check(&self) {
        let bytes = self.storage.log_bytes();
        if bytes <= self.keep().min(self.snapshot_after()) {
            return;
        }
        let (applied, snapshot, purged) = {
            let m = self.core.raft.metrics().borrow().clone();
            let index = |id: Option<openraft::LogId<u64>>| id.map(|id| id.index);
            (index(m.last_applied), index(m.snapshot), index(m.purged))
        };
        let covered = snapshot.map_or(0, |s| self.storage.log_bytes_through(s));
        if let Some(snapshot) = snapshot.filter(|_| covered > self.keep()) {
            match self.storage.purge_point(snapshot, self.keep()) {
                Some(upto) if Some(upto) > purged => {
                    debug!(
                        bytes,
                        covered, upto, "raft log over its byte bound: purging"
                    );
                    if let Err(e) = self.core.raft.trigger().purge_log(upto).await {
                        warn!(error = %e, "cannot purge the raft log");
                    }
                }
                _ => {}
            }
        }
        let after = bytes.saturating_sub(covered);
        // openraft ignores the request while a snapshot is being built.
        if after >= self.snapshot_after() && applied > snapshot {
            debug!(
                bytes,
                after, "raft log past its snapshot threshold: building a snapshot"
            );
            if let Err(e) = self.core.raft.trigger().snapshot().await {
                warn!(error = %e, "cannot build a snapshot");
            }
        }
    }
}
