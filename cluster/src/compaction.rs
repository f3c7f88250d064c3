//! Compaction by bytes: keeps the Raft log within `Tuning::max_log_bytes`
//! whatever the size of its entries.
//!
//! openraft 0.9 snapshots and purges by entry count only, while one entry is a
//! batch of up to megabytes of commands, so a count says nothing of the disk
//! used or of how long a restart replays. This task looks at the log's size
//! every second; past the bound it purges what the last snapshot covers,
//! keeping about half the bound behind it for followers a little behind, or,
//! when that snapshot covers too little, asks for a new one first.

use std::sync::Arc;
use std::time::Duration;

use starling_storage::StorageHandle;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::node::Core;

/// How often the log's size is looked at.
const CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Compactor {
    pub(crate) core: Arc<Core>,
    pub(crate) storage: StorageHandle,
    pub(crate) max_log_bytes: u64,
}

impl Compactor {
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
            }
            self.check().await;
        }
    }

    async fn check(&self) {
        let bytes = self.storage.log_bytes();
        if bytes <= self.max_log_bytes {
            return;
        }
        let (applied, snapshot, purged) = {
            let m = self.core.raft.metrics().borrow().clone();
            let index = |id: Option<openraft::LogId<u64>>| id.map(|id| id.index);
            (index(m.last_applied), index(m.snapshot), index(m.purged))
        };
        let keep = self.max_log_bytes / 2;
        if let Some(snapshot) = snapshot {
            match self.storage.purge_point(snapshot, keep) {
                Some(upto) if Some(upto) > purged => {
                    debug!(bytes, upto, "raft log over its byte bound: purging");
                    if let Err(e) = self.core.raft.trigger().purge_log(upto).await {
                        warn!(error = %e, "cannot purge the raft log");
                    }
                    return;
                }
                _ => {}
            }
        }
        if applied > snapshot {
            debug!(bytes, "raft log over its byte bound: building a snapshot");
            if let Err(e) = self.core.raft.trigger().snapshot().await {
                warn!(error = %e, "cannot build a snapshot");
            }
        }
    }
}
