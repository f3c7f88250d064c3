//! The proposer: turns many concurrent proposals into few Raft entries.
//!
//! Callers of `Node::propose` send (command, reply slot) into a bounded queue. One
//! task owns the other end. It waits for one of `max_in_flight` slots, takes the
//! first queued command plus everything else already queued (up to `max_batch`),
//! and submits them as ONE entry. While entries are in flight, new commands pile up
//! in the queue and form the next batch, so batches grow with load on their own.
//! When an entry is applied, each caller gets its own reply from the entry's reply
//! vector.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::Raft;
use starling_storage::{NodeId, Request, TypeConfig};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn, Instrument};

use crate::ClusterError;

/// How long shutdown waits for entries already submitted before stopping Raft.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// What the proposer needs to run.
pub(crate) struct Proposer {
    pub(crate) raft: Raft<TypeConfig>,
    pub(crate) origin: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) max_batch: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) counters: Arc<Counters>,
}

impl Proposer {
    /// Runs until `stop` turns true or every sender is gone. Commands still queued
    /// then fail with `ShuttingDown`; entries already submitted are waited for.
    pub(crate) async fn run(
        self,
        mut queue: mpsc::Receiver<Proposal>,
        mut stop: watch::Receiver<bool>,
    ) {
        let slots = Arc::new(Semaphore::new(self.max_in_flight));
        let max_batch = self.max_batch.max(1);
        let mut next_seq = 0u64;
        loop {
            let permit = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let first = tokio::select! {
                biased;
                _ = stop.wait_for(|stop| *stop) => break,
                first = queue.recv() => match first {
                    Some(first) => first,
                    None => break,
                },
            };
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(proposal) => batch.push(proposal),
                    Err(_) => break,
                }
            }
            let first_seq = next_seq;
            next_seq += batch.len() as u64;
            self.submit(batch, first_seq, permit).await;
        }

        queue.close();
        while let Ok(proposal) = queue.try_recv() {
            let _ = proposal.reply.send(Err(ClusterError::ShuttingDown));
        }
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
            .await
            .is_err()
        {
            warn!("entries still in flight at shutdown; their proposers get an error");
        }
    }

    /// Submits one batch as one entry and leaves a task to deliver its replies.
    async fn submit(&self, batch: Vec<Proposal>, first_seq: u64, permit: OwnedSemaphorePermit) {
        let (commands, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.command, p.reply)).unzip();
        let count = commands.len();
        self.counters
            .commands
            .fetch_add(count as u64, Ordering::Relaxed);
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        debug!(commands = count, first_seq, "proposing batch");
        let request = Request {
            origin: self.origin,
            incarnation: self.incarnation,
            first_seq,
            commands,
        };
        // `client_write_ff` returns once the entry is queued in Raft's core, so the
        // entries enter the log in the order of their sequence numbers.
        match self.raft.client_write_ff(request).await {
            Ok(pending) => {
                tokio::spawn(
                    async move {
                        let outcome = pending.await;
                        // Free the slot first: the next batch can form while replies go out.
                        drop(permit);
                        deliver(outcome, replies);
                    }
                    .in_current_span(),
                );
            }
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(ClusterError::Raft(fatal.to_string())));
                }
            }
        }
    }
}

type WriteOutcome = Result<
    Result<
        openraft::raft::ClientWriteResponse<TypeConfig>,
        ClientWriteError<NodeId, starling_storage::PeerNode>,
    >,
    oneshot::error::RecvError,
>;

/// Hands each caller its own reply, or the batch's error.
fn deliver(outcome: WriteOutcome, replies: Vec<oneshot::Sender<Result<Vec<u8>, ClusterError>>>) {
    let failure = match outcome {
        Ok(Ok(response)) if response.data.len() == replies.len() => {
            for (reply, data) in replies.into_iter().zip(response.data) {
                // A caller that stopped waiting is no error: its command committed.
                let _ = reply.send(Ok(data));
            }
            return;
        }
        Ok(Ok(response)) => {
            warn!(
                expected = replies.len(),
                got = response.data.len(),
                "state machine returned the wrong number of replies"
            );
            ClusterError::Raft("the state machine returned the wrong number of replies".into())
        }
        Ok(Err(ClientWriteError::ForwardToLeader(_))) => ClusterError::Unavailable,
        Ok(Err(ClientWriteError::ChangeMembershipError(e))) => ClusterError::Raft(e.to_string()),
        // Raft dropped the entry's responder: it is stopping.
        Err(_) => ClusterError::ShuttingDown,
    };
    for reply in replies {
        let _ = reply.send(Err(same(&failure)));
    }
}

/// A copy of a batch's error for each of its callers.
fn same(error: &ClusterError) -> ClusterError {
    match error {
        ClusterError::Storage(s) => ClusterError::Storage(s.clone()),
        ClusterError::Unavailable => ClusterError::Unavailable,
        ClusterError::ShuttingDown => ClusterError::ShuttingDown,
        ClusterError::Raft(s) => ClusterError::Raft(s.clone()),
    }
}
