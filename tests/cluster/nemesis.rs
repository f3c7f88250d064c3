//! A seeded nemesis against a 3-node cluster while recording clients publish,
//! subscribe, take sessions over, read retained values and leave wills; the
//! history they recorded is then checked (`starling_testkit::check`): nothing
//! acknowledged lost, no QoS 2 duplicate, no QoS 1 duplicate beyond
//! redelivery, no reordering, no stale retained read, every will once or not
//! at all as due, no session lost.
//!
//! The default is a short schedule for CI. `bench/nemesis` runs longer ones
//! through `NEMESIS_SECS`, `NEMESIS_SEED` and `NEMESIS_HISTORY` (where the
//! history is kept as JSON lines); not `STARLING_*`, which the nodes would
//! take for config keys.

use std::time::Duration;

use tokio::time::Instant;

use starling_testkit::check::check;
use starling_testkit::cluster::{Cluster, FAST_DOWN_AFTER};
use starling_testkit::history::{write_jsonl, Recorder};
use starling_testkit::nemesis::{self, Rng, Schedule};
use starling_testkit::workload::Workload;

/// The CI schedule: faults for this long, with this seed.
const DEFAULT_SECS: u64 = 60;
const DEFAULT_SEED: u64 = 14;
/// Longest wait, once the faults are over, for what was acknowledged.
const QUIET: Duration = Duration::from_secs(60);

/// Fast failure detection, and persistent-session queues deep enough that a
/// subscriber away for a fault loses nothing to the queue limit.
const CONFIG: &str =
    "[cluster]\nnode_down_after_ms = 1500\n\n[mqtt]\nmax_queued_messages = 100000\n";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_under_a_nemesis_has_no_anomaly() {
    let secs = env_u64("NEMESIS_SECS", DEFAULT_SECS);
    let seed = env_u64("NEMESIS_SEED", DEFAULT_SEED);
    eprintln!("nemesis: seed {seed}, {secs} s of faults");
    let mut cluster = Cluster::start_with_config_and_down_after(3, CONFIG, FAST_DOWN_AFTER).await;
    let nodes: Vec<(u64, u16)> = cluster
        .ids()
        .into_iter()
        .map(|id| (id, cluster.mqtt(id)))
        .collect();
    let recorder = Recorder::new();
    let workload = Workload::start(nodes, &recorder, seed).await;
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let faults = nemesis::run(
        &mut cluster,
        &recorder,
        &mut rng,
        Schedule::default(),
        started + Duration::from_secs(secs),
    )
    .await;
    nemesis::wait_all_ready(&cluster).await;
    workload.finish(QUIET).await;
    nemesis::wait_all_ready(&cluster).await;

    let events = recorder.events();
    let report = check(&events);
    let path = std::env::var_os("NEMESIS_HISTORY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("starling-history-{seed}.jsonl")));
    write_jsonl(&path, &events).expect("write the history");
    eprintln!(
        "nemesis: seed {seed}, {:?} in total, faults {faults:?}, history {} ({} events)\n{report}",
        started.elapsed(),
        path.display(),
        events.len()
    );
    assert!(
        report.anomalies.is_empty(),
        "seed {seed}: {} anomalies\n{report}",
        report.anomalies.len()
    );
    assert!(
        report.acknowledged > 100 && report.retained_reads > 10 && report.will_clients > 10,
        "too little happened to judge: {report}"
    );
}
