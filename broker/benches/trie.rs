//! Benchmarks of the subscription trie, with the key and value types the broker
//! stores in it ([`Routes`]).
//!
//! A fleet of vehicles publishes to `fleet/v{vehicle}/sensor/{n}`. The subscriptions
//! of the 10k and 100k tries are mostly exact filters on one sensor, then
//! fleet-wide `fleet/+/sensor/{n}` dashboards for the lower half of the sensor
//! numbers, `fleet/v{vehicle}/#` diagnostics for the first tenth of the vehicles,
//! and a few broad filters elsewhere in the tree. Matching is measured for a topic
//! that only exact filters match, one that `+` and `#` filters match, and one that
//! nothing matches but that walks the same levels; churn is one subscribe and one
//! unsubscribe on the 100k trie.
//!
//! Everything is generated deterministically, so runs compare.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use starling_broker::state::{Route, Routes};
use starling_proto::mqtt::QoS;

const SIZES: [(usize, &str); 2] = [(10_000, "10k"), (100_000, "100k")];
/// Sensor numbers per vehicle.
const SENSORS: u64 = 1024;
/// Fleet-wide `+` filters cover sensor numbers below this.
const PLUS_SENSORS: u64 = SENSORS / 2;

/// A linear congruential generator (Knuth's MMIX constants): reproducible and
/// plenty for spreading filters.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

/// A trie of `size` subscriptions and the topics to match against it.
struct Fixture {
    trie: Routes,
    vehicles: u64,
    /// Matched by exact filters only.
    exact: String,
    /// Matched by `+` and `#` filters only.
    wildcard: String,
    /// Matched by nothing, though its first levels exist in the trie.
    none: String,
}

fn route(i: usize) -> Route {
    Route {
        qos: if i % 3 == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        },
        persistent: i % 4 == 0,
        id: None,
        no_local: false,
        retain_as_published: false,
    }
}

fn fixture(size: usize) -> Fixture {
    let vehicles = (size / 100) as u64;
    let watched = vehicles / 10;
    let mut rng = Lcg(size as u64);
    let mut trie = Routes::new();
    let mut exact_filters = HashSet::new();
    for i in 0..size {
        let filter = match i % 100 {
            0..85 => {
                let filter = format!(
                    "fleet/v{}/sensor/{}",
                    rng.below(vehicles),
                    rng.below(SENSORS)
                );
                exact_filters.insert(filter.clone());
                filter
            }
            85..95 => format!("fleet/+/sensor/{}", rng.below(PLUS_SENSORS)),
            95..99 => format!("fleet/v{}/#", rng.below(watched)),
            _ => match i % 4 {
                0 => "fleet/+/status".to_owned(),
                1 => "fleet/+/sensor/+/alarm".to_owned(),
                2 => format!("depot/{}/#", rng.below(16)),
                _ => "+/+/door/+".to_owned(),
            },
        };
        let client: Arc<str> = format!("client-{i}").into();
        trie.insert(&filter, client, route(i));
    }
    // Probe for topics of each kind among those the filters above were drawn from.
    let find = |vehicle: u64, sensors: std::ops::Range<u64>, exact: bool| {
        sensors
            .map(|n| format!("fleet/v{vehicle}/sensor/{n}"))
            .find(|topic| exact_filters.contains(topic) == exact)
            .expect("the generated trie has such a topic")
    };
    let last = vehicles - 1;
    Fixture {
        exact: find(last, PLUS_SENSORS..SENSORS, true),
        wildcard: find(0, 0..PLUS_SENSORS, false),
        none: find(last, PLUS_SENSORS..SENSORS, false),
        trie,
        vehicles,
    }
}

fn count_matches(trie: &Routes, topic: &str) -> usize {
    let mut count = 0;
    trie.for_each_match(topic, |_, _| count += 1);
    count
}

fn matching(c: &mut Criterion) {
    for (size, size_name) in SIZES {
        let fixture = fixture(size);
        assert!(count_matches(&fixture.trie, &fixture.exact) > 0);
        assert!(count_matches(&fixture.trie, &fixture.wildcard) > 0);
        assert_eq!(count_matches(&fixture.trie, &fixture.none), 0);
        let mut group = c.benchmark_group(format!("match/{size_name}"));
        group.throughput(Throughput::Elements(1));
        for (kind, topic) in [
            ("exact", &fixture.exact),
            ("wildcard", &fixture.wildcard),
            ("none", &fixture.none),
        ] {
            group.bench_function(kind, |b| {
                b.iter(|| count_matches(&fixture.trie, black_box(topic)))
            });
        }
        group.finish();
    }
}

fn churn(c: &mut Criterion) {
    let (size, size_name) = SIZES[1];
    let Fixture {
        mut trie, vehicles, ..
    } = fixture(size);
    // Subscribers come and go on filters that the trie already holds paths for,
    // and on new ones; pre-built so that only the trie's work is timed.
    let mut rng = Lcg(7);
    let filters: Vec<String> = (0..1024)
        .map(|i| {
            if i % 10 == 0 {
                format!("fleet/v{}/#", rng.below(vehicles))
            } else {
                format!(
                    "fleet/v{}/sensor/{}",
                    rng.below(vehicles),
                    rng.below(SENSORS)
                )
            }
        })
        .collect();
    let client: Arc<str> = "churning-client".into();
    let mut group = c.benchmark_group(format!("churn/{size_name}"));
    // One element is one subscribe followed by one unsubscribe.
    group.throughput(Throughput::Elements(1));
    group.bench_function("insert_remove", |b| {
        let mut next = filters.iter().cycle();
        b.iter(|| {
            let filter = next.next().expect("cycle never ends");
            trie.insert(filter, client.clone(), route(0));
            black_box(trie.remove(filter, &client));
        })
    });
    group.finish();
    assert_eq!(trie.len(), size);
}

criterion_group! {
    name = benches;
    // Shorter than criterion's defaults (3 s warm-up, 5 s measurement): each
    // function takes well under a microsecond, so 100 samples still fit.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = matching, churn
}
criterion_main!(benches);
