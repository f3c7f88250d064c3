//! The broker's Prometheus metrics. Names are prefixed `starling_` and carry their
//! unit; label values come from small fixed sets, never from client input.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::state::{Arrival, Via};

pub struct Metrics {
    pub connections: IntGauge,
    pub connections_total: IntCounter,
    /// Connections closed for malformed packets or protocol violations, by reason.
    pub protocol_errors: IntCounterVec,
    pub messages_received: IntCounterVec,
    pub messages_sent: IntCounterVec,
    /// The children of the two above by QoS, looked up once: counting a message
    /// is on the hot path.
    received_by_qos: [IntCounter; 3],
    sent_by_qos: [IntCounter; 3],
    /// From a message's arrival on this node to its PUBLISH handed to the
    /// subscriber's connection for writing, by how it arrived (`via`):
    /// from a local client, from another node, or from the Raft log.
    pub delivery_latency: HistogramVec,
    latency_by_via: [Histogram; 3],
    /// Bytes of MQTT read from clients and written to them (inside TLS and
    /// WebSocket framing), counted once per read and per write.
    pub bytes_received: IntCounter,
    pub bytes_sent: IntCounter,
    /// Messages not delivered, by why (`queue_full`, `mailbox_full`,
    /// `forward_failed`, `forward_unreadable`).
    pub messages_dropped: IntCounterVec,
    /// Connections the server closed, by why (other than protocol errors).
    pub disconnects: IntCounterVec,
    /// Filters of SUBSCRIBE packets refused, by why.
    pub subscriptions_refused: IntCounterVec,
    /// CONNECTs refused for their credentials, by why (`unknown_user`,
    /// `wrong_password`, `anonymous`, `enhanced_auth`).
    pub auth_failures: IntCounterVec,
    /// New connections closed at once, by why.
    pub connections_refused: IntCounterVec,
    /// Messages of shared subscriptions that a member left without
    /// acknowledging, sent to another member.
    pub shared_redelivered: IntCounter,
    /// Forwarding streams to other nodes, by peer and event (`sent`, `acked`,
    /// `dropped` when the bounded buffer was full, `resent`, `errors`, `timeouts`).
    pub forward_frames: IntCounterVec,
    /// Frames waiting in the forwarding buffer of each peer, queued or unacked.
    pub forward_buffered: IntGaugeVec,
    /// Per peer: frames sent (first time), acked, streams broken (`event`),
    /// and bytes written.
    pub forward_peer_frames: IntCounterVec,
    pub forward_peer_bytes: IntCounterVec,
    /// Raft snapshots stored since start, and the size of the stored one.
    pub snapshots: IntCounter,
    pub snapshot_bytes: IntGauge,
    /// The peers `forward_buffered` has series for.
    pub forward_peers: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Commands proposed through Raft, the Raft entries that carried them, and
    /// the fsyncs of the Raft log: commands per fsync is the batching at work.
    pub raft_commands: IntCounter,
    pub raft_entries: IntCounter,
    pub raft_log_flushes: IntCounter,
    /// Where Raft stands on this node: term, leader (0: none known), whether
    /// it leads, log indexes and the log's size. Refreshed every second.
    pub raft: IntGaugeVec,
    /// Sessions by state (`online`, `offline`), subscriptions by kind
    /// (`direct`, `shared`), messages queued for persistent sessions, and
    /// the retained messages and their bytes: cluster-wide, from this node's
    /// copy of the replicated state. Refreshed every second.
    pub sessions: IntGaugeVec,
    pub subscriptions: IntGaugeVec,
    pub queued_messages: IntGauge,
    pub retained_messages: IntGauge,
    pub retained_bytes: IntGauge,
    /// On the leader, how many log entries each peer is behind.
    pub replication_lag: IntGaugeVec,
    /// When a drop was last logged (ms since the epoch): drops are logged
    /// at most every `DROP_LOG_EVERY_MS`, counted always.
    drop_logged_at: std::sync::atomic::AtomicU64,
    /// When each reason of `disconnects` and of `protocol_errors` was last
    /// logged, as `drop_logged_at` (in the order of `DISCONNECT_REASONS` and
    /// `PROTOCOL_ERROR_REASONS`): the closes a flood of bad clients causes are
    /// logged at most every `DROP_LOG_EVERY_MS` per reason.
    disconnect_logged_at: [std::sync::atomic::AtomicU64; DISCONNECT_REASONS.len()],
    protocol_error_logged_at: [std::sync::atomic::AtomicU64; PROTOCOL_ERROR_REASONS.len()],
}

/// Why messages are dropped: the label values of `starling_messages_dropped_total`.
pub const DROP_REASONS: [&str; 14] = [
    "acl_denied",
    "expired",
    "forward_failed",
    "forward_unreadable",
    "mailbox_full",
    "max_subscriptions",
    "queue_full",
    "refused",
    "retained_backlog",
    "retained_full",
    "shared_group_empty",
    "slow_subscriber",
    "too_large_for_client",
    "topic_limits",
];

/// Why the server closes connections: `starling_client_disconnects_total`.
/// `connect_timeout`: nothing received within `connect_timeout`;
/// `slow_connect`: a CONNECT begun but not finished in that time;
/// `keepalive_timeout`: nothing received within 1.5 keepalives;
/// `taken_over`: a new connection with the same client id took the session.
pub const DISCONNECT_REASONS: [&str; 10] = [
    "admin",
    "auth_failed",
    "connect_timeout",
    "forward_failed",
    "keepalive_timeout",
    "no_quorum",
    "publish_rate",
    "slow_connect",
    "slow_subscriber",
    "taken_over",
];

/// Why filters of a SUBSCRIBE are refused:
/// `starling_subscriptions_refused_total`.
pub const SUBSCRIBE_REFUSAL_REASONS: [&str; 5] = [
    "invalid_filter",
    "max_subscriptions",
    "not_authorized",
    "shared_unsupported",
    "topic_limits",
];

/// Why CONNECTs are refused: `starling_auth_failures_total`.
pub const AUTH_FAILURE_REASONS: [&str; 5] = [
    "anonymous",
    "enhanced_auth",
    "unknown_user",
    "will_denied",
    "wrong_password",
];

/// Why connections end for bad input: `starling_protocol_errors_total`.
pub const PROTOCOL_ERROR_REASONS: [&str; 5] = [
    "client_id_too_long",
    "malformed",
    "protocol_level",
    "too_large",
    "violation",
];

/// How often drops are logged, at most, in milliseconds.
const DROP_LOG_EVERY_MS: u64 = 10_000;

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let messages_received = IntCounterVec::new(
            Opts::new(
                "starling_messages_received_total",
                "PUBLISH packets received",
            ),
            &["qos"],
        )?;
        let messages_sent = IntCounterVec::new(
            Opts::new("starling_messages_sent_total", "PUBLISH packets sent"),
            &["qos"],
        )?;
        let by_qos = |vec: &IntCounterVec| ["0", "1", "2"].map(|qos| vec.with_label_values(&[qos]));
        let delivery_latency = HistogramVec::new(
            HistogramOpts::new(
                "starling_delivery_latency_seconds",
                "From a message's arrival on this node (from a client, another node, or the \
                 Raft log) to its PUBLISH handed to a subscriber's connection",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["via"],
        )?;
        let metrics = Metrics {
            latency_by_via: Via::ALL.map(|via| delivery_latency.with_label_values(&[via.label()])),
            delivery_latency,
            received_by_qos: by_qos(&messages_received),
            sent_by_qos: by_qos(&messages_sent),
            messages_received,
            messages_sent,
            bytes_received: IntCounter::new(
                "starling_bytes_received_total",
                "Bytes of MQTT packets read from clients",
            )?,
            bytes_sent: IntCounter::new(
                "starling_bytes_sent_total",
                "Bytes of MQTT packets written to clients",
            )?,
            connections: IntGauge::new("starling_connections", "Open MQTT connections")?,
            connections_total: IntCounter::new(
                "starling_connections_total",
                "MQTT connections accepted",
            )?,
            protocol_errors: IntCounterVec::new(
                Opts::new(
                    "starling_protocol_errors_total",
                    "Connections closed for malformed packets or protocol violations",
                ),
                &["reason"],
            )?,
            messages_dropped: IntCounterVec::new(
                Opts::new("starling_messages_dropped_total", "Messages not delivered"),
                &["reason"],
            )?,
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "starling_connections_refused_total",
                    "New connections closed at once: over max_connections or the per-address rate",
                ),
                &["reason"],
            )?,
            shared_redelivered: IntCounter::new(
                "starling_shared_redelivered_total",
                "Shared-subscription messages a member left unacknowledged, sent to another member",
            )?,
            disconnects: IntCounterVec::new(
                Opts::new(
                    "starling_client_disconnects_total",
                    "Connections the server closed, other than for protocol errors",
                ),
                &["reason"],
            )?,
            subscriptions_refused: IntCounterVec::new(
                Opts::new(
                    "starling_subscriptions_refused_total",
                    "Filters of SUBSCRIBE packets refused, by why",
                ),
                &["reason"],
            )?,
            auth_failures: IntCounterVec::new(
                Opts::new(
                    "starling_auth_failures_total",
                    "CONNECTs refused for their credentials, by why",
                ),
                &["reason"],
            )?,
            forward_frames: IntCounterVec::new(
                Opts::new(
                    "starling_forward_frames_total",
                    "Frames on the forwarding streams to other nodes",
                ),
                &["peer", "event"],
            )?,
            forward_buffered: IntGaugeVec::new(
                Opts::new(
                    "starling_forward_buffered_frames",
                    "Frames queued or unacknowledged towards each peer",
                ),
                &["peer", "state"],
            )?,
            raft_commands: IntCounter::new(
                "starling_raft_commands_total",
                "Commands proposed through Raft",
            )?,
            raft_entries: IntCounter::new(
                "starling_raft_entries_total",
                "Raft log entries carrying proposed commands",
            )?,
            raft: IntGaugeVec::new(
                Opts::new(
                    "starling_raft_state",
                    "Where Raft stands on this node, by what: term, leader_id (0: none), \
                     is_leader, last_log_index, applied_index, snapshot_index, purged_index, \
                     log_bytes",
                ),
                &["what"],
            )?,
            raft_log_flushes: IntCounter::new(
                "starling_raft_log_flushes_total",
                "fsyncs of the Raft log",
            )?,
            sessions: IntGaugeVec::new(
                Opts::new(
                    "starling_sessions",
                    "Sessions in the cluster: online (connected) or offline (persistent)",
                ),
                &["state"],
            )?,
            subscriptions: IntGaugeVec::new(
                Opts::new("starling_subscriptions", "Subscriptions in the cluster"),
                &["kind"],
            )?,
            queued_messages: IntGauge::new(
                "starling_queued_messages",
                "QoS 1/2 messages in the queues of persistent sessions",
            )?,
            retained_messages: IntGauge::new(
                "starling_retained_messages",
                "Retained messages in the cluster",
            )?,
            retained_bytes: IntGauge::new(
                "starling_retained_bytes",
                "Bytes of retained messages (topics and payloads) in the cluster",
            )?,
            replication_lag: IntGaugeVec::new(
                Opts::new(
                    "starling_raft_replication_lag_entries",
                    "On the leader: log entries each peer is behind",
                ),
                &["peer"],
            )?,
            drop_logged_at: std::sync::atomic::AtomicU64::new(0),
            disconnect_logged_at: Default::default(),
            protocol_error_logged_at: Default::default(),
            forward_peers: std::sync::Mutex::default(),
            snapshots: IntCounter::new(
                "starling_raft_snapshots_total",
                "Raft snapshots stored since the node started, built here or received",
            )?,
            snapshot_bytes: IntGauge::new(
                "starling_raft_snapshot_bytes",
                "Size of the stored Raft snapshot",
            )?,
            forward_peer_frames: IntCounterVec::new(
                Opts::new(
                    "starling_forward_peer_frames_total",
                    "Frames to each peer: sent (first time), acked, and streams that broke (errors)",
                ),
                &["peer", "event"],
            )?,
            forward_peer_bytes: IntCounterVec::new(
                Opts::new(
                    "starling_forward_peer_bytes_total",
                    "Bytes of the frames written to each peer, resends included",
                ),
                &["peer"],
            )?,
        };
        // Every series present from the first scrape, at zero: a rate over a
        // series that appears only with its first event misses that event.
        for reason in DROP_REASONS {
            metrics.messages_dropped.with_label_values(&[reason]);
        }
        for reason in DISCONNECT_REASONS {
            metrics.disconnects.with_label_values(&[reason]);
        }
        for reason in SUBSCRIBE_REFUSAL_REASONS {
            metrics.subscriptions_refused.with_label_values(&[reason]);
        }
        for reason in AUTH_FAILURE_REASONS {
            metrics.auth_failures.with_label_values(&[reason]);
        }
        for reason in PROTOCOL_ERROR_REASONS {
            metrics.protocol_errors.with_label_values(&[reason]);
        }
        for reason in ["max_connections", "rate_per_ip"] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        for state in ["online", "offline"] {
            metrics.sessions.with_label_values(&[state]);
        }
        for kind in ["direct", "shared"] {
            metrics.subscriptions.with_label_values(&[kind]);
        }
        registry.register(Box::new(metrics.forward_peer_frames.clone()))?;
        registry.register(Box::new(metrics.forward_peer_bytes.clone()))?;
        registry.register(Box::new(metrics.snapshots.clone()))?;
        registry.register(Box::new(metrics.snapshot_bytes.clone()))?;
        registry.register(Box::new(metrics.sessions.clone()))?;
        registry.register(Box::new(metrics.subscriptions.clone()))?;
        registry.register(Box::new(metrics.queued_messages.clone()))?;
        registry.register(Box::new(metrics.retained_messages.clone()))?;
        registry.register(Box::new(metrics.retained_bytes.clone()))?;
        registry.register(Box::new(metrics.replication_lag.clone()))?;
        registry.register(Box::new(metrics.connections.clone()))?;
        registry.register(Box::new(metrics.forward_frames.clone()))?;
        registry.register(Box::new(metrics.forward_buffered.clone()))?;
        registry.register(Box::new(metrics.raft_commands.clone()))?;
        registry.register(Box::new(metrics.raft_entries.clone()))?;
        registry.register(Box::new(metrics.raft_log_flushes.clone()))?;
        registry.register(Box::new(metrics.raft.clone()))?;
        registry.register(Box::new(metrics.connections_total.clone()))?;
        registry.register(Box::new(metrics.protocol_errors.clone()))?;
        registry.register(Box::new(metrics.messages_received.clone()))?;
        registry.register(Box::new(metrics.messages_sent.clone()))?;
        registry.register(Box::new(metrics.delivery_latency.clone()))?;
        registry.register(Box::new(metrics.bytes_received.clone()))?;
        registry.register(Box::new(metrics.bytes_sent.clone()))?;
        registry.register(Box::new(metrics.messages_dropped.clone()))?;
        registry.register(Box::new(metrics.disconnects.clone()))?;
        registry.register(Box::new(metrics.subscriptions_refused.clone()))?;
        registry.register(Box::new(metrics.auth_failures.clone()))?;
        registry.register(Box::new(metrics.shared_redelivered.clone()))?;
        registry.register(Box::new(metrics.connections_refused.clone()))?;
        Ok(metrics)
    }

    /// Metrics registered nowhere, for unit tests.
    pub fn unregistered() -> Metrics {
        Metrics::new(&Registry::new()).unwrap_or_else(|e| panic!("metric definitions: {e}"))
    }

    /// Counts a PUBLISH received at `qos`.
    pub fn received(&self, qos: starling_proto::mqtt::QoS) {
        self.received_by_qos[qos as usize].inc();
    }

    /// Counts a PUBLISH sent at `qos`.
    pub fn sent(&self, qos: starling_proto::mqtt::QoS) {
        self.sent_by_qos[qos as usize].inc();
    }

    /// A PUBLISH of a message that arrived by `arrival` handed to its
    /// subscriber's connection now.
    pub fn delivered(&self, arrival: &Arrival) {
        if let Some((elapsed, via)) = arrival.elapsed() {
            self.latency_by_via[via as usize].observe(elapsed.as_secs_f64());
        }
    }

    /// This node's running totals since it started, for `$SYS`.
    pub fn totals(&self) -> Totals {
        let sum = |counters: &[IntCounter; 3]| counters.iter().map(IntCounter::get).sum();
        Totals {
            messages_received: sum(&self.received_by_qos),
            messages_sent: sum(&self.sent_by_qos),
            messages_dropped: sum_counters(&self.messages_dropped),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
        }
    }

    pub fn dropped(&self, reason: &'static str) {
        self.dropped_many(reason, 1);
    }

    /// Counts `n` messages dropped for `reason`, and logs it unless a drop
    /// was logged in the last ten seconds.
    pub fn dropped_many(&self, reason: &'static str, n: u64) {
        let counter = self.messages_dropped.with_label_values(&[reason]);
        counter.inc_by(n);
        if due(&self.drop_logged_at) {
            tracing::warn!(
                reason,
                total = counter.get(),
                "messages dropped (logged at most every 10 s; \
                 starling_messages_dropped_total counts every one)"
            );
        }
    }

    /// Counts a connection the server closed for `reason`.
    pub fn disconnected(&self, reason: &'static str) {
        self.disconnects.with_label_values(&[reason]).inc();
    }

    /// Counts a connection the server closed for `reason`, one that a flood
    /// of bad or hostile clients causes by the thousand (`connect_timeout`,
    /// `slow_connect`, `keepalive_timeout`, `taken_over`). Returns the total
    /// so far if this one is to be logged: at most one every ten seconds for
    /// each reason.
    pub fn disconnected_quietly(&self, reason: &'static str) -> Option<u64> {
        let counter = self.disconnects.with_label_values(&[reason]);
        counter.inc();
        let at = DISCONNECT_REASONS.iter().position(|r| *r == reason)?;
        due(&self.disconnect_logged_at[at]).then(|| counter.get())
    }

    /// Counts a filter of a SUBSCRIBE refused for `reason`.
    pub fn subscription_refused(&self, reason: &'static str) {
        self.subscriptions_refused
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts a CONNECT refused for its credentials, for `reason`.
    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures.with_label_values(&[reason]).inc();
    }

    /// A message of a shared subscription that one member did not take went
    /// to another.
    pub fn redelivered(&self) {
        self.shared_redelivered.inc();
    }

    /// A new connection closed at once, by why (`max_connections`,
    /// `rate_per_ip`).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a connection closed for bad input, for `reason`. Returns the
    /// total so far if this one is to be logged: at most one every ten
    /// seconds for each reason, since a flood of malformed packets would
    /// otherwise write a line for each.
    pub fn protocol_error(&self, reason: &'static str) -> Option<u64> {
        let counter = self.protocol_errors.with_label_values(&[reason]);
        counter.inc();
        let at = PROTOCOL_ERROR_REASONS.iter().position(|r| *r == reason)?;
        due(&self.protocol_error_logged_at[at]).then(|| counter.get())
    }
}

/// Whether a line is due, the last one logged at `logged_at` (ms since the
/// epoch); if so, `logged_at` becomes now. One caller wins a race.
fn due(logged_at: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = crate::clock::now_ms();
    let last = logged_at.load(Relaxed);
    now >= last.saturating_add(DROP_LOG_EVERY_MS)
        && logged_at
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
}

/// What this node counted since it started: PUBLISH packets received, sent
/// and not delivered (for any reason), and bytes read and written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

/// The sum of every child of `vec`, whatever its labels.
fn sum_counters(vec: &IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    let total: f64 = vec
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value())
        .sum();
    // Counters of whole numbers, well within f64's exact integers.
    total as u64
}

/// Raises `counter` to `total`, a running total kept elsewhere.
pub fn catch_up(counter: &IntCounter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_proto::mqtt::QoS;

    #[test]
    fn totals_add_up_every_qos_and_every_drop_reason() {
        let m = Metrics::unregistered();
        m.received(QoS::AtMostOnce);
        m.received(QoS::ExactlyOnce);
        m.sent(QoS::AtLeastOnce);
        m.dropped("mailbox_full");
        m.dropped_many("queue_full", 3);
        m.bytes_received.inc_by(100);
        m.bytes_sent.inc_by(7);
        assert_eq!(
            m.totals(),
            Totals {
                messages_received: 2,
                messages_sent: 1,
                messages_dropped: 4,
                bytes_received: 100,
                bytes_sent: 7,
            }
        );
    }

    #[test]
    fn quiet_disconnects_are_all_counted_and_logged_once_per_reason_at_first() {
        let m = Metrics::unregistered();
        assert_eq!(m.disconnected_quietly("taken_over"), Some(1));
        assert_eq!(m.disconnected_quietly("taken_over"), None);
        assert_eq!(m.disconnected_quietly("connect_timeout"), Some(1));
        assert_eq!(m.disconnected_quietly("taken_over"), None);
        let count = |reason| m.disconnects.with_label_values(&[reason]).get();
        assert_eq!((count("taken_over"), count("connect_timeout")), (3, 1));
        assert_eq!(m.protocol_error("malformed"), Some(1));
        assert_eq!(m.protocol_error("malformed"), None);
        assert_eq!(m.protocol_error("violation"), Some(1));
    }
}
