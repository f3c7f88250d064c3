//! The wall clock, and the replicated clock the leader keeps moving.
//!
//! Apply reads no clock of its own: what expires (sessions, delayed wills,
//! retained and queued messages) expires when a [`Command::Tick`] carrying the
//! leader's time is applied, at the same point of the log on every node. Only
//! the leader proposes ticks, once a second; a node that just became leader
//! with a clock behind the last tick changes nothing, since the replicated
//! clock never goes back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::shared::Shared;
use crate::state::Command;

/// How often the leader proposes its time.
pub(crate) const TICK: Duration = Duration::from_secs(1);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Proposes the leader's time every [`TICK`] while this node leads.
pub(crate) async fn tick_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = every.tick() => {
                if !shared.node.status().is_leader {
                    continue;
                }
                let command = Command::Tick { now: now_ms() };
                if let Err(e) = shared.propose(command).await {
                    tracing::debug!(error = %e, "tick not committed");
                }
            }
        }
    }
}
