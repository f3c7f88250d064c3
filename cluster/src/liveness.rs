//! Liveness and quorum, as the broker needs them to act on a dead node.
//!
//! The monitor task looks every [`timeouts::LIVENESS_CHECK_EVERY`] at Raft's metrics and at the
//! stamps the transport leaves (a peer's last successful Raft reply; the last
//! AppendEntries from a leader) and turns them into [`ClusterEvent`]s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{RaftMetrics, ServerState};
use starling_storage::{NodeId, PeerNode};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::shared::Core;
use crate::timeouts;
use crate::ClusterEvent;

/// Whether this node is in touch with a quorum: a leader that a quorum acknowledged
/// within `node_down_after` (or that is the only voter), or a follower or learner
/// that heard from a leader within `node_down_after`.
pub(crate) fn has_quorum(core: &Core, m: &RaftMetrics<NodeId, PeerNode>) -> bool {
    let within = |elapsed: Duration| elapsed <= core.node_down_after;
    match m.state {
        ServerState::Leader => {
            let membership = m.membership_config.membership();
            let alone = membership.voter_ids().all(|v| v == core.id);
            alone
                || m.millis_since_quorum_ack
                    .is_some_and(|ms| within(Duration::from_millis(ms)))
        }
        ServerState::Follower | ServerState::Learner => {
            m.current_leader.is_some_and(|l| l != core.id)
                && core
                    .peers
                    .heard_leader()
                    .is_some_and(|t| within(t.elapsed()))
        }
        ServerState::Candidate | ServerState::Shutdown => false,
    }
}

/// True when this node heard from enough voters within `node_down_after`,
/// itself included, to make a majority (see [`Node::reaches_majority`]).
///
/// [`Node::reaches_majority`]: crate::Node::reaches_majority
pub(crate) fn reaches_majority(core: &Core, m: &RaftMetrics<NodeId, PeerNode>) -> bool {
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let heard = voters
        .iter()
        .filter(|&&v| {
            v == core.id
                || core
                    .peers
                    .heard_from(v)
                    .is_some_and(|t| t.elapsed() <= core.node_down_after)
        })
        .count();
    heard * 2 > voters.len()
}

/// True when this node has been out of touch with a quorum for longer than an
/// election can explain: a leader whose last quorum acknowledgement is older than
/// `node_down_after`, or another member that last heard a leader more than
/// `failover_periods` × `node_down_after` ago. Unlike [`has_quorum`], a candidate
/// or a leader just elected is not cut off.
pub(crate) fn cut_off(
    core: &Core,
    m: &RaftMetrics<NodeId, PeerNode>,
    failover_periods: u32,
) -> bool {
    match m.state {
        ServerState::Leader => {
            let alone = m
                .membership_config
                .membership()
                .voter_ids()
                .all(|v| v == core.id);
            !alone
                && m.millis_since_quorum_ack
                    .is_some_and(|ms| Duration::from_millis(ms) > core.node_down_after)
        }
        _ => core
            .peers
            .heard_leader()
            .is_some_and(|t| t.elapsed() > core.node_down_after * failover_periods),
    }
}

/// The state of the monitor between two looks.
pub(crate) struct Monitor {
    pub(crate) core: Arc<Core>,
    /// Receivers are handed out by `Node::events`; sending never waits, a lagging
    /// receiver loses the oldest events.
    pub(crate) events: broadcast::Sender<ClusterEvent>,
    /// When this node became leader, while it is.
    leading_since: Option<Instant>,
    /// Members seen while leading, with when they were first seen: a node added
    /// later gets its grace period from then.
    seen: BTreeMap<NodeId, Instant>,
    /// Members reported down, with when.
    down: BTreeMap<NodeId, Instant>,
    had_quorum: bool,
    membership_log: Option<Option<openraft::LogId<NodeId>>>,
}

impl Monitor {
    pub(crate) fn new(core: Arc<Core>, events: broadcast::Sender<ClusterEvent>) -> Monitor {
        Monitor {
            core,
            events,
            leading_since: None,
            seen: BTreeMap::new(),
            down: BTreeMap::new(),
            had_quorum: false,
            membership_log: None,
        }
    }

    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(timeouts::LIVENESS_CHECK_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tick.tick() => self.check(Instant::now()),
            }
        }
    }

    fn emit(&self, event: ClusterEvent) {
        tracing::debug!(?event, "cluster event");
        // No receiver is no error: nobody listens yet.
        let _ = self.events.send(event);
    }

    fn check(&mut self, now: Instant) {
        let m = self.core.raft.metrics().borrow().clone();

        let membership_log = Some(*m.membership_config.log_id());
        if self.membership_log != membership_log {
            if self.membership_log.is_some() {
                self.emit(ClusterEvent::MembershipChanged);
            }
            self.membership_log = membership_log;
        }

        if m.state == ServerState::Leader {
            self.check_peers(&m, now);
        } else {
            // The next leader judges afresh.
            self.leading_since = None;
            self.seen.clear();
            self.down.clear();
        }
        self.share_silent();

        let quorum = has_quorum(&self.core, &m);
        self.core
            .quorum
            .store(quorum, std::sync::atomic::Ordering::Release);
        if quorum != self.had_quorum {
            self.had_quorum = quorum;
            self.emit(if quorum {
                ClusterEvent::QuorumRegained
            } else {
                ClusterEvent::QuorumLost
            });
        }
    }

    /// Publishes the peers found silent, for [`crate::Node::silent_peers`].
    fn share_silent(&self) {
        let silent: Vec<NodeId> = self.down.keys().copied().collect();
        *self
            .core
            .silent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = silent;
    }

    fn check_peers(&mut self, m: &RaftMetrics<NodeId, PeerNode>, now: Instant) {
        let since = *self.leading_since.get_or_insert(now);
        let members: Vec<NodeId> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .filter(|id| *id != self.core.id)
            .collect();
        self.seen.retain(|id, _| members.contains(id));
        self.down.retain(|id, _| members.contains(id));
        for node in members {
            let first_seen = *self.seen.entry(node).or_insert(now);
            let last_ok = self.core.peers.last_ok(node);
            let silent_since = last_ok.map_or(first_seen, |t| {
                Instant::from_std(t).max(since).max(first_seen)
            });
            match self.down.get(&node) {
                None if now.saturating_duration_since(silent_since)
                    >= self.core.node_down_after =>
                {
                    tracing::warn!(node, "peer is down");
                    self.down.insert(node, now);
                    // Shared before the event, so whoever it wakes sees it.
                    self.share_silent();
                    self.emit(ClusterEvent::PeerDown { node });
                }
                Some(at) if last_ok.is_some_and(|t| Instant::from_std(t) > *at) => {
                    tracing::info!(node, "peer is up again");
                    self.down.remove(&node);
                    self.emit(ClusterEvent::PeerUp { node });
                }
                _ => {}
            }
        }
    }
}
