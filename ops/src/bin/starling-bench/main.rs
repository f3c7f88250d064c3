//! `starling-bench`, the MQTT load generator shipped with Starling.
//!
//! It speaks MQTT through Starling's own codec with a minimal client of its own (one
//! task per connection), runs one scenario (idle connections, fan-in, fan-out,
//! pairs, latency, or publishers / subscribers alone), checks every message's
//! sequence number, and reports rates, loss, latency and its own CPU use. It only
//! ever targets loopback addresses.
//!
//! Exit codes: 0 success, 1 bad usage or failure to run, 2 a client could not
//! connect, 3 messages lost at QoS 1/2 with `--expect-no-loss`.

mod cli;
mod client;
mod hold;
mod payload;
mod publisher;
mod rate;
mod report;
mod run;
mod seq;
mod shared;
mod subscriber;
mod target;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Scenario};
use crate::payload::HEADER_LEN;
use crate::target::Targets;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let targets = match check(&cli) {
        Ok(targets) => targets,
        Err(e) => {
            eprintln!("starling-bench: {e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling-bench: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut summary = runtime.block_on(async {
        match cli.scenario {
            Scenario::Conn => hold::run_conn(&cli, &targets).await,
            _ => run::run_traffic(&cli, &targets).await,
        }
    });
    summary.tool_rss_peak_kb = report::status_kb(None, "VmHWM");
    summary.exit_code = if summary.connections.failed > 0 {
        run::EXIT_CONNECT_FAILED
    } else if cli.expect_no_loss && cli.qos > 0 && summary.lost > 0 {
        run::EXIT_LOST
    } else {
        0
    };
    if !cli.json {
        print!("{}", summary.table());
    }
    println!("{}", summary.json());
    if let Some(e) = &summary.connections.first_error {
        eprintln!(
            "starling-bench: {} of {} connections failed; first: {e}",
            summary.connections.failed, summary.connections.attempted
        );
    }
    ExitCode::from(summary.exit_code)
}

/// Checks the options that clap cannot, and resolves the addresses.
fn check(cli: &Cli) -> Result<Targets, String> {
    if cli.size < HEADER_LEN {
        return Err(format!(
            "--size must be at least {HEADER_LEN} bytes (the header)"
        ));
    }
    let finite = |name: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(format!("--{name} must be a non-negative number"))
        }
    };
    finite("duration", cli.duration)?;
    finite("warmup", cli.warmup)?;
    finite("drain", cli.drain)?;
    finite("hold", cli.hold)?;
    finite("rate", cli.rate.unwrap_or(0.0))?;
    finite("connect-timeout", cli.connect_timeout)?;
    // Every wait in the tool is bounded by these; a day is far beyond any bench.
    let day = 86_400.0;
    if cli.duration + cli.warmup > day || cli.drain > day || cli.hold > day {
        return Err("durations must be under a day".into());
    }
    if cli.scenario == Scenario::Latency && cli.rate == Some(0.0) {
        return Err("latency needs a fixed --rate above 0".into());
    }
    if cli.prefix.is_empty() || cli.prefix.contains(['#', '+', '/']) {
        return Err("--prefix must be one topic level without wildcards".into());
    }
    let targets = Targets {
        hosts: target::parse_hosts(&cli.hosts)?,
        sources: target::parse_source_ips(cli.source_ips.as_deref())?,
    };
    let clients = match cli.scenario {
        Scenario::Conn => cli.connections.unwrap_or(1000),
        _ => {
            let plan = run::plan(cli, &targets);
            plan.pubs.len() + plan.subs.len()
        }
    };
    if let Some(limit) = target::open_files_limit() {
        // A few descriptors go to the runtime, stdio and the like.
        if clients as u64 + 32 > limit {
            return Err(format!(
                "{clients} connections need more open files than the limit of {limit}; \
                 raise it (ulimit -n) first"
            ));
        }
    }
    Ok(targets)
}
