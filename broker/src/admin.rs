//! What the admin API asks of a node: the cluster as this node sees it, the
//! replicated sessions and retained messages, and the operators' actions
//! (disconnect a client, delete a session, publish as the broker, clear a
//! retained message, remove a member). Reads come from this node's copy of
//! the replicated state, so any node answers; actions go through Raft, so any
//! node can take them and the node that holds the client carries them out.

use std::sync::Arc;

use serde::Serialize;

use crate::state::{Command, Message, Page, Reply, SessionView, SubscriptionView};
use crate::{Broker, BrokerError};

/// One member of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub id: u64,
    /// Its cluster address.
    pub address: String,
    /// "leader", "follower", or "learner" (joining, not yet voting).
    pub role: &'static str,
    /// Whether this node hears from it (itself: always).
    pub up: bool,
    /// On the leader: the last log index known replicated to it, and how
    /// many entries it is behind this node's log.
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
    /// Sessions connected through it, as this node's copy of the replicated
    /// state records them.
    pub connections: usize,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterView {
    /// The node answering.
    pub node_id: u64,
    pub term: u64,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Commands this node has applied since the cluster began.
    pub applied_commands: u64,
    pub members: Vec<MemberView>,
}

/// This node's own figures: who it is, how long it has run, and its running
/// totals, from which two samples give rates.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    pub node_id: u64,
    pub version: &'static str,
    /// Seconds since the broker began to start.
    pub uptime_seconds: u64,
    /// MQTT connections open on this node now.
    pub connections: u64,
    /// PUBLISH packets received from clients and sent to them, all QoS
    /// levels together, since the start.
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Messages not delivered, all reasons together, since the start.
    pub messages_dropped: u64,
}

/// What deleting a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    Deleted,
    NotFound,
    /// A connection holds it: disconnect the client first.
    Connected,
}

impl Broker {
    /// The members, their roles and replication, and this node's Raft state.
    pub fn cluster_view(&self) -> ClusterView {
        let node = &self.shared.node;
        let status = node.status();
        let silent = node.silent_peers();
        let replication = node.replication();
        let me = node.node_id();
        let connections = self.shared.machine.connections_by_node();
        let members = node
            .members()
            .into_iter()
            .map(|(id, address, voter)| {
                let matched = replication
                    .iter()
                    .find(|(peer, _)| *peer == id)
                    .map(|(_, index)| *index);
                let role = if status.leader == Some(id) {
                    "leader"
                } else if voter {
                    "follower"
                } else {
                    "learner"
                };
                MemberView {
                    id,
                    address,
                    role,
                    up: id == me || !silent.contains(&id),
                    matched_index: matched.flatten(),
                    lag: matched.map(|m| {
                        status
                            .last_log_index
                            .unwrap_or(0)
                            .saturating_sub(m.unwrap_or(0))
                    }),
                    connections: connections.get(&id).copied().unwrap_or(0),
                }
            })
            .collect();
        ClusterView {
            node_id: me,
            term: status.term,
            leader: status.leader,
            last_log_index: status.last_log_index,
            applied_index: status.last_applied_index,
            snapshot_index: status.snapshot_index,
            applied_commands: self.shared.machine.applied(),
            members,
        }
    }

    /// This node's id, version, uptime, open connections and message
    /// counters.
    pub fn node_stats(&self) -> NodeStats {
        let metrics = &self.shared.metrics;
        NodeStats {
            node_id: self.shared.node.node_id(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: self.started.elapsed().as_secs(),
            connections: u64::try_from(metrics.connections.get()).unwrap_or(0),
            messages_received: total(&metrics.messages_received),
            messages_sent: total(&metrics.messages_sent),
            messages_dropped: total(&metrics.messages_dropped),
        }
    }

    /// Removes member `id` from the cluster (a dead node, or one scaled
    /// away), through the leader.
    pub async fn remove_member(&self, id: u64) -> Result<(), BrokerError> {
        Ok(self.shared.node.remove_member(id).await?)
    }

    /// A page of sessions (connected or not), by client id.
    pub fn sessions(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&SessionView) -> bool,
    ) -> Page<SessionView> {
        self.shared.machine.sessions_page(after, limit, keep)
    }

    /// One session and its subscriptions.
    pub fn session(&self, client_id: &str) -> Option<(SessionView, Vec<SubscriptionView>)> {
        self.shared.machine.session_view(client_id)
    }

    /// The mailbox of `client_id`'s connection (messages, payload bytes) and
    /// its unacknowledged QoS 1/2 messages, if this node holds it; the node
    /// that does answers for it.
    pub fn mailbox_depth(&self, client_id: &str) -> Option<(usize, usize, usize)> {
        self.shared.registry.mailbox_depth(client_id)
    }

    /// Every subscription that takes a message published to `topic`.
    pub fn subscribers(&self, topic: &str) -> Vec<SubscriptionView> {
        self.shared.machine.subscribers(topic)
    }

    /// A page of retained messages whose topic matches `filter`.
    pub fn retained_page(&self, filter: &str, after: Option<&str>, limit: usize) -> Page<Message> {
        self.shared.machine.retained_page(filter, after, limit)
    }

    /// The retained message of `topic`.
    pub fn retained(&self, topic: &str) -> Option<Message> {
        self.shared.machine.retained(topic)
    }

    /// Disconnects `client_id` wherever it is connected (MQTT 5: DISCONNECT
    /// 0x98), as a lost connection: its will is published. False if it is
    /// not connected.
    pub async fn kick(&self, client_id: &str) -> Result<bool, BrokerError> {
        let command = Command::Kick {
            client_id: Arc::from(client_id),
        };
        found(self.shared.propose_synced(command).await?)
    }

    /// Removes the session of `client_id` and its queue, if no connection
    /// holds it.
    pub async fn delete_session(&self, client_id: &str) -> Result<Deleted, BrokerError> {
        let command = Command::DeleteSession {
            client_id: Arc::from(client_id),
        };
        match self.shared.propose_synced(command).await? {
            Reply::InUse => Ok(Deleted::Connected),
            reply => Ok(if found(reply)? {
                Deleted::Deleted
            } else {
                Deleted::NotFound
            }),
        }
    }

    /// Publishes `message` as the broker, with a client's durability: it is
    /// committed through Raft (so retained, queued for persistent sessions
    /// and delivered by every node) before this returns.
    pub async fn publish(&self, message: Message) -> Result<(), BrokerError> {
        self.shared
            .propose_synced(Command::BrokerPublish { message })
            .await?;
        Ok(())
    }

    /// Asks node `node` to drain and stop, as SIGTERM does. False if it is
    /// not a live node of the cluster.
    pub async fn drain_node(&self, node: u64) -> Result<bool, BrokerError> {
        found(
            self.shared
                .propose_synced(Command::DrainNode { node })
                .await?,
        )
    }

    /// Asks the leader, through the cluster, to hand leadership to another
    /// voter ([`starling_cluster::Node::step_down`]), and waits until this
    /// node sees another leader.
    pub async fn transfer_leadership(&self) -> Result<Transfer, BrokerError> {
        let node = &self.shared.node;
        let Some(from) = node.status().leader else {
            return Ok(Transfer::NoLeader);
        };
        if node.members().iter().filter(|(_, _, voter)| *voter).count() < 2 {
            return Ok(Transfer::Alone { leader: from });
        }
        if !found(
            self.shared
                .propose_synced(Command::StepDown { node: from })
                .await?,
        )? {
            return Ok(Transfer::NoLeader);
        }
        let deadline = tokio::time::Instant::now() + crate::timeouts::STEP_DOWN;
        loop {
            if let Some(to) = node.status().leader.filter(|l| *l != from) {
                return Ok(Transfer::Moved { from, to });
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Transfer::TimedOut { leader: from });
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Why Raft stopped on this node, if it did on its own (a full disk, a
    /// storage error): the node can serve nothing more until it restarts.
    pub fn fatal(&self) -> Option<String> {
        self.shared.node.fatal()
    }

    /// Resolves with the cause once Raft stopped on its own.
    pub async fn failed(&self) -> String {
        self.shared.node.wait_fatal().await
    }

    /// Has this node drain and stop, as SIGTERM does.
    pub fn request_drain(&self) {
        self.drain.send_replace(true);
    }

    /// Resolves once an operator asked, through the cluster, that this node
    /// drain ([`Broker::drain_node`] on any node), or [`Broker::request_drain`].
    pub async fn drain_requested(&self) {
        let mut asked = self.drain.subscribe();
        // The sender lives as long as the broker: an error cannot happen.
        let _ = asked.wait_for(|asked| *asked).await;
    }

    /// Removes the retained message of `topic`, delivering nothing. False if
    /// there was none.
    pub async fn clear_retained(&self, topic: &str) -> Result<bool, BrokerError> {
        let command = Command::ClearRetained {
            topic: Arc::from(topic),
        };
        found(self.shared.propose_synced(command).await?)
    }
}

/// The sum of a counter over all its labels.
fn total(counter: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector as _;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// What became of a request to move leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Node `to` leads now instead of `from`.
    Moved { from: u64, to: u64 },
    /// There is no leader to move (an election is under way).
    NoLeader,
    /// The leader is the only voter: there is no one to hand over to.
    Alone { leader: u64 },
    /// No other node was elected in time; `leader` leads on.
    TimedOut { leader: u64 },
}

fn found(reply: Reply) -> Result<bool, BrokerError> {
    match reply {
        Reply::Found(found) => Ok(found),
        other => Err(BrokerError::UnexpectedReply(format!("{other:?}"))),
    }
}
