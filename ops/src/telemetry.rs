//! Logging setup (tracing, text or JSON) and the process-level metrics that the binary
//! itself registers.

use std::io::IsTerminal as _;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, IntGaugeVec, Opts, Registry};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?} in {origin}: {source}")]
    Filter {
        origin: &'static str,
        filter: String,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Installs the global log subscriber. `rust_log` (the `RUST_LOG` variable), when set
/// and not empty, replaces the configured level.
pub fn init(log: &LogConfig, rust_log: Option<String>) -> Result<(), TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = filter(log, rust_log)?;
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter);
    // openraft's repeated per-peer warnings are held back (`log_limit`).
    let limit = crate::log_limit::RepeatLimit::default;
    let installed = match log.format {
        LogFormat::Text => registry.with(layer.with_filter(limit())).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_filter(limit()))
            .try_init(),
    };
    installed.map_err(|e| TelemetryError::Install(e.to_string()))
}

/// Checks the filter `init` would install, without installing it.
pub fn check_filter(log: &LogConfig, rust_log: Option<String>) -> Result<(), TelemetryError> {
    filter(log, rust_log).map(drop)
}

/// The filter of `log.level`, or of `rust_log` when it is set and not empty.
fn filter(log: &LogConfig, rust_log: Option<String>) -> Result<EnvFilter, TelemetryError> {
    let (origin, filter) = match rust_log.filter(|s| !s.trim().is_empty()) {
        Some(filter) => ("RUST_LOG", filter),
        None => ("log.level", log.level.clone()),
    };
    EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter {
        origin,
        filter,
        source,
    })
}

/// Registers the metrics that describe the process rather than the broker:
/// `starling_build_info{version}` (always 1) and
/// `starling_process_start_time_seconds`, and the standard `process_*`
/// metrics (CPU, memory, file descriptors, threads).
pub fn register_process_metrics(registry: &Registry) -> prometheus::Result<()> {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "starling_build_info",
            "Always 1; its labels describe the running build.",
        ),
        &["version"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(build_info))?;

    let start_time = Gauge::new(
        "starling_process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
    )?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    start_time.set(now);
    registry.register(Box::new(start_time))?;
    registry.register(Box::new(crate::process_metrics::ProcessCollector::new()?))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder, TextEncoder};

    use super::*;

    #[test]
    fn rust_log_replaces_the_configured_level() {
        let log = LogConfig {
            level: "not a valid filter ===".into(),
            ..LogConfig::default()
        };
        assert!(filter(&log, Some("debug".into())).is_ok());
        let err = filter(&log, None).unwrap_err();
        assert!(err.to_string().contains("log.level"), "{err}");
        // An empty RUST_LOG counts as unset.
        assert!(filter(&log, Some(" ".into())).is_err());
    }

    #[test]
    fn process_metrics_are_exported() {
        let registry = Registry::new();
        register_process_metrics(&registry).unwrap();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        let line = format!(
            "starling_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&line), "{text}");
        assert!(
            text.contains("starling_process_start_time_seconds "),
            "{text}"
        );
    }
}
