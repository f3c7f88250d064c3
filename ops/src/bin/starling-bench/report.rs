//! What a run reports: the live progress line, the summary (a small table and one
//! JSON line), and the tool's own CPU and memory use, read from `/proc`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{interval, Instant, MissedTickBehavior};

use crate::cli::{Protocol, Scenario, Transport};
use crate::shared::Shared;

/// Percentiles of a histogram of microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// The options the run was made with.
#[derive(Debug, Serialize)]
pub struct Params {
    pub hosts: Vec<String>,
    pub protocol: Protocol,
    pub transport: Transport,
    pub qos: u8,
    pub size: usize,
    pub clean: bool,
    pub publishers: usize,
    pub subscribers: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub drain_s: f64,
    pub hold_s: f64,
    pub count: Option<u64>,
    /// Per publisher (total for latency; connections per second for conn).
    pub rate: f64,
    pub inflight: u16,
    pub keepalive_s: u16,
    pub source_ips: usize,
    pub prefix: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    /// The first failure's reason, to tell a refused port from a full backlog.
    pub first_error: Option<String>,
    /// TCP connect to CONNACK, in microseconds.
    pub connect_us: Option<Percentiles>,
    /// Connections still open at the end of the hold (conn).
    pub held: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Cpu {
    pub user_s: f64,
    pub sys_s: f64,
    pub wall_s: f64,
    /// (user + sys) / wall; above 100 when more than one core was busy.
    pub percent: f64,
}

/// Memory of the broker under test (`--watch-pid`).
#[derive(Debug, Serialize)]
pub struct TargetRss {
    pub pid: u32,
    pub before_kb: Option<u64>,
    pub held_kb: Option<u64>,
    pub per_conn_bytes: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub tool: &'static str,
    pub version: &'static str,
    pub scenario: Scenario,
    pub params: Params,
    pub connections: Connections,
    pub sent: u64,
    pub acked: u64,
    /// Deliveries expected: what each subscriber's publishers sent, summed over
    /// subscribers; unknown when the publishers are not ours.
    pub expected: Option<u64>,
    /// Distinct messages received, summed over subscribers.
    pub received: u64,
    pub lost: u64,
    pub dup: u64,
    pub reordered: u64,
    /// Left over from an earlier run's persistent sessions; not counted elsewhere.
    pub stale: u64,
    pub errors: u64,
    /// Seconds of the measured window (after warm-up, until publishing stopped).
    pub window_s: f64,
    /// Publishes written per second.
    pub sent_rate: f64,
    /// The publish rate: acknowledged per second at QoS 1/2, written at QoS 0.
    pub pub_rate: f64,
    pub recv_rate: f64,
    /// Payload megabytes (10^6) per second, sent and received.
    pub pub_mb_s: f64,
    pub recv_mb_s: f64,
    /// Publish-to-receive latency, in microseconds.
    pub latency_us: Option<Percentiles>,
    /// The tool's own CPU use while publishing (conn: over the whole run).
    pub cpu: Option<Cpu>,
    pub tool_rss_peak_kb: Option<u64>,
    pub target_rss: Option<TargetRss>,
    pub exit_code: u8,
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Summary {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let p = &self.params;
        if self.scenario == Scenario::Conn {
            let _ = writeln!(
                t,
                "scenario   conn  connections {}  {} /s  hold {} s",
                p.connections, p.rate, p.hold_s
            );
        } else {
            let _ = writeln!(
                t,
                "scenario   {:?}  qos {}  {} B  pubs {}  subs {}  clean {}",
                self.scenario, p.qos, p.size, p.publishers, p.subscribers, p.clean
            );
        }
        let _ = writeln!(
            t,
            "protocol   {} over {}",
            p.protocol.label(),
            p.transport.label()
        );
        let c = &self.connections;
        let _ = writeln!(
            t,
            "connect    {} ok, {} failed{}",
            c.ok,
            c.failed,
            c.connect_us.as_ref().map_or(String::new(), |l| format!(
                "   µs p50 {} p99 {} max {}",
                l.p50, l.p99, l.max
            ))
        );
        if let Some(held) = c.held {
            let _ = writeln!(t, "held       {held} open at the end of the hold");
        }
        if self.scenario != Scenario::Conn {
            let _ = writeln!(t, "window     {:.2} s", self.window_s);
            let _ = writeln!(
                t,
                "sent       {:>12}   {:>12.0} msg/s  {:.2} MB/s",
                self.sent, self.sent_rate, self.pub_mb_s
            );
            let _ = writeln!(
                t,
                "acked      {:>12}   {:>12.0} msg/s",
                self.acked, self.pub_rate
            );
            let _ = writeln!(
                t,
                "received   {:>12}   {:>12.0} msg/s  {:.2} MB/s",
                self.received, self.recv_rate, self.recv_mb_s
            );
            let _ = writeln!(
                t,
                "expected   {:>12}   lost {}  dup {}  reordered {}  stale {}",
                self.expected.map_or("?".to_owned(), |e| e.to_string()),
                self.lost,
                self.dup,
                self.reordered,
                self.stale
            );
        }
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                t,
                "latency µs p50 {}  p99 {}  p99.9 {}  max {}  (n {})",
                l.p50, l.p99, l.p999, l.max, l.count
            );
        }
        if let Some(r) = &self.target_rss {
            let _ = writeln!(
                t,
                "broker rss {:?} kB -> {:?} kB held; {:.0} B per connection",
                r.before_kb,
                r.held_kb,
                r.per_conn_bytes.unwrap_or(f64::NAN)
            );
        }
        let _ = writeln!(t, "errors     {}", self.errors);
        if let Some(cpu) = &self.cpu {
            let _ = writeln!(
                t,
                "tool cpu   {:.2} s user + {:.2} s sys over {:.2} s = {:.0}%",
                cpu.user_s, cpu.sys_s, cpu.wall_s, cpu.percent
            );
        }
        t
    }

    /// Rates of the measured window.
    pub fn set_rates(
        &mut self,
        window: Duration,
        sent: u64,
        acked: u64,
        received: u64,
        bytes: u64,
    ) {
        let secs = window.as_secs_f64().max(1e-3);
        self.window_s = round2(secs);
        self.sent_rate = round2(sent as f64 / secs);
        self.pub_rate = if self.params.qos == 0 {
            self.sent_rate
        } else {
            round2(acked as f64 / secs)
        };
        self.recv_rate = round2(received as f64 / secs);
        self.pub_mb_s = round2(sent as f64 * self.params.size as f64 / secs / 1e6);
        self.recv_mb_s = round2(bytes as f64 / secs / 1e6);
    }
}

/// Prints a progress line on stderr once a second until `stop` changes.
pub async fn progress(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let started = Instant::now();
    let mut tick = interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = shared.stats.snapshot();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = shared.stats.snapshot();
        let d = now.since(&last);
        last = now;
        eprintln!(
            "[{:>6.1}s] sent {:>9}/s  acked {:>9}/s  recv {:>9}/s  conns {:>6}  errors {}",
            started.elapsed().as_secs_f64(),
            d.sent,
            d.acked,
            d.received,
            now.connected,
            now.errors
        );
    }
}

/// Kernel clock ticks per second in `/proc/*/stat`: USER_HZ, 100 on every Linux
/// architecture we run on (and what the kernel exports regardless of its HZ).
const USER_HZ: f64 = 100.0;

/// User and system CPU seconds of this process so far.
pub fn cpu_times() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields are counted after
    // its closing parenthesis, where field 3 (state) comes first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / USER_HZ, stime / USER_HZ))
}

/// One `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`.
pub fn status_kb(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU use since `start_cpu` over `wall`.
pub fn cpu_since(start_cpu: Option<(f64, f64)>, wall: Duration) -> Option<Cpu> {
    let (u0, s0) = start_cpu?;
    let (u1, s1) = cpu_times()?;
    let wall_s = wall.as_secs_f64().max(1e-3);
    Some(Cpu {
        user_s: round2(u1 - u0),
        sys_s: round2(s1 - s0),
        wall_s: round2(wall_s),
        percent: round2((u1 - u0 + s1 - s0) / wall_s * 100.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_and_memory_are_readable() {
        let (user, sys) = cpu_times().expect("/proc/self/stat");
        assert!(user >= 0.0 && sys >= 0.0);
        assert!(status_kb(None, "VmRSS").is_some_and(|kb| kb > 0));
    }

    #[test]
    fn percentiles_of_an_empty_histogram_are_absent() {
        let mut h = Histogram::<u64>::new(3).unwrap();
        assert!(Percentiles::of(&h).is_none());
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h).unwrap();
        assert_eq!((p.count, p.p50, p.max), (1000, 500, 1000));
    }
}
