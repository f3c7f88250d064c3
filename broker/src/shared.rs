//! What every connection task, the event loop and the forwarding receiver
//! share: the Raft node, the state machine, the registry, the forwarder, and
//! the ways to commit a command and to route a message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use starling_cluster::Node;

use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::state::{self, Command, ConnId, Envelope, Message, MqttMachine, Reply};
use crate::{forward, router, timeouts, BrokerError};

/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) node: Node,
    pub(crate) machine: Arc<MqttMachine>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: MqttConfig,
    pub(crate) forwarder: starling_cluster::Forwarder,
    /// Peers not waited for at sync points until they answer one again.
    pub(crate) laggards: Arc<forward::Laggards>,
    /// How long a node may be silent, or without quorum, before others act.
    pub(crate) down_after: Duration,
    pub(crate) next_conn: AtomicU64,
    /// The methods of MQTT 5 enhanced authentication this node offers.
    pub(crate) authenticators: crate::auth::Authenticators,
    /// The password and ACL files in use; read again on SIGHUP and on a
    /// committed `Command::ReloadAuth`.
    pub(crate) auth: Arc<crate::auth::AuthFiles>,
    /// Whether clients that did not authenticate may connect.
    pub(crate) allow_anonymous: bool,
}

impl Shared {
    pub(crate) fn next_conn_id(&self) -> ConnId {
        ConnId {
            node: self.registry.node(),
            incarnation: self.registry.incarnation(),
            local: self.next_conn.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Commits `command` through Raft and returns the state machine's reply.
    pub(crate) async fn propose(&self, command: Command) -> Result<Reply, BrokerError> {
        Ok(self.propose_counted(command).await?.1)
    }

    /// Commits `command` and returns its reply with the number of commands applied
    /// once it was.
    pub(crate) async fn propose_counted(
        &self,
        command: Command,
    ) -> Result<(u64, Reply), BrokerError> {
        let bytes = postcard::to_allocvec(&command)?;
        let reply = self.node.propose(bytes).await?;
        let (applied, queue_full, reply): Envelope = postcard::from_bytes(&reply)?;
        if queue_full > 0 {
            // Counted once, here, by the node that proposed the command.
            self.metrics
                .dropped_many("queue_full", u64::from(queue_full));
        }
        Ok((applied, reply))
    }

    /// Commits `command` and returns once this node applied it too, for a
    /// caller that then reads the replicated state.
    pub(crate) async fn propose_applied(&self, command: Command) -> Result<Reply, BrokerError> {
        let (applied, reply) = self.propose_counted(command).await?;
        if self.machine.applied_reached(applied, timeouts::APPLY).await {
            Ok(reply)
        } else {
            Err(BrokerError::NotApplied(timeouts::APPLY))
        }
    }

    /// Commits `command` and returns once this node and every node it reaches
    /// have applied it: what a SUBACK or the PUBACK of a retained message promises.
    pub(crate) async fn propose_synced(&self, command: Command) -> Result<Reply, BrokerError> {
        let (applied, reply) = self.propose_counted(command).await?;
        let here = self.machine.applied_reached(applied, timeouts::SYNC);
        let others = forward::sync(&self.forwarder, &self.machine, applied, &self.laggards);
        let (here, ()) = futures::join!(here, others);
        if !here {
            tracing::warn!(
                applied,
                "this node did not apply a committed command in time"
            );
        }
        Ok(reply)
    }

    /// Delivers `message` to `targets` (its matched subscribers) that do not
    /// read a queue: those here at once, those on other nodes through the
    /// forwarding streams. The future (if any node is involved, or a local
    /// mailbox is over its capacity) resolves when every such node accepted it
    /// (true) or one did not (false).
    pub(crate) fn route_to(
        &self,
        message: &Message,
        targets: Vec<state::Target>,
    ) -> Option<futures::future::BoxFuture<'static, bool>> {
        let shared = shared_direct(&targets);
        let routed = router::route(
            &self.machine,
            &self.registry,
            &self.metrics,
            message,
            targets,
        );
        if routed.nodes.is_empty() && routed.blocked.is_empty() {
            return None;
        }
        let forwarded = (!routed.nodes.is_empty()).then(|| {
            forward::send(
                &self.node,
                &self.forwarder,
                &self.metrics,
                message,
                &shared,
                routed.nodes,
            )
        });
        let local = router::wait_for_room(routed.blocked, self.config.slow_subscriber_after());
        Some(Box::pin(async move {
            match forwarded {
                Some(forwarded) => futures::join!(forwarded, local).0,
                None => {
                    local.await;
                    true
                }
            }
        }))
    }

    /// Delivers `message` to `targets` (its matched subscribers) that read no
    /// queue, here and on other nodes, for a caller that does not wait: nobody
    /// waits for the other nodes' acks, the message is only queued towards them.
    pub(crate) fn route_detached_to(&self, message: &Message, targets: Vec<state::Target>) {
        let shared = shared_direct(&targets);
        let routed = router::route(
            &self.machine,
            &self.registry,
            &self.metrics,
            message,
            targets,
        );
        if !routed.nodes.is_empty() {
            forward::send_detached(
                &self.node,
                &self.forwarder,
                &self.metrics,
                message,
                &shared,
                &routed.nodes,
            );
        }
    }

    /// Hands `delivery`, which came to `left` through a shared subscription
    /// and was never acknowledged by it, to another member of that
    /// subscription's group, if one is left; nobody waits for it.
    pub(crate) fn redeliver(&self, delivery: crate::registry::Delivery, left: &str) {
        let Some(share) = delivery.shared.as_deref() else {
            return;
        };
        let message = &delivery.message;
        match self
            .machine
            .other_member(share, &message.topic, message.qos, left)
        {
            Some(target) => {
                tracing::debug!(share, to = %target.client_id, "shared message goes to another member");
                self.metrics.redelivered();
                self.route_detached_to(message, vec![target]);
            }
            None => self.metrics.dropped("shared_group_empty"),
        }
    }
}

/// The members of shared subscriptions among `targets` that read no queue:
/// other nodes are told whom this node chose.
fn shared_direct(targets: &[state::Target]) -> Vec<state::Target> {
    targets
        .iter()
        .filter(|t| t.shared.is_some() && !t.queued)
        .cloned()
        .collect()
}
