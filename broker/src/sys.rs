//! The `$SYS/broker/...` topics, named and worded as Mosquitto's, published
//! every `mqtt.sys_interval` seconds.
//!
//! Each node publishes its own tree to the clients connected to it, as a
//! QoS 0 message that is not retained, through the same local delivery a
//! committed message takes on each node: nothing goes through Raft or to
//! other nodes. What the replicated state knows (clients, subscriptions,
//! retained and queued messages, the members) is the cluster's, and the same
//! on every node up to how far it has applied; what only a node counts
//! (messages and bytes in and out, its uptime) is that node's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_proto::mqtt::QoS;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Totals;
use crate::router;
use crate::shared::Shared;
use crate::state::{Census, Message, Pick};

/// What one publication of the tree says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Figures {
    /// Seconds since this node started.
    pub(crate) uptime: u64,
    /// Cluster-wide counts, from this node's copy of the replicated state.
    pub(crate) census: Census,
    /// This node's counters.
    pub(crate) totals: Totals,
    /// This node's id, the members' ids and the leader this node knows of.
    pub(crate) node: u64,
    pub(crate) members: Vec<u64>,
    pub(crate) leader: Option<u64>,
}

/// The topics of the tree with their plain-text payloads, in a fixed order.
pub(crate) fn topics(f: &Figures) -> Vec<(&'static str, String)> {
    let census = &f.census;
    let totals = &f.totals;
    let members = f
        .members
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let leader = f
        .leader
        .map_or_else(|| "none".to_owned(), |id| id.to_string());
    vec![
        (
            "$SYS/broker/version",
            format!("starling version {}", env!("CARGO_PKG_VERSION")),
        ),
        ("$SYS/broker/uptime", format!("{} seconds", f.uptime)),
        ("$SYS/broker/clients/connected", census.online.to_string()),
        (
            "$SYS/broker/clients/disconnected",
            census.offline.to_string(),
        ),
        (
            "$SYS/broker/clients/total",
            (census.online + census.offline).to_string(),
        ),
        (
            "$SYS/broker/subscriptions/count",
            census.subscriptions.to_string(),
        ),
        (
            "$SYS/broker/retained messages/count",
            census.retained_messages.to_string(),
        ),
        (
            "$SYS/broker/store/messages/count",
            census.queued_messages.to_string(),
        ),
        // Mosquitto counts every packet under messages/; here, as under
        // publish/messages/, only PUBLISH packets are counted.
        (
            "$SYS/broker/messages/received",
            totals.messages_received.to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            totals.messages_sent.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/received",
            totals.messages_received.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/sent",
            totals.messages_sent.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped",
            totals.messages_dropped.to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            totals.bytes_received.to_string(),
        ),
        ("$SYS/broker/bytes/sent", totals.bytes_sent.to_string()),
        ("$SYS/broker/cluster/node", f.node.to_string()),
        ("$SYS/broker/cluster/members", members),
        ("$SYS/broker/cluster/leader", leader),
    ]
}

/// Gathers the figures of this node now; `started` is when it started.
fn figures(shared: &Shared, started: Instant) -> Figures {
    let mut members: Vec<u64> = shared
        .node
        .members()
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    members.sort_unstable();
    Figures {
        uptime: started.elapsed().as_secs(),
        census: shared.machine.census(),
        totals: shared.metrics.totals(),
        node: shared.registry.node(),
        members,
        leader: shared.node.status().leader,
    }
}

/// Delivers each topic of the tree to this node's subscribers of it, as a
/// QoS 0 message. Shared subscriptions get none: their members may be on
/// other nodes, which publish their own trees.
fn publish(shared: &Shared, topics: Vec<(&'static str, String)>) {
    for (topic, payload) in topics {
        let targets = shared
            .machine
            .targets(topic, QoS::AtMostOnce, None, Pick::None);
        if targets.is_empty() {
            continue;
        }
        let message = Message::new(
            Arc::from(topic),
            Bytes::from(payload),
            QoS::AtMostOnce,
            false,
        );
        router::deliver_here(&shared.registry, &shared.metrics, &message, targets);
    }
}

/// Publishes the tree every `mqtt.sys_interval` seconds until shutdown;
/// returns at once if that is 0. `started` is when the node started.
pub(crate) async fn run(
    shared: Arc<Shared>,
    started: Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    let secs = shared.config.sys_interval;
    if secs == 0 {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_secs(secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = every.tick() => publish(&shared, topics(&figures(&shared, started))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{filter_matches, SubscriptionTrie};

    fn figures() -> Figures {
        Figures {
            uptime: 4242,
            census: Census {
                online: 3,
                offline: 2,
                subscriptions: 7,
                shared_subscriptions: 1,
                queued_messages: 11,
                retained_messages: 5,
                retained_bytes: 900,
            },
            totals: Totals {
                messages_received: 100,
                messages_sent: 250,
                messages_dropped: 4,
                bytes_received: 12_345,
                bytes_sent: 67_890,
            },
            node: 2,
            members: vec![1, 2, 3],
            leader: Some(1),
        }
    }

    fn payload<'a>(topics: &'a [(&'static str, String)], topic: &str) -> &'a str {
        topics
            .iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| panic!("{topic} is published"))
    }

    #[test]
    fn payloads_are_plain_text_as_mosquitto_writes_them() {
        let topics = topics(&figures());
        let expected = [
            (
                "$SYS/broker/version",
                concat!("starling version ", env!("CARGO_PKG_VERSION")),
            ),
            ("$SYS/broker/uptime", "4242 seconds"),
            ("$SYS/broker/clients/connected", "3"),
            ("$SYS/broker/clients/disconnected", "2"),
            ("$SYS/broker/clients/total", "5"),
            ("$SYS/broker/subscriptions/count", "7"),
            ("$SYS/broker/retained messages/count", "5"),
            ("$SYS/broker/store/messages/count", "11"),
            ("$SYS/broker/messages/received", "100"),
            ("$SYS/broker/messages/sent", "250"),
            ("$SYS/broker/publish/messages/received", "100"),
            ("$SYS/broker/publish/messages/sent", "250"),
            ("$SYS/broker/publish/messages/dropped", "4"),
            ("$SYS/broker/bytes/received", "12345"),
            ("$SYS/broker/bytes/sent", "67890"),
            ("$SYS/broker/cluster/node", "2"),
            ("$SYS/broker/cluster/members", "1,2,3"),
            ("$SYS/broker/cluster/leader", "1"),
        ];
        for (topic, want) in expected {
            assert_eq!(payload(&topics, topic), want, "{topic}");
        }
        assert_eq!(topics.len(), expected.len(), "nothing else is published");
    }

    #[test]
    fn a_cluster_without_a_known_leader_says_none() {
        let lone = Figures {
            uptime: 0,
            members: vec![1],
            leader: None,
            ..figures()
        };
        let topics = topics(&lone);
        assert_eq!(payload(&topics, "$SYS/broker/cluster/leader"), "none");
        assert_eq!(payload(&topics, "$SYS/broker/cluster/members"), "1");
        assert_eq!(payload(&topics, "$SYS/broker/uptime"), "0 seconds");
    }

    #[test]
    fn mqtt_4_7_2_1_topics_are_valid_names_that_only_dollar_filters_match() {
        let mut trie = SubscriptionTrie::new();
        for filter in ["#", "+/broker/#", "$SYS/#", "$SYS/broker/+"] {
            trie.insert(filter, filter.to_owned(), ());
        }
        for (topic, _) in topics(&figures()) {
            starling_proto::mqtt::topic::validate_topic_name(topic)
                .unwrap_or_else(|e| panic!("{topic}: {e:?}"));
            assert!(!filter_matches("#", topic), "{topic}");
            assert!(filter_matches("$SYS/#", topic), "{topic}");
            let matched: Vec<String> = trie.matches(topic).into_iter().map(|(k, _)| k).collect();
            assert!(
                matched.iter().all(|f| f.starts_with("$SYS/")),
                "{topic}: {matched:?}"
            );
            assert!(matched.contains(&"$SYS/#".to_owned()), "{topic}");
        }
    }
}
