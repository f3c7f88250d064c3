//! Bad input at scale, briefly: each class of attack (`starling_testkit::attack`)
//! runs for a few seconds from a few dozen sockets against one broker, while a
//! well-behaved probe publishes QoS 1 messages to itself. Every probe message
//! must arrive, promptly; the process must live; and the metric that counts
//! the attack's kind must have moved. `bench/attack` runs the same attacks at
//! scale.

use std::collections::BTreeMap;
use std::time::Duration;

use starling_testkit::attack::{self, Attack, Settings};
use starling_testkit::{http_get, Broker};

/// Limits low enough that a few seconds of attack go past them.
const CONFIG: &str = "[mqtt]
connect_timeout = 1
max_packet_size = 65536
max_topic_levels = 32
max_subscriptions = 30
max_retained_messages = 300
";

/// A liveness bound, not a speed measurement: the probe waits this long at
/// most for any one message, at the 99th percentile.
const P99_BOUND: Duration = Duration::from_secs(2);

async fn counters(broker: &Broker) -> BTreeMap<String, f64> {
    let (_, body) = http_get(broker.http_port, "/metrics")
        .await
        .expect("/metrics answers");
    attack::counters(&body)
}

/// The series each attack must move, by name and label.
fn expected(attack: Attack) -> &'static [&'static str] {
    match attack {
        Attack::Malformed => &[
            "starling_protocol_errors_total{reason=\"malformed\"}",
            "starling_protocol_errors_total{reason=\"violation\"}",
            "starling_protocol_errors_total{reason=\"protocol_level\"}",
            "starling_protocol_errors_total{reason=\"too_large\"}",
        ],
        Attack::HalfOpen => &[
            "starling_client_disconnects_total{reason=\"connect_timeout\"}",
            "starling_client_disconnects_total{reason=\"keepalive_timeout\"}",
        ],
        Attack::Slowloris => &["starling_client_disconnects_total{reason=\"slow_connect\"}"],
        Attack::HugeLength => &["starling_protocol_errors_total{reason=\"too_large\"}"],
        Attack::TakeoverStorm => &["starling_client_disconnects_total{reason=\"taken_over\"}"],
        Attack::SubscribeStorm => &[
            "starling_subscriptions_refused_total{reason=\"topic_limits\"}",
            "starling_subscriptions_refused_total{reason=\"max_subscriptions\"}",
        ],
        Attack::RetainedFlood => &["starling_messages_dropped_total{reason=\"retained_full\"}"],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_leaves_a_probe_served_and_is_counted() {
    let mut broker = Broker::start_with(CONFIG).await;
    let mut settings = Settings::new(broker.port, 24, Duration::from_secs(3));
    settings.grace = Duration::from_secs(8);
    settings.close_within = Duration::from_secs(4);
    settings.filter_levels = 12;
    settings.filters_per_connection = 40;
    settings.retained_payload = 256;
    for attack in Attack::ALL {
        let before = counters(&broker).await;
        let outcome = attack::run(attack, &settings).await;
        let after = counters(&broker).await;
        let name = attack.name();
        let probe = &outcome.probe;
        assert!(outcome.ops > 0, "{name}: the attackers did nothing");
        assert!(probe.sent > 50, "{name}: the probe sent {}", probe.sent);
        assert_eq!(
            (probe.lost(), probe.reconnects),
            (0, 0),
            "{name}: every probe message delivered on the same connections; first error: {:?}",
            probe.first_error
        );
        assert!(
            probe.percentile(99.0) < P99_BOUND,
            "{name}: probe p99 {:?}",
            probe.percentile(99.0)
        );
        assert_eq!(
            outcome.left_open, 0,
            "{name}: connections the broker should have closed were left open: {outcome:?}"
        );
        for series in expected(attack) {
            let moved = after.get(*series).copied().unwrap_or(0.0)
                - before.get(*series).copied().unwrap_or(0.0);
            assert!(moved > 0.0, "{name}: {series} did not move");
        }
        broker.assert_alive().await;
    }
}
