//! The session's [`View`] of a live node: its replicated state, health,
//! settings and metrics.

use std::sync::Arc;

use starling_proto::mqtt::QoS;

use crate::auth::PasswordFile;
use crate::config::MqttConfig;
use crate::metrics::Metrics;
use crate::session::View;
use crate::state::{Message, Queued, Target};
use crate::Shared;

pub(super) struct Live<'a>(pub &'a Shared);

impl View for Live<'_> {
    fn has_quorum(&self) -> bool {
        self.0.node.quorum_hint()
    }

    fn is_fenced(&self) -> bool {
        self.0.registry.is_fenced()
    }

    fn config(&self) -> &MqttConfig {
        &self.0.config
    }

    fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    fn targets(&self, topic: &str, qos: QoS, publisher: Option<&str>) -> Vec<Target> {
        let pick = crate::state::Pick::Local;
        self.0.machine.targets(topic, qos, publisher, pick)
    }

    fn queue_head(&self, client_id: &str) -> Option<u64> {
        self.0.machine.queue_head(client_id)
    }

    fn sent_below(&self, client_id: &str) -> u64 {
        self.0.machine.sent_below(client_id)
    }

    fn queued(&self, client_id: &str, from: u64, max: usize) -> Vec<(u64, Queued)> {
        self.0.machine.queued(client_id, from, max)
    }

    fn retained_matching(&self, filter: &str) -> Vec<Message> {
        self.0.machine.retained_matching(filter)
    }

    fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }

    fn authenticator(&self, method: &str) -> Option<&dyn crate::auth::Authenticator> {
        self.0.authenticators.find(method)
    }

    fn passwords(&self) -> Option<Arc<PasswordFile>> {
        self.0.auth.passwords()
    }

    fn allow_anonymous(&self) -> bool {
        self.0.allow_anonymous
    }

    fn subscription_count(&self, client_id: &str) -> usize {
        self.0.machine.subscription_count(client_id)
    }

    fn has_subscription(&self, client_id: &str, filter: &str) -> bool {
        self.0.machine.has_subscription(client_id, filter)
    }

    fn acl(&self) -> Option<Arc<crate::auth::acl::AclFile>> {
        self.0.auth.acl()
    }
}
