//! The proposer: turns many concurrent proposals into few Raft entries.
//!
//! Callers of `Node::propose` send (command, reply slot) into a bounded queue. One
//! task owns the other end. It takes the first queued command plus everything
//! else already queued (up to `max_batch` commands and `max_batch_bytes`) and
//! submits them as ONE entry; while
//! that entry is in flight, new commands pile up in the queue and form the next
//! batch, so batches grow with load on their own. When the entry is applied, each
//! caller gets its own reply from the entry's reply vector.
//!
//! On the leader the batch goes straight into Raft; on any other member it is sent
//! to the leader. If the leader changes or cannot be reached, the same batch (same
//! origin, incarnation and sequence numbers) is sent again to whoever leads next,
//! for up to twice `node_down_after` (a whole failover: the old leader's going,
//! possibly several election rounds, the new leader's first commit): the state
//! machine host applies it once. For that
//! to hold, only one batch is in flight at a time, so no later batch can commit
//! before a retried one. When a batch fails for good, the commands queued
//! behind it fail with it: a connection's later PUBLISH must not commit
//! after its earlier one failed (the client sends that one again, on another
//! node, after the later ones).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, Fatal, RaftError};
use openraft::ServerState;
use starling_storage::{Request, Response};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::network::CallError;
use crate::shared::Core;
use crate::timeouts;
use crate::wire::Refused;
use crate::ClusterError;

/// One proposed command and where its reply goes.
pub(crate) struct Proposal {
    pub(crate) command: Vec<u8>,
    /// The caller of `propose` awaits the other end.
    pub(crate) reply: oneshot::Sender<Result<Vec<u8>, ClusterError>>,
}

/// Counters shared by the proposer and `Node::stats`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) commands: AtomicU64,
    pub(crate) batches: AtomicU64,
    /// How many commands each batch carried, by [`BATCH_BOUNDS`] bucket (the
    /// last one: more than them all).
    pub(crate) batch_sizes: [AtomicU64; BATCH_BOUNDS.len() + 1],
}

/// Upper bounds of the batch size buckets: powers of two up to the largest
/// batch the node makes by default.
pub const BATCH_BOUNDS: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

impl Counters {
    fn record_batch(&self, commands: usize) {
        let commands = commands as u64;
        let bucket = BATCH_BOUNDS
            .iter()
            .position(|bound| commands <= *bound)
            .unwrap_or(BATCH_BOUNDS.len());
        self.batch_sizes[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// What the proposer needs to run.
pub(crate) struct Proposer {
    pub(crate) core: Arc<Core>,
    pub(crate) incarnation: u64,
    pub(crate) max_batch: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) counters: Arc<Counters>,
}

impl Proposer {
    /// Runs until `stop` turns true or every sender is gone. Commands still queued
    /// then fail with `ShuttingDown`; the batch in flight is finished first.
    pub(crate) async fn run(
        self,
        mut queue: mpsc::Receiver<Proposal>,
        mut stop: watch::Receiver<bool>,
    ) {
        let max_batch = self.max_batch.max(1);
        let mut next_seq = 0u64;
        // A command taken from the queue that did not fit in the last batch:
        // it opens the next one.
        let mut carried: Option<Proposal> = None;
        loop {
            let first = match carried.take() {
                Some(first) => first,
                None => tokio::select! {
                    biased;
                    _ = stop.wait_for(|stop| *stop) => break,
                    first = queue.recv() => match first {
                        Some(first) => first,
                        None => break,
                    },
                },
            };
            let mut bytes = first.command.len();
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(proposal) if bytes + proposal.command.len() > self.max_batch_bytes => {
                        carried = Some(proposal);
                        break;
                    }
                    Ok(proposal) => {
                        bytes += proposal.command.len();
                        batch.push(proposal);
                    }
                    Err(_) => break,
                }
            }
            let first_seq = next_seq;
            next_seq += batch.len() as u64;
            if let Some(failure) = self.submit(batch, first_seq).await {
                // Queued behind the failed batch, in the order their callers
                // meant them to commit: none may commit without it. Only
                // what is queued now; later commands are on their own.
                let queued = queue.len();
                let behind = carried
                    .take()
                    .into_iter()
                    .chain(std::iter::from_fn(|| queue.try_recv().ok()).take(queued));
                for proposal in behind {
                    let _ = proposal.reply.send(Err(same(&failure)));
                }
            }
        }

        queue.close();
        if let Some(proposal) = carried {
            let _ = proposal.reply.send(Err(ClusterError::ShuttingDown));
        }
        while let Ok(proposal) = queue.try_recv() {
            let _ = proposal.reply.send(Err(ClusterError::ShuttingDown));
        }
    }

    /// Commits one batch as one entry and hands out the replies; the error if
    /// it failed.
    async fn submit(&self, batch: Vec<Proposal>, first_seq: u64) -> Option<ClusterError> {
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let count = commands.len();
        self.counters
            .commands
            .fetch_add(count as u64, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.record_batch(count);
        debug!(commands = count, first_seq, "proposing batch");
        let request = Request {
            origin: self.core.id,
            incarnation: self.incarnation,
            first_seq,
            commands,
        };
        let outcome = write(&self.core, &request).await;
        deliver(outcome, replies)
    }
}

/// How many `node_down_after` periods a batch is retried across leader changes.
/// One was too short for a failover on a loaded machine (a stopping leader may
/// hold its connections for 2 s, and elections can take several rounds).
const FAILOVER_PERIODS: u32 = 2;

/// Commits `request` through whichever member leads, retrying the same request
/// across leader changes for up to [`FAILOVER_PERIODS`] × `node_down_after`.
async fn write(core: &Core, request: &Request) -> Result<Response, ClusterError> {
    let deadline = Instant::now() + core.node_down_after * FAILOVER_PERIODS;
    let mut metrics = core.raft.metrics();
    loop {
        let (leading, leader) = {
            let m = metrics.borrow_and_update();
            if crate::liveness::cut_off(core, &m, FAILOVER_PERIODS) {
                // Out of touch for longer than a failover takes: say so now
                // rather than after the whole budget.
                return Err(ClusterError::Unavailable);
            }
            let leader = m
                .current_leader
                .filter(|l| *l != core.id)
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
            (m.state == ServerState::Leader, leader)
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClusterError::Unavailable);
        }
        if leading && core.stepping_down.load(Ordering::Relaxed) {
            debug!("stepping down: the batch waits for the next leader");
        } else if leading {
            match tokio::time::timeout(remaining, core.raft.client_write(request.clone())).await {
                Err(_) => return Err(ClusterError::Unavailable),
                Ok(Ok(response)) => return Ok(response.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                    debug!("lost leadership with a batch in flight; retrying");
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                    return Err(ClusterError::Raft(e.to_string()))
                }
                Ok(Err(RaftError::Fatal(Fatal::Stopped))) => {
                    return Err(ClusterError::ShuttingDown)
                }
                Ok(Err(RaftError::Fatal(e))) => return Err(ClusterError::Raft(e.to_string())),
            }
        } else if let Some(leader) = leader {
            match core
                .peers
                .propose(&leader.grpc_addr, request, remaining)
                .await
            {
                Ok(Ok(data)) => return Ok(data),
                Ok(Err(Refused::Failed(e))) => return Err(ClusterError::Raft(e)),
                Ok(Err(refused)) => debug!(%refused, "leader refused a batch; retrying"),
                Err(CallError::Timeout) => return Err(ClusterError::Unavailable),
                Err(e) => debug!(error = %e, "leader unreachable; retrying"),
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() {
                return Err(ClusterError::ShuttingDown);
            },
            _ = tokio::time::sleep(timeouts::PROPOSE_RETRY_PAUSE) => {}
            _ = tokio::time::sleep_until(deadline) => return Err(ClusterError::Unavailable),
        }
    }
}

/// Hands each caller its own reply, or the batch's error, which it returns.
fn deliver(
    outcome: Result<Response, ClusterError>,
    replies: Vec<oneshot::Sender<Result<Vec<u8>, ClusterError>>>,
) -> Option<ClusterError> {
    let failure = match outcome {
        Ok(data) if data.len() == replies.len() => {
            for (reply, data) in replies.into_iter().zip(data) {
                // A caller that stopped waiting is no error: its command committed.
                let _ = reply.send(Ok(data));
            }
            return None;
        }
        Ok(data) => {
            warn!(
                expected = replies.len(),
                got = data.len(),
                "state machine returned the wrong number of replies"
            );
            ClusterError::Raft("the state machine returned the wrong number of replies".into())
        }
        Err(e) => e,
    };
    for reply in replies {
        let _ = reply.send(Err(same(&failure)));
    }
    Some(failure)
}

/// A copy of a batch's error for each of its callers.
fn same(error: &ClusterError) -> ClusterError {
    match error {
        ClusterError::Storage(s) => ClusterError::Storage(s.clone()),
        ClusterError::Unavailable => ClusterError::Unavailable,
        ClusterError::ShuttingDown => ClusterError::ShuttingDown,
        ClusterError::Raft(s) => ClusterError::Raft(s.clone()),
        ClusterError::Config(s) => ClusterError::Config(s.clone()),
        ClusterError::Membership(s) => ClusterError::Membership(s.clone()),
        ClusterError::Listen { addr, source } => ClusterError::Listen {
            addr: *addr,
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
    }
}
