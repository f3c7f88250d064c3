//! This node's side of every applied command: the [`Effect`]s apply returns,
//! carried out for the connections this node holds. Every node runs them from
//! its own applied log, so a committed message or will reaches the direct
//! subscribers of every node even when its proposer died right after the
//! commit, and no node waits for another's reply to act.

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::router;
use crate::state::{Dispatch, Effect, MqttMachine, Pick};

pub(crate) struct NodeEffects {
    pub(crate) registry: Arc<Registry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) auth: Arc<crate::auth::AuthFiles>,
    /// Set when an operator asked this node to drain (`Command::DrainNode`).
    pub(crate) drain: Arc<tokio::sync::watch::Sender<bool>>,
    /// Notified when an operator asked this node to hand leadership over
    /// (`Command::StepDown`); `leadership::run` does it.
    pub(crate) step_down: Arc<tokio::sync::Notify>,
}

impl Dispatch for NodeEffects {
    fn dispatch(&self, machine: &MqttMachine, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Deliver {
                    message,
                    publisher,
                    shared,
                } => {
                    let pick = Pick::None;
                    let mut targets =
                        machine.targets(&message.topic, message.qos, publisher.as_deref(), pick);
                    targets.extend(shared);
                    // Every other node delivers to its own subscribers; a full
                    // mailbox here is counted by the registry and not waited on.
                    router::deliver_here(&self.registry, &self.metrics, &message, targets);
                }
                Effect::Attach { client_id, conn } => self.registry.attach(client_id, conn),
                Effect::Wake(client_id) => self.registry.wake(&client_id),
                Effect::Kick(conn) => self.registry.kick(conn),
                Effect::NodeDown { node, incarnation } => {
                    self.registry.node_down(node, incarnation)
                }
                Effect::Drain { node, incarnation } => {
                    if node == self.registry.node() && incarnation == self.registry.incarnation() {
                        tracing::info!("asked to drain through the cluster");
                        self.drain.send_replace(true);
                    }
                }
                Effect::StepDown { node, incarnation } => {
                    if node == self.registry.node() && incarnation == self.registry.incarnation() {
                        tracing::info!("asked through the cluster to hand leadership over");
                        self.step_down.notify_one();
                    }
                }
                Effect::AdminKick(conn) => self.registry.stop(conn, crate::registry::Stop::Admin),
                Effect::ReloadAuth => {
                    if let Err(e) = self.auth.reload() {
                        tracing::error!(
                            error = %e,
                            "cannot reload the password and ACL files as the cluster asked: \
                             the ones loaded before stay"
                        );
                    }
                }
            }
        }
    }
}
