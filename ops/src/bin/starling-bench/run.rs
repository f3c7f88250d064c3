//! Running a scenario: who publishes and subscribes where (the plan), the run's
//! timeline (connect, warm up, measure, drain), and adding up what the clients saw.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use starling_proto::mqtt::QoS;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use crate::cli::{Cli, Scenario};
use crate::client::ConnectOpts;
use crate::publisher::{self, PubConfig, PubOutcome, PubSpec};
use crate::report::{self, Connections, Params, Percentiles, Summary};
use crate::seq::SeqCounts;
use crate::shared::{Phase, Shared, Stats};
use crate::subscriber::{self, StreamKey, SubOutcome, SubSpec};
use crate::target::Targets;

/// Connection attempts in flight at once: enough to connect quickly, few enough not
/// to overflow a broker's accept backlog.
pub const CONNECT_GATE: usize = 64;

/// Read room for busy connections.
const BUSY_READ_CHUNK: usize = 64 * 1024;

/// Exit codes besides 0 (success) and 1 (bad usage or an internal failure).
pub const EXIT_CONNECT_FAILED: u8 = 2;
pub const EXIT_LOST: u8 = 3;

/// Who does what in a throughput or latency scenario.
#[derive(Debug)]
pub struct Plan {
    pub pubs: Vec<PubSpec>,
    pub subs: Vec<SubSpec>,
    /// Messages per second per publisher.
    pub rate: f64,
}

/// The CONNECT options of one client.
pub fn connect_opts(cli: &Cli, role: &str, n: usize, read_chunk: usize) -> ConnectOpts {
    // Persistent sessions need ids that a later run can resume; clean ones get the
    // process id, so that two bench processes on one broker do not take each other
    // over.
    let client_id = if cli.clean {
        format!("{}-{}-{role}-{n}", cli.prefix, std::process::id())
    } else {
        format!("{}-{role}-{n}", cli.prefix)
    };
    ConnectOpts {
        client_id,
        clean: cli.clean,
        keepalive: cli.keepalive,
        protocol: cli.protocol.version(),
        transport: cli.transport,
        timeout: Duration::from_secs_f64(cli.connect_timeout),
        read_chunk,
    }
}

fn qos(cli: &Cli) -> QoS {
    QoS::from_u8(cli.qos).unwrap_or(QoS::AtMostOnce)
}

/// Publisher and subscriber layout of a scenario (not `conn`).
pub fn plan(cli: &Cli, targets: &Targets) -> Plan {
    let prefix = &cli.prefix;
    let (npub, nsub) = match cli.scenario {
        Scenario::Fanin => (cli.publishers.unwrap_or(10), 1),
        Scenario::Fanout => (1, cli.subscribers.unwrap_or(10)),
        Scenario::Pairs => (cli.pairs.unwrap_or(10), cli.pairs.unwrap_or(10)),
        Scenario::Latency => (cli.pairs.unwrap_or(1), cli.pairs.unwrap_or(1)),
        Scenario::Pub => (cli.publishers.unwrap_or(1), 0),
        Scenario::Sub => (0, cli.subscribers.unwrap_or(1)),
        Scenario::Conn => (0, 0),
    };
    let pub_topic = |i: usize| -> String {
        match cli.scenario {
            Scenario::Fanin => format!("{prefix}/fanin/{i}"),
            Scenario::Fanout => format!("{prefix}/fanout"),
            Scenario::Latency => format!("{prefix}/latency/{i}"),
            Scenario::Pub => cli
                .topic
                .clone()
                .unwrap_or_else(|| format!("{prefix}/load/%i"))
                .replace("%i", &i.to_string()),
            _ => format!("{prefix}/pairs/{i}"),
        }
    };
    let pub_topics: Vec<Arc<str>> = (0..npub).map(|i| Arc::from(pub_topic(i))).collect();
    let stream = |i: usize| -> StreamKey { (i as u32, pub_topics[i].clone()) };
    let in_process = cli.scenario != Scenario::Sub;
    let subs = (0..nsub)
        .map(|i| {
            let (filter, expects) = match cli.scenario {
                Scenario::Fanin => (format!("{prefix}/fanin/#"), (0..npub).map(stream).collect()),
                Scenario::Fanout => (pub_topics[0].to_string(), vec![stream(0)]),
                Scenario::Sub => (
                    cli.topic
                        .clone()
                        .unwrap_or_else(|| format!("{prefix}/load/#")),
                    Vec::new(),
                ),
                _ => (pub_topics[i].to_string(), vec![stream(i)]),
            };
            let (addr, source) = targets.for_client(i);
            SubSpec {
                filter,
                qos: qos(cli),
                addr,
                source,
                connect: connect_opts(cli, "sub", i, BUSY_READ_CHUNK),
                expects,
                measure_latency: in_process,
            }
        })
        .collect();
    let pubs = (0..npub)
        .map(|i| {
            let (addr, source) = targets.for_client(nsub + i);
            PubSpec {
                index: i as u32,
                topic: pub_topics[i].clone(),
                addr,
                source,
                // Publishers read only acks: a small buffer does.
                connect: connect_opts(cli, "pub", i, 4096),
            }
        })
        .collect();
    let rate = match cli.scenario {
        Scenario::Latency => cli.rate.unwrap_or(1000.0) / npub.max(1) as f64,
        _ => cli.rate.unwrap_or(0.0),
    };
    Plan { pubs, subs, rate }
}

/// The parts of the summary known before the run.
pub fn base_summary(cli: &Cli, targets: &Targets, npub: usize, nsub: usize, rate: f64) -> Summary {
    Summary {
        tool: "starling-bench",
        version: env!("CARGO_PKG_VERSION"),
        scenario: cli.scenario,
        params: Params {
            hosts: targets.hosts.iter().map(ToString::to_string).collect(),
            protocol: cli.protocol,
            transport: cli.transport,
            qos: cli.qos,
            size: cli.size,
            clean: cli.clean,
            publishers: npub,
            subscribers: nsub,
            connections: cli.connections.unwrap_or(0),
            duration_s: cli.duration,
            warmup_s: cli.warmup,
            drain_s: cli.drain,
            hold_s: cli.hold,
            count: cli.count,
            rate,
            inflight: cli.inflight,
            keepalive_s: cli.keepalive,
            source_ips: targets.sources.len(),
            prefix: cli.prefix.clone(),
        },
        connections: Connections::default(),
        sent: 0,
        acked: 0,
        expected: None,
        received: 0,
        lost: 0,
        dup: 0,
        reordered: 0,
        stale: 0,
        errors: 0,
        window_s: 0.0,
        sent_rate: 0.0,
        pub_rate: 0.0,
        recv_rate: 0.0,
        pub_mb_s: 0.0,
        recv_mb_s: 0.0,
        latency_us: None,
        cpu: None,
        tool_rss_peak_kb: None,
        target_rss: None,
        exit_code: 0,
    }
}

/// Waits for `n` connection outcomes and adds them to `conns`.
pub async fn collect_ready(
    rx: &mut mpsc::Receiver<Result<Duration, String>>,
    n: usize,
    conns: &mut Connections,
    latency: &mut Histogram<u64>,
) {
    for _ in 0..n {
        // Every client sends exactly one outcome, within its own connect timeout.
        let Some(outcome) = rx.recv().await else {
            break;
        };
        conns.attempted += 1;
        match outcome {
            Ok(d) => {
                conns.ok += 1;
                // Auto-resizing: `record` grows it where `saturating_record` would clamp.
                let _ = latency.record(d.as_micros() as u64);
            }
            Err(e) => {
                conns.failed += 1;
                conns.first_error.get_or_insert(e);
            }
        }
    }
}

/// Waits for tasks, but no longer than `limit`: a wedged client must not hang the
/// run. Late tasks are aborted and left out.
pub async fn join_all<T>(tasks: Vec<JoinHandle<T>>, limit: Duration) -> Vec<Option<T>> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        let abort = task.abort_handle();
        match timeout(deadline.saturating_duration_since(Instant::now()), task).await {
            Ok(Ok(v)) => out.push(Some(v)),
            Ok(Err(_)) => out.push(None),
            Err(_) => {
                abort.abort();
                out.push(None);
            }
        }
    }
    out
}

/// Runs a throughput or latency scenario.
pub async fn run_traffic(cli: &Cli, targets: &Targets) -> Summary {
    let plan = plan(cli, targets);
    let (npub, nsub) = (plan.pubs.len(), plan.subs.len());
    let mut summary = base_summary(cli, targets, npub, nsub, plan.rate);
    let shared = Shared::new();
    let gate = Arc::new(Semaphore::new(CONNECT_GATE));
    let mut connect_latency = Histogram::<u64>::new(3).expect("valid precision");
    let slack = Duration::from_secs_f64(cli.connect_timeout + 5.0);
    let drain = Duration::from_secs_f64(cli.drain);

    // Subscribers first, so that nothing published is missed.
    let expects: Vec<Vec<StreamKey>> = plan.subs.iter().map(|s| s.expects.clone()).collect();
    let (ready_tx, mut ready_rx) = mpsc::channel(nsub.max(1));
    let sub_tasks: Vec<_> = plan
        .subs
        .into_iter()
        .map(|spec| {
            tokio::spawn(subscriber::run(
                spec,
                shared.clone(),
                gate.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    collect_ready(
        &mut ready_rx,
        nsub,
        &mut summary.connections,
        &mut connect_latency,
    )
    .await;
    if !cli.clean && nsub > 0 {
        wait_for_stale(&shared, drain).await;
    }
    let pub_cfg = Arc::new(PubConfig {
        qos: qos(cli),
        size: cli.size,
        inflight: cli.inflight,
        count: cli.count,
        rate: plan.rate,
        drain,
    });
    let (ready_tx, mut ready_rx) = mpsc::channel(npub.max(1));
    let pub_tasks: Vec<_> = plan
        .pubs
        .into_iter()
        .map(|spec| {
            tokio::spawn(publisher::run(
                spec,
                pub_cfg.clone(),
                shared.clone(),
                gate.clone(),
                ready_tx.clone(),
            ))
        })
        .collect();
    collect_ready(
        &mut ready_rx,
        npub,
        &mut summary.connections,
        &mut connect_latency,
    )
    .await;
    summary.connections.connect_us = Percentiles::of(&connect_latency);

    let cpu_start = report::cpu_times();
    let run_start = Instant::now();
    let (stop_progress, progress_rx) = watch::channel(false);
    let progress = tokio::spawn(report::progress(shared.clone(), progress_rx));
    let mut window = Duration::ZERO;
    let mut delta = Default::default();
    if summary.connections.failed == 0 {
        let measure_from = run_start + Duration::from_secs_f64(cli.warmup);
        let stop_at = measure_from + Duration::from_secs_f64(cli.duration);
        shared
            .publishing
            .store(npub, std::sync::atomic::Ordering::Release);
        // Without a warm-up the window opens now, before the first publish.
        let mut before = shared.stats.snapshot();
        shared.phase.send_replace(Phase::Run {
            measure_from,
            stop_at,
        });
        if measure_from > run_start {
            sleep_until(measure_from).await;
            before = shared.stats.snapshot();
        }
        if npub > 0 {
            tokio::select! {
                () = shared.publishers_done.notified() => {}
                () = sleep_until(stop_at) => {}
            }
        } else {
            sleep_until(stop_at).await;
        }
        window = Instant::now().saturating_duration_since(measure_from);
        delta = shared.stats.snapshot().since(&before);
        // CPU over the loaded part of the run only, to tell whether the tool kept up.
        summary.cpu = report::cpu_since(cpu_start, run_start.elapsed());
    }
    if summary.connections.failed > 0 {
        // Nobody will publish: release the clients that did connect.
        shared.phase.send_replace(Phase::Drain {
            until: Instant::now(),
            sent: None,
        });
    }
    // A publisher that had to be abandoned sent an unknown number: count it as 0.
    let pubs: Vec<PubOutcome> = join_all(pub_tasks, drain + slack)
        .await
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let sent: Vec<u64> = pubs.iter().map(|p| p.sent).collect();
    let sent = (summary.connections.failed == 0 && npub > 0).then(|| Arc::new(sent));
    shared.phase.send_replace(Phase::Drain {
        until: Instant::now() + drain,
        sent: sent.clone(),
    });
    let subs = join_all(sub_tasks, drain + slack).await;
    let _ = stop_progress.send(true);
    let _ = progress.await;

    summary.sent = pubs.iter().map(|p| p.sent).sum();
    summary.acked = pubs.iter().map(|p| p.acked).sum();
    add_up(&mut summary, &expects, &subs, sent.as_deref());
    summary.stale = Stats::get(&shared.stats.stale);
    summary.errors = Stats::get(&shared.stats.errors);
    summary.set_rates(
        window,
        delta.sent,
        delta.acked,
        delta.received,
        delta.received_bytes,
    );
    if summary.cpu.is_none() {
        summary.cpu = report::cpu_since(cpu_start, run_start.elapsed());
    }
    summary
}

/// Persistent sessions may hold messages from an earlier run; they arrive right
/// after subscribing. Wait until they stop coming (at most `limit`) so that they are
/// not mistaken for this run's.
async fn wait_for_stale(shared: &Shared, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = Stats::get(&shared.stats.stale);
    while Instant::now() < deadline {
        sleep(Duration::from_millis(300)).await;
        let now = Stats::get(&shared.stats.stale);
        if now == last {
            break;
        }
        last = now;
    }
    if last > 0 {
        eprintln!("{last} messages left over from an earlier run were received and ignored");
    }
}

/// Sums the subscribers' streams and latency into the summary. `expects[i]` are the
/// streams subscriber `i` should have had; a subscriber that had to be abandoned
/// (`None`) lost all of them.
fn add_up(
    summary: &mut Summary,
    expects: &[Vec<StreamKey>],
    subs: &[Option<SubOutcome>],
    sent: Option<&Vec<u64>>,
) {
    let sent_of = |publisher: u32| sent.and_then(|s| s.get(publisher as usize).copied());
    let mut counts = SeqCounts::default();
    let mut expected = 0;
    let mut latency: Option<Histogram<u64>> = None;
    for (expects, sub) in expects.iter().zip(subs) {
        let empty = HashMap::new();
        let streams = sub.as_ref().map_or(&empty, |s| &s.streams);
        for (key, tracker) in streams {
            counts += tracker.counts(sent_of(key.0));
        }
        // Streams that never delivered anything lost all of it.
        for key in expects {
            let want = sent_of(key.0).unwrap_or(0);
            expected += want;
            if !streams.contains_key(key) {
                counts.lost += want;
            }
        }
        if let Some(h) = sub.as_ref().and_then(|s| s.latency.as_ref()) {
            match &mut latency {
                Some(total) => {
                    // Both auto-resize, so adding cannot run out of range.
                    let _ = total.add(h);
                }
                None => latency = Some(h.clone()),
            }
        }
    }
    if sent.is_some() {
        summary.expected = Some(expected);
    }
    summary.received = counts.received;
    summary.lost = counts.lost;
    summary.dup = counts.dup;
    summary.reordered = counts.reordered;
    summary.latency_us = latency.as_ref().and_then(Percentiles::of);
}
