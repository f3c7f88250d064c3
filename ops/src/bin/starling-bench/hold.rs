//! The `conn` scenario: many idle connections, each connecting, answering keep-alive
//! and holding until released.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};

use crate::cli::Cli;
use crate::client::{Client, ClientError, ConnectOpts};
use crate::rate::RateLimiter;
use crate::report::{self, Percentiles, Summary, TargetRss};
use crate::run;
use crate::shared::{Phase, Shared, Stats};
use crate::target::Targets;

/// Connects, reports the connect latency (or failure) on `ready`, then holds the
/// connection until the phase becomes `Drain`.
pub async fn run(
    addr: SocketAddr,
    source: Option<IpAddr>,
    opts: ConnectOpts,
    shared: Arc<Shared>,
    ready: mpsc::Sender<Result<Duration, String>>,
) {
    let started = Instant::now();
    let mut client = match Client::connect(addr, source, &opts).await {
        Ok((client, _)) => {
            let _ = ready.send(Ok(started.elapsed())).await;
            client
        }
        Err(e) => {
            let _ = ready.send(Err(e.to_string())).await;
            return;
        }
    };
    drop(ready);
    Stats::add(&shared.stats.connected, 1);
    match hold(&mut client, &shared).await {
        Ok(()) => client.disconnect().await,
        Err(_) => Stats::add(&shared.stats.errors, 1),
    }
    shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
}

async fn hold(client: &mut Client, shared: &Shared) -> Result<(), ClientError> {
    let mut phase = shared.phase.subscribe();
    loop {
        if matches!(&*phase.borrow_and_update(), Phase::Drain { .. }) {
            return Ok(());
        }
        let wake = client
            .ping_due()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            read = client.read_more() => read?,
            changed = phase.changed() => if changed.is_err() { return Ok(()) },
            () = sleep_until(wake) => {
                if client.ping_due().is_some_and(|due| Instant::now() >= due) {
                    client.on_ping_due()?;
                }
            }
        }
        // Only PINGRESP is expected, and the client consumes it; anything else is a
        // broker surprise worth counting.
        while client.next_packet()?.is_some() {
            Stats::add(&shared.stats.errors, 1);
        }
        client.flush().await?;
    }
}

/// Runs the `conn` scenario: opens the connections at the rate, holds them, and
/// reports connect latency, failures and (with `--watch-pid`) the broker's memory
/// per connection.
pub async fn run_conn(cli: &Cli, targets: &Targets) -> Summary {
    let n = cli.connections.unwrap_or(1000);
    let rate = cli.rate.unwrap_or(1000.0);
    let mut summary = run::base_summary(cli, targets, 0, 0, rate);
    summary.params.connections = n;
    let shared = Shared::new();
    let rss_before = cli
        .watch_pid
        .and_then(|pid| report::status_kb(Some(pid), "VmRSS"));
    let cpu_start = report::cpu_times();
    let started = Instant::now();
    let (stop_progress, progress_rx) = watch::channel(false);
    let progress = tokio::spawn(report::progress(shared.clone(), progress_rx));

    // Room for CONNACK and PINGRESP only: idle connections are what is measured.
    let (ready_tx, mut ready_rx) = mpsc::channel(n.max(1));
    // Timers tick in milliseconds: allow catching up 10 ms worth, or rates above
    // 1000/s could not be reached.
    let mut limiter = RateLimiter::new(rate, (rate / 100.0).ceil().max(1.0) as u64);
    let mut tasks = Vec::with_capacity(n);
    let mut spawned = 0;
    while spawned < n {
        let granted = limiter.take(started.elapsed(), (n - spawned) as u64) as usize;
        for i in spawned..spawned + granted {
            let (addr, source) = targets.for_client(i);
            let opts = run::connect_opts(cli, "conn", i, 64);
            tasks.push(tokio::spawn(run(
                addr,
                source,
                opts,
                shared.clone(),
                ready_tx.clone(),
            )));
        }
        spawned += granted;
        if let Some(due) = limiter.next_due().filter(|_| spawned < n) {
            sleep_until(started + due).await;
        }
    }
    drop(ready_tx);
    let mut latency = Histogram::<u64>::new(3).expect("valid precision");
    run::collect_ready(&mut ready_rx, n, &mut summary.connections, &mut latency).await;
    summary.connections.connect_us = Percentiles::of(&latency);
    if !cli.json {
        eprintln!(
            "{} connections open after {:.1} s; holding for {} s",
            summary.connections.ok,
            started.elapsed().as_secs_f64(),
            cli.hold
        );
    }
    sleep(Duration::from_secs_f64(cli.hold)).await;
    summary.connections.held = Some(Stats::get(&shared.stats.connected));
    let rss_held = cli
        .watch_pid
        .and_then(|pid| report::status_kb(Some(pid), "VmRSS"));
    shared.phase.send_replace(Phase::Drain {
        until: Instant::now(),
        sent: None,
    });
    run::join_all(tasks, Duration::from_secs_f64(cli.connect_timeout + 5.0)).await;
    let _ = stop_progress.send(true);
    let _ = progress.await;

    summary.window_s = (cli.hold * 100.0).round() / 100.0;
    summary.errors = Stats::get(&shared.stats.errors);
    summary.cpu = report::cpu_since(cpu_start, started.elapsed());
    summary.target_rss = cli.watch_pid.map(|pid| TargetRss {
        pid,
        before_kb: rss_before,
        held_kb: rss_held,
        per_conn_bytes: match (rss_before, rss_held, summary.connections.held) {
            (Some(before), Some(held), Some(open)) if open > 0 => {
                Some(((held as f64 - before as f64) * 1024.0 / open as f64).round())
            }
            _ => None,
        },
    });
    summary
}
