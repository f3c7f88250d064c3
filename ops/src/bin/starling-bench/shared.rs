//! What the client tasks share with the task running the scenario: live counters,
//! the run's phase, and the run's clock.
//!
//! Counters are atomics bumped once per batch, not per message, so that a busy run
//! does not spend its time on cache-line ping-pong. The phase is a `watch` channel:
//! the scenario task is its only writer, every client task a reader.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct Stats {
    /// PUBLISH packets written.
    pub sent: AtomicU64,
    /// Publishes whose flow completed (PUBACK, or PUBCOMP).
    pub acked: AtomicU64,
    /// PUBLISH packets received by subscribers, duplicates included.
    pub received: AtomicU64,
    /// Payload bytes received by subscribers.
    pub received_bytes: AtomicU64,
    /// Messages received before publishing started: left over in a persistent session
    /// from an earlier run.
    pub stale: AtomicU64,
    /// Connections that failed after being established, and protocol surprises.
    pub errors: AtomicU64,
    /// Clients connected right now.
    pub connected: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: Self::get(&self.sent),
            acked: Self::get(&self.acked),
            received: Self::get(&self.received),
            received_bytes: Self::get(&self.received_bytes),
            errors: Self::get(&self.errors),
            connected: Self::get(&self.connected),
        }
    }
}

/// The counters at one instant.
#[derive(Debug, Default, Clone, Copy)]
pub struct Snapshot {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub errors: u64,
    pub connected: u64,
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            sent: self.sent - earlier.sent,
            acked: self.acked - earlier.acked,
            received: self.received - earlier.received,
            received_bytes: self.received_bytes - earlier.received_bytes,
            errors: self.errors - earlier.errors,
            connected: self.connected,
        }
    }
}

/// Where the run is; written by the scenario task only.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Clients connect and subscribe; messages arriving now are stale.
    Setup,
    /// Publishers publish until `stop_at`; latency counts from `measure_from`.
    Run {
        measure_from: Instant,
        stop_at: Instant,
    },
    /// Publishers are done; subscribers wait until they have everything that was
    /// sent (`sent[publisher]`, when known) or until `until`.
    Drain {
        until: Instant,
        sent: Option<Arc<Vec<u64>>>,
    },
}

/// Everything a client task holds a handle to.
#[derive(Debug)]
pub struct Shared {
    pub stats: Stats,
    pub phase: watch::Sender<Phase>,
    /// The run's clock: payload timestamps are nanoseconds since this instant.
    pub epoch: Instant,
    /// Publishers still publishing; the last to stop wakes `publishers_done`, which
    /// ends the measured window.
    pub publishing: AtomicUsize,
    pub publishers_done: Notify,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            stats: Stats::default(),
            phase: watch::channel(Phase::Setup).0,
            epoch: Instant::now(),
            publishing: AtomicUsize::new(0),
            publishers_done: Notify::new(),
        })
    }

    pub fn since_epoch_ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Called once by each publisher when it stops publishing.
    pub fn publisher_stopped(&self) {
        if self.publishing.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.publishers_done.notify_one();
        }
    }
}
