//! The node's configuration as it appears in the TOML file, and how the defaults, the
//! file and `STARLING_*` environment variables are merged into one `Config`.
//!
//! Everything goes through one `toml::Value` tree: the file is deserialized on top of
//! the defaults (serde fills in what it leaves out), the result is turned back into a
//! tree, and every environment variable overrides one leaf of it. The command-line
//! flags come last; they live in `cli`.

mod example;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use starling_broker::{AuthConfig, ClusterConfig, MqttConfig, TlsConfig, WebSocketConfig};

pub use example::{example, keys_help};

/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "STARLING_";
/// Separates a section from its key in an environment variable's name.
const ENV_SEPARATOR: &str = "__";
/// Keys that have no default value: unset, they are absent from the
/// configuration's TOML, and the environment can still set them.
pub(crate) const UNSET_BY_DEFAULT: &[&str] = &["auth.allow_anonymous"];

/// Everything a `starling` process is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Id of this node in the cluster; every node of a cluster needs its own.
    pub node_id: u64,
    /// Take the node id from this machine's hostname instead of `node_id`: the
    /// number after the hostname's last '-', plus one, so that the pods
    /// "starling-0", "starling-1", ... of a Kubernetes StatefulSet are the nodes
    /// 1, 2, ... A hostname without such a number fails the start. A node whose
    /// id is then not in `cluster.peers` (a StatefulSet scaled up past them)
    /// joins the running cluster through the first of them instead.
    pub node_id_from_hostname: bool,
    /// Directory of the node's durable state: the Raft log, snapshots and the MQTT
    /// state they hold. Created if missing.
    pub data_dir: PathBuf,
    /// Settings of the MQTT side of a node.
    pub mqtt: MqttConfig,
    /// MQTT over WebSocket: off unless enabled.
    pub websocket: WebSocketConfig,
    /// MQTT over TLS, and the certificates of the secure WebSocket listener:
    /// off unless enabled.
    pub tls: TlsConfig,
    /// Who may connect: users of a password file, anonymous clients.
    pub auth: AuthConfig,
    /// Settings of the cluster side of a node: how it reaches the other nodes, and
    /// which cluster it forms or joins.
    pub cluster: ClusterConfig,
    /// The HTTP server for health checks and metrics.
    pub http: HttpConfig,
    /// What is logged, and how.
    pub log: LogConfig,
}

/// Settings of the HTTP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the HTTP server: `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// The bearer token the admin API (`/api/...`) asks for. Empty: none, and
    /// the admin API then answers loopback addresses only.
    pub token: Secret,
    /// A file holding the token (its first line), instead of `token`.
    pub token_file: String,
}

/// A configured secret: read like a string, never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

impl HttpConfig {
    /// The admin token: `token_file`'s first line if set, else `token`.
    pub fn admin_token(&self) -> std::io::Result<Option<String>> {
        if self.token_file.is_empty() {
            return Ok(Some(self.token.0.clone()).filter(|t| !t.is_empty()));
        }
        let text = std::fs::read_to_string(&self.token_file)?;
        Ok(text
            .lines()
            .next()
            .map(|line| line.trim().to_owned())
            .filter(|t| !t.is_empty()))
    }
}

/// Settings of the log output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Which events are logged, as a `RUST_LOG`-style filter such as "info" or
    /// "info,starling_broker=debug". `RUST_LOG`, when set, replaces it.
    pub level: String,
    /// "text" for people, or "json" (one object per line) for log collectors.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            node_id_from_hostname: false,
            data_dir: PathBuf::from("./data"),
            mqtt: MqttConfig::default(),
            websocket: WebSocketConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            cluster: ClusterConfig::default(),
            http: HttpConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: Secret::default(),
            token_file: String::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level:
                "info,openraft=warn,openraft::core::raft_core=error,openraft::raft::raft_inner=off"
                    .to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// With `node_id_from_hostname`, sets `node_id` from the hostname `hostname`
    /// reads, and turns `cluster.peers` that do not list that id into a `join`
    /// through the first of them; otherwise leaves everything as it is.
    pub fn resolve_node_id(
        &mut self,
        hostname: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<(), ConfigError> {
        if !self.node_id_from_hostname {
            return Ok(());
        }
        let name = hostname().map_err(|e| {
            refuse(
                "node_id_from_hostname",
                format!("cannot read the hostname: {e}"),
            )
        })?;
        self.node_id = node_id_from_hostname(&name)
            .map_err(|reason| refuse("node_id_from_hostname", reason))?;
        // A node added after the cluster was formed joins it through the first
        // peer; an unreadable peer list is left for `validate` to report.
        if self.cluster.join.trim().is_empty() {
            if let Ok(peers) = self.cluster.parse_peers() {
                if let Some((_, first)) = peers.iter().next() {
                    if !peers.contains_key(&self.node_id) {
                        self.check_advertised(first)?;
                        self.cluster.join = first.clone();
                        self.cluster.peers.clear();
                    }
                }
            }
        }
        Ok(())
    }

    /// A node joining through `seed` must be reachable by the others: on the
    /// wildcard address, only `cluster.advertise` says where.
    fn check_advertised(&self, seed: &str) -> Result<(), ConfigError> {
        if self.cluster.advertise.trim().is_empty() && self.cluster.listen.ip().is_unspecified() {
            return Err(refuse(
                "cluster.advertise",
                format!(
                    "node {} is not among cluster.peers, so it joins through {seed}, and \
                     it listens on {}: set the address the others reach it at (HOST:PORT)",
                    self.node_id, self.cluster.listen
                ),
            ));
        }
        Ok(())
    }

    /// The configuration as a TOML document.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error(
        "environment variable {var} does not name a config key (a section and its key \
         are separated by a double underscore, as in STARLING_MQTT__LISTEN)"
    )]
    UnknownEnvKey { var: String },
    #[error("--set {setting}: expected KEY=VALUE, as in --set mqtt.max_inflight=64")]
    BadSetting { setting: String },
    #[error("environment variable {var} names a config section; set its keys one by one")]
    EnvSection { var: String },
    #[error("invalid value in environment variable {var}: {source}")]
    EnvValue {
        var: String,
        source: toml::de::Error,
    },
    #[error("invalid {key} (set by the config file, {env} or {flag}): {reason}")]
    Invalid {
        key: &'static str,
        env: &'static str,
        flag: &'static str,
        reason: String,
    },
    #[error("cannot represent the configuration as TOML: {0}")]
    Serialize(#[from] toml::ser::Error),
    #[error("invalid {key} (set by the config file or {env}): {reason}")]
    Setting {
        key: &'static str,
        env: String,
        reason: String,
    },
}

/// The node id `hostname` gives: the number after its last '-' plus one
/// ("starling-0" -> 1, "mqtt-broker-12.example" -> 13). A domain after the first
/// '.' is ignored.
pub fn node_id_from_hostname(hostname: &str) -> Result<u64, String> {
    let host = hostname.trim();
    let host = host.split('.').next().unwrap_or(host);
    let ordinal = host
        .rsplit_once('-')
        .map(|(_, ordinal)| ordinal)
        .filter(|ordinal| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            format!(
                "the hostname {host:?} does not end in -N (N a number), as the pods of a \
                 StatefulSet do"
            )
        })?;
    ordinal
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_add(1))
        .ok_or_else(|| format!("the number in the hostname {host:?} is too large"))
}

/// This machine's hostname: the kernel's, or else `$HOSTNAME`.
pub fn hostname() -> std::io::Result<String> {
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_owned()),
        Ok(_) => std::env::var("HOSTNAME")
            .map_err(|_| std::io::Error::other("the kernel's hostname is empty")),
        Err(e) => std::env::var("HOSTNAME").map_err(|_| e),
    }
}

/// Reads the config file at `path` (if any) over the defaults, then applies the
/// `STARLING_*` variables found in `env`. Other variables are ignored.
pub fn load<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let base = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            // Deserialized on its own first, so that its errors point into the file.
            toml::from_str(&text).map_err(|source| ConfigError::File {
                path: path.to_owned(),
                source,
            })?
        }
        None => Config::default(),
    };
    apply_env(base, env)
}

/// Overrides the keys of `config` named by the `STARLING_*` variables in `env`.
pub fn apply_env<I>(config: Config, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    // Sorted so that the same environment always gives the same result and error.
    vars.sort();
    let mut tree = toml::Value::try_from(&config)?;
    let mut config = config;
    for (var, raw) in vars {
        let path = env_path(&var).ok_or_else(|| ConfigError::UnknownEnvKey { var: var.clone() })?;
        place_unset(&mut tree, &path, &raw);
        let slot = lookup(&mut tree, &path)
            .ok_or_else(|| ConfigError::UnknownEnvKey { var: var.clone() })?;
        *slot = match slot {
            toml::Value::Table(_) => return Err(ConfigError::EnvSection { var }),
            // A key that holds text takes the variable's text as it is: a data
            // directory named "2024" stays a string.
            toml::Value::String(_) => toml::Value::String(raw),
            // A key that holds a list takes a TOML array, or else comma-separated
            // text: "1=a:7946,2=b:7946" is two entries.
            toml::Value::Array(_) => match parse_value(&raw) {
                list @ toml::Value::Array(_) => list,
                _ => split_list(&raw),
            },
            _ => parse_value(&raw),
        };
        // Checked after each variable, so that an error names the one at fault.
        config = tree
            .clone()
            .try_into()
            .map_err(|source| ConfigError::EnvValue { var, source })?;
    }
    Ok(config)
}

/// Overrides the keys of `config` named by `KEY=VALUE` settings (`--set`),
/// read as their environment variables would be.
pub fn apply_settings(config: Config, settings: &[String]) -> Result<Config, ConfigError> {
    let mut vars = Vec::with_capacity(settings.len());
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| ConfigError::BadSetting {
                setting: setting.clone(),
            })?;
        vars.push((example::env_var(key.trim()), value.to_owned()));
    }
    apply_env(config, vars)
}

/// `STARLING_MQTT__MAX_INFLIGHT` -> `["mqtt", "max_inflight"]`.
fn env_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    let path: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(str::to_ascii_lowercase)
        .collect();
    path.iter().all(|key| !key.is_empty()).then_some(path)
}

/// Puts a key of `UNSET_BY_DEFAULT` that `tree` lacks into it, with the value
/// `raw` spells, so that the variable naming it finds its place.
fn place_unset(tree: &mut toml::Value, path: &[String], raw: &str) {
    let Some((key, section)) = path.split_last() else {
        return;
    };
    if !UNSET_BY_DEFAULT.contains(&path.join(".").as_str()) {
        return;
    }
    if let Some(table) = lookup(tree, section).and_then(toml::Value::as_table_mut) {
        table.entry(key.clone()).or_insert_with(|| parse_value(raw));
    }
}

/// The existing value at `path`, if there is one.
fn lookup<'a>(tree: &'a mut toml::Value, path: &[String]) -> Option<&'a mut toml::Value> {
    path.iter()
        .try_fold(tree, |node, key| node.as_table_mut()?.get_mut(key))
}

/// The TOML value `raw` spells (`64`, `true`, `[1, 2]`, `"quoted"`), or else `raw` as
/// a string (`0.0.0.0:1883`, `info`).
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("value = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// `"a, b,,c"` -> `["a", "b", "c"]`: entries trimmed, empty ones dropped, so that an
/// empty text is an empty list.
pub fn split_list(raw: &str) -> toml::Value {
    toml::Value::Array(
        raw.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| toml::Value::String(entry.to_owned()))
            .collect(),
    )
}

/// The keys that a command-line flag also sets, with their environment variable
/// and that flag: an error about one of them names all three.
const FLAGS: &[(&str, &str, &str)] = &[
    ("data_dir", "STARLING_DATA_DIR", "--data-dir"),
    ("mqtt.listen", "STARLING_MQTT__LISTEN", "--mqtt-listen"),
    ("http.listen", "STARLING_HTTP__LISTEN", "--http-listen"),
    ("node_id", "STARLING_NODE_ID", "--node-id"),
    (
        "cluster.listen",
        "STARLING_CLUSTER__LISTEN",
        "--cluster-listen",
    ),
    (
        "cluster.advertise",
        "STARLING_CLUSTER__ADVERTISE",
        "--advertise",
    ),
    ("cluster.peers", "STARLING_CLUSTER__PEERS", "--peers"),
    ("cluster.join", "STARLING_CLUSTER__JOIN", "--join"),
];

/// The smallest `cluster.node_down_after_ms` the cluster accepts: Raft's
/// longest election timeout, under which a live node would be declared down.
const MIN_NODE_DOWN_AFTER_MS: u64 = 500;

/// The error for an unusable value of `key`, naming its environment variable,
/// and its flag if it has one.
fn refuse(key: &'static str, reason: String) -> ConfigError {
    match FLAGS.iter().find(|(k, _, _)| *k == key) {
        Some(&(key, env, flag)) => ConfigError::Invalid {
            key,
            env,
            flag,
            reason,
        },
        None => ConfigError::Setting {
            key,
            env: example::env_var(key),
            reason,
        },
    }
}

impl Config {
    /// Checks what serde cannot: values that cannot work, alone or together. Run on
    /// the merged configuration, so that a mistake fails the start whatever set it,
    /// and by `starling config --check`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_peers()?;
        self.check_cluster()?;
        self.check_limits()?;
        self.check_listeners()?;
        self.check_log_level()?;
        // The TLS listeners: their files, and the options that go together.
        let secure_websocket = self
            .websocket
            .tls_listen()
            .map_err(|reason| refuse("websocket.tls_listen", reason))?;
        self.tls
            .check(secure_websocket.is_some())
            .map_err(|(key, reason)| refuse(key, reason))?;
        Ok(())
    }

    /// The peer list: entries of "ID=HOST:PORT", ids unique, this node among them.
    fn check_peers(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        let peers = |reason| refuse("cluster.peers", reason);
        let ids = cluster.parse_peers().map_err(peers)?;
        if ids.len() != cluster.peers.len() {
            return Err(peers("two entries have the same id".to_owned()));
        }
        if let Some((id, addr)) = ids.iter().find(|(_, addr)| !is_host_port(addr)) {
            return Err(peers(format!(
                "the address {addr:?} of peer {id} is not HOST:PORT"
            )));
        }
        if !ids.is_empty() && !ids.contains_key(&self.node_id) {
            return Err(peers(format!(
                "this node (node_id {}) is not in the list; every node lists all \
                 members, itself included",
                self.node_id
            )));
        }
        Ok(())
    }

    /// The other cluster keys: addresses that are HOST:PORT, `peers` or `join` but
    /// not both, and a `node_down_after_ms` Raft can live with.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        for (key, value) in [
            ("cluster.advertise", &cluster.advertise),
            ("cluster.join", &cluster.join),
        ] {
            if !value.is_empty() && !is_host_port(value) {
                return Err(refuse(key, format!("{value:?} is not HOST:PORT")));
            }
        }
        if !cluster.peers.is_empty() && !cluster.join.trim().is_empty() {
            return Err(refuse(
                "cluster.join",
                "set together with cluster.peers: peers form a new cluster, join enters \
                 a running one; set only one of them"
                    .to_owned(),
            ));
        }
        if cluster.node_down_after_ms < MIN_NODE_DOWN_AFTER_MS {
            return Err(refuse(
                "cluster.node_down_after_ms",
                format!(
                    "{} is under {MIN_NODE_DOWN_AFTER_MS} ms, Raft's election timeout: \
                     live nodes would be declared down",
                    cluster.node_down_after_ms
                ),
            ));
        }
        Ok(())
    }

    /// The MQTT limits that would refuse every client.
    fn check_limits(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("mqtt.max_packet_size", self.mqtt.max_packet_size),
            ("mqtt.max_connections", self.mqtt.max_connections),
        ] {
            if value == 0 {
                return Err(refuse(key, "0 would refuse every client".to_owned()));
            }
        }
        Ok(())
    }

    /// No two listeners on the same address, which would fail the start at the
    /// second one, after storage was opened.
    fn check_listeners(&self) -> Result<(), ConfigError> {
        let listeners = self.listeners().map_err(|reason| {
            // Only `websocket.tls_listen` is text that may not parse.
            refuse("websocket.tls_listen", reason)
        })?;
        for (i, (key, addr)) in listeners.iter().enumerate() {
            let earlier = listeners[..i]
                .iter()
                .find(|(_, other)| overlap(*addr, *other));
            if let Some((other, other_addr)) = earlier {
                return Err(refuse(
                    key,
                    format!(
                        "{addr} takes the port of {other} ({other_addr}); every listener \
                         needs its own"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A `log.level` that tracing's filter parser accepts, as `telemetry::init`
    /// parses it. Checked even when `RUST_LOG` replaces it, so that a mistake in
    /// the file does not wait for the day `RUST_LOG` is unset.
    fn check_log_level(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map(drop)
            .map_err(|e| refuse("log.level", format!("{:?}: {e}", self.log.level)))
    }

    /// Every TCP listener this configuration opens, by key: MQTT, HTTP and
    /// cluster always, WebSocket and TLS when they are on. An unparsable
    /// `websocket.tls_listen` is an error.
    pub fn listeners(&self) -> Result<Vec<(&'static str, SocketAddr)>, String> {
        let mut listeners = vec![
            ("mqtt.listen", self.mqtt.listen),
            ("http.listen", self.http.listen),
            ("cluster.listen", self.cluster.listen),
        ];
        if self.websocket.enabled {
            listeners.push(("websocket.listen", self.websocket.listen));
        }
        if self.tls.enabled {
            listeners.push(("tls.listen", self.tls.listen));
        }
        if let Some(addr) = self.websocket.tls_listen()? {
            listeners.push(("websocket.tls_listen", addr));
        }
        Ok(listeners)
    }
}

/// Whether listeners on `a` and `b` would take the same port: the same port
/// number, not 0 (any free port), on the same address or on the wildcard
/// address of the same family.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let (x, y) = (a.ip(), b.ip());
    a.port() != 0
        && a.port() == b.port()
        && (x == y || ((x.is_unspecified() || y.is_unspecified()) && x.is_ipv4() == y.is_ipv4()))
}

/// Whether `addr` looks like "HOST:PORT" ("[::1]:7946" included), spaces around it
/// aside, as the broker trims them. The host is resolved only when it is dialled.
fn is_host_port(addr: &str) -> bool {
    addr.trim()
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests;
