//! The process metrics under the names every Prometheus client library uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_threads`, `process_start_time_seconds`), read from `/proc/self`
//! at each scrape. On a system without `/proc` the collector yields nothing.
//! With them, `starling_runtime_alive_tasks`: the tokio tasks alive, which a
//! leak of connections or timers would make grow.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge};

/// What `/proc/self` says of the process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    threads: i64,
    start_time_seconds: f64,
    open_fds: i64,
    max_fds: i64,
}

pub struct ProcessCollector {
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    tasks: IntGauge,
    /// CPU seconds already counted into `cpu`.
    counted_cpu: Mutex<f64>,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> prometheus::Result<ProcessCollector> {
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )?;
        let resident = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let virtual_memory = IntGauge::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )?;
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process.")?;
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = IntGauge::new(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let tasks = IntGauge::new(
            "starling_runtime_alive_tasks",
            "Tokio tasks alive in the process's runtime.",
        )?;
        let descs = [
            tasks.desc(),
            cpu.desc(),
            resident.desc(),
            virtual_memory.desc(),
            threads.desc(),
            start_time.desc(),
            open_fds.desc(),
            max_fds.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(ProcessCollector {
            cpu,
            resident,
            virtual_memory,
            threads,
            start_time,
            open_fds,
            max_fds,
            tasks,
            counted_cpu: Mutex::new(0.0),
            descs,
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(sample) = sample() else {
            return Vec::new();
        };
        {
            let mut counted = self
                .counted_cpu
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if sample.cpu_seconds > *counted {
                self.cpu.inc_by(sample.cpu_seconds - *counted);
                *counted = sample.cpu_seconds;
            }
        }
        self.resident.set(sample.resident_bytes);
        self.virtual_memory.set(sample.virtual_bytes);
        self.threads.set(sample.threads);
        self.start_time.set(sample.start_time_seconds);
        self.open_fds.set(sample.open_fds);
        self.max_fds.set(sample.max_fds);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        [
            self.tasks.collect(),
            self.cpu.collect(),
            self.resident.collect(),
            self.virtual_memory.collect(),
            self.threads.collect(),
            self.start_time.collect(),
            self.open_fds.collect(),
            self.max_fds.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// `/proc` counts CPU time in these ticks (USER_HZ), 100 on every Linux
/// architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// Reads the figures, or `None` without `/proc`.
fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<f64>()
        .ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as i64;
    let mut sample = parse_stat(&stat, boot_time)?;
    sample.resident_bytes = status_kib(&status, "VmRSS:")? * 1024;
    sample.open_fds = open_fds;
    sample.max_fds = max_open_files(&limits).unwrap_or(0);
    Some(sample)
}

/// A `Name:   N kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<i64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The soft limit of the `Max open files` line of `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The figures of a `/proc/self/stat` line: fields after the command name
/// (which is in parentheses and may hold spaces), numbered as in proc(5).
fn parse_stat(stat: &str, boot_time: f64) -> Option<Sample> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state).
    let field = |n: usize| rest.split_whitespace().nth(n - 3);
    let number = |n: usize| field(n)?.parse::<i64>().ok();
    let utime = number(14)?;
    let stime = number(15)?;
    Some(Sample {
        cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
        threads: number(20)?,
        start_time_seconds: boot_time + number(22)? as f64 / TICKS_PER_SECOND,
        virtual_bytes: number(23)?,
        resident_bytes: 0,
        open_fds: 0,
        max_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_is_read_even_with_spaces_in_the_name() {
        let stat = "9038 (a (b) c) R 9035 9035 1865 0 -1 4194304 128 0 0 0 250 50 0 0 20 0 7 0 \
                    1000 3133440 390 18446744073709551615";
        let sample = parse_stat(stat, 1_700_000_000.0).unwrap();
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.threads, 7);
        assert_eq!(sample.start_time_seconds, 1_700_000_010.0);
        assert_eq!(sample.virtual_bytes, 3_133_440);
        let status = "Name:\tstarling\nVmRSS:\t   12345 kB\nThreads:\t7\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(12345));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
    }

    #[test]
    fn this_process_is_measured() {
        let collector = ProcessCollector::new().unwrap();
        let families = collector.collect();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| {
                    let m = &f.get_metric()[0];
                    if f.name().ends_with("_total") {
                        m.get_counter().get_value()
                    } else {
                        m.get_gauge().get_value()
                    }
                })
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert!(value("process_resident_memory_bytes") > 1_000_000.0);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_threads") >= 1.0);
        assert!(value("process_start_time_seconds") > 1_600_000_000.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
    }
}
