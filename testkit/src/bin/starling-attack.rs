//! `starling-attack`: runs the attacks of `starling_testkit::attack` against
//! a broker on 127.0.0.1, one after the other, and prints a Markdown table:
//! per attack, the probe's delivery times and losses, what the attackers did,
//! the broker's resident memory before and after, and (given the HTTP port of
//! a Starling node) the `/metrics` counters that moved.
//!
//! Usage: starling-attack --port P [--http-port H] [--pid PID] [--name NAME]
//!        [--attacks a,b,...] [--sockets N] [--duration SECONDS] [--header]

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use starling_testkit::attack::{self, Attack, Outcome, Settings};
use starling_testkit::http_get;

struct Options {
    port: u16,
    http_port: Option<u16>,
    pid: Option<u32>,
    name: String,
    attacks: Vec<Attack>,
    sockets: usize,
    duration: u64,
    header: bool,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        port: 0,
        http_port: None,
        pid: None,
        name: "broker".into(),
        attacks: Attack::ALL.to_vec(),
        sockets: 200,
        duration: 15,
        header: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--header" {
            options.header = true;
            continue;
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse()
                .map_err(|_| format!("{what} takes a whole number, not {value:?}"))
        };
        match arg.as_str() {
            "--port" => options.port = number("--port")? as u16,
            "--http-port" => options.http_port = Some(number("--http-port")? as u16),
            "--pid" => options.pid = Some(number("--pid")? as u32),
            "--name" => options.name = value.clone(),
            "--sockets" => options.sockets = number("--sockets")?.clamp(1, 20_000) as usize,
            "--duration" => options.duration = number("--duration")?.clamp(1, 600),
            "--attacks" => {
                options.attacks = value
                    .split(',')
                    .map(|name| Attack::from_name(name).ok_or(format!("no attack {name:?}")))
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    if options.port == 0 {
        return Err("--port is required".into());
    }
    Ok(options)
}

/// Resident memory of `pid` in MiB, if it can be read.
fn rss_mib(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

async fn counters(http_port: Option<u16>) -> BTreeMap<String, f64> {
    match http_port {
        Some(port) => match http_get(port, "/metrics").await {
            Some((_, body)) => attack::counters(&body),
            None => BTreeMap::new(),
        },
        None => BTreeMap::new(),
    }
}

/// `starling_client_disconnects_total{reason="taken_over"}` as
/// `client_disconnects{taken_over}`; traffic and Raft counters, which every
/// attack moves, are left out.
fn short(series: &str) -> Option<String> {
    let rest = series.strip_prefix("starling_")?;
    let noisy = [
        "bytes_",
        "raft_",
        "messages_received",
        "messages_sent",
        "connections_total",
        "forward_",
    ];
    if noisy.iter().any(|n| rest.starts_with(n)) {
        return None;
    }
    let (name, labels) = rest.split_once('{').unwrap_or((rest, ""));
    let name = name.strip_suffix("_total").unwrap_or(name);
    let labels: Vec<&str> = labels
        .trim_end_matches('}')
        .split(',')
        .filter_map(|kv| Some(kv.split_once('=')?.1.trim_matches('"')))
        .collect();
    Some(if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn row(name: &str, outcome: &Outcome, rss: (Option<f64>, Option<f64>), moved: &str) -> String {
    let p = &outcome.probe;
    let mib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    let extra = match outcome.attack {
        Attack::SubscribeStorm => format!(
            "; filters granted {} refused {}",
            outcome.accepted, outcome.refused
        ),
        Attack::RetainedFlood => format!("; retained acked {}", outcome.accepted),
        Attack::TakeoverStorm => format!("; CONNACKs {}", outcome.accepted),
        _ => String::new(),
    };
    format!(
        "| {} | {} | {} / {} | {} | {} | {} | {} | {} | {} / {}{} | {} → {} | {} |",
        outcome.attack.name(),
        name,
        p.delivered,
        p.sent,
        ms(p.percentile(50.0)),
        ms(p.percentile(99.0)),
        ms(p.max()),
        outcome.ops,
        outcome.closed,
        outcome.left_open,
        outcome.errors,
        extra,
        mib(rss.0),
        mib(rss.1),
        if moved.is_empty() { "-" } else { moved },
    )
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(e) => {
            eprintln!("starling-attack: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("starling-attack: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    if options.header {
        println!(
            "| attack | broker | probe delivered / sent | p50 ms | p99 ms | max ms \
             | attacker ops | closed by broker | left open / failed | RSS MiB before → after \
             | counters moved |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    }
    runtime.block_on(async {
        let mut settings = Settings::new(
            options.port,
            options.sockets,
            Duration::from_secs(options.duration),
        );
        settings.nonce = format!("{}-{}", options.name, std::process::id());
        for attack in &options.attacks {
            let before = counters(options.http_port).await;
            let rss_before = rss_mib(options.pid);
            let outcome = attack::run(*attack, &settings).await;
            let rss_after = rss_mib(options.pid);
            let after = counters(options.http_port).await;
            let moved: Vec<String> = attack::moved(&before, &after)
                .into_iter()
                .filter_map(|(series, by)| Some(format!("{} +{by}", short(&series)?)))
                .collect();
            println!(
                "{}",
                row(
                    &options.name,
                    &outcome,
                    (rss_before, rss_after),
                    &moved.join(", ")
                )
            );
            if let Some(e) = &outcome.probe.first_error {
                eprintln!("starling-attack: {}: probe: {e}", attack.name());
            }
        }
    });
    ExitCode::SUCCESS
}
