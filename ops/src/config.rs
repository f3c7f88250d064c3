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
use starling_broker::{ClusterConfig, MqttConfig};

pub use example::example;

/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "STARLING_";
/// Separates a section from its key in an environment variable's name.
const ENV_SEPARATOR: &str = "__";

/// Everything a `starling` process is configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Id of this node in the cluster; every node of a cluster needs its own.
    pub node_id: u64,
    /// Directory of the node's durable state: the Raft log, snapshots and the MQTT
    /// state they hold. Created if missing.
    pub data_dir: PathBuf,
    /// Settings of the MQTT side of a node.
    pub mqtt: MqttConfig,
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
            data_dir: PathBuf::from("./data"),
            mqtt: MqttConfig::default(),
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
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info,openraft=warn".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
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

/// `STARLING_MQTT__MAX_INFLIGHT` -> `["mqtt", "max_inflight"]`.
fn env_path(var: &str) -> Option<Vec<String>> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    let path: Vec<String> = rest
        .split(ENV_SEPARATOR)
        .map(str::to_ascii_lowercase)
        .collect();
    path.iter().all(|key| !key.is_empty()).then_some(path)
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

impl Config {
    /// Checks what serde cannot: the cluster addresses and the peer list. Run on the
    /// merged configuration, so that a mistake fails the start whatever set it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cluster = &self.cluster;
        let invalid = |key, env, flag, reason| ConfigError::Invalid {
            key,
            env,
            flag,
            reason,
        };
        let peers = |reason| {
            invalid(
                "cluster.peers",
                "STARLING_CLUSTER__PEERS",
                "--peers",
                reason,
            )
        };
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
        for (key, env, flag, value) in [
            (
                "cluster.advertise",
                "STARLING_CLUSTER__ADVERTISE",
                "--advertise",
                &cluster.advertise,
            ),
            (
                "cluster.join",
                "STARLING_CLUSTER__JOIN",
                "--join",
                &cluster.join,
            ),
        ] {
            if !value.is_empty() && !is_host_port(value) {
                return Err(invalid(
                    key,
                    env,
                    flag,
                    format!("{value:?} is not HOST:PORT"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `addr` looks like "HOST:PORT" ("[::1]:7946" included), spaces around it
/// aside, as the broker trims them. The host is resolved only when it is dialled.
fn is_host_port(addr: &str) -> bool {
    addr.trim()
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_env(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        apply_env(Config::default(), env(vars))
    }

    #[test]
    fn defaults_are_a_working_single_node() {
        let config = Config::default();
        assert_eq!(config.node_id, 1);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.mqtt.listen, "127.0.0.1:1883".parse().unwrap());
        assert_eq!(config.http.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.cluster, ClusterConfig::default());
        assert!(config.cluster.peers.is_empty() && config.cluster.join.is_empty());
        assert_eq!(config.log.level, "info,openraft=warn");
        assert_eq!(config.log.format, LogFormat::Text);
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let config: Config = toml::from_str("node_id = 7\n[mqtt]\nmax_inflight = 5\n").unwrap();
        assert_eq!(config.node_id, 7);
        assert_eq!(config.mqtt.max_inflight, 5);
        assert_eq!(
            config.mqtt.max_packet_size,
            MqttConfig::default().max_packet_size
        );
        assert_eq!(config.http, HttpConfig::default());
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<Config>("nodeid = 2").is_err());
        assert!(toml::from_str::<Config>("[mqtt]\nlisten_addr = \"0.0.0.0:1\"").is_err());
        assert!(toml::from_str::<Config>("[metrics]\nenabled = true").is_err());
    }

    #[test]
    fn env_names_map_to_key_paths() {
        assert_eq!(env_path("STARLING_NODE_ID").unwrap(), ["node_id"]);
        assert_eq!(
            env_path("STARLING_MQTT__MAX_INFLIGHT").unwrap(),
            ["mqtt", "max_inflight"]
        );
        assert_eq!(env_path("STARLING_"), None);
        assert_eq!(env_path("STARLING_MQTT__"), None);
        assert_eq!(env_path("OTHER_NODE_ID"), None);
    }

    #[test]
    fn env_overrides_top_level_and_section_keys() {
        let config = from_env(&[
            ("STARLING_NODE_ID", "2"),
            ("STARLING_DATA_DIR", "/var/lib/starling"),
            ("STARLING_MQTT__LISTEN", "0.0.0.0:1883"),
            ("STARLING_MQTT__MAX_INFLIGHT", "64"),
            ("STARLING_HTTP__LISTEN", "[::1]:9000"),
            ("STARLING_LOG__LEVEL", "debug,sled=warn"),
            ("STARLING_LOG__FORMAT", "json"),
        ])
        .unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/starling"));
        assert_eq!(config.mqtt.listen, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(config.mqtt.max_inflight, 64);
        assert_eq!(config.http.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(config.log.level, "debug,sled=warn");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn env_values_are_toml_when_they_parse() {
        assert_eq!(parse_value("64"), toml::Value::Integer(64));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("\"json\""), toml::Value::String("json".into()));
        assert_eq!(
            parse_value("0.0.0.0:1883"),
            toml::Value::String("0.0.0.0:1883".into())
        );
        assert_eq!(parse_value("json"), toml::Value::String("json".into()));
        // Only the value itself is taken, never further keys smuggled in after it.
        assert_eq!(parse_value("1\nother = 2"), toml::Value::Integer(1));
    }

    #[test]
    fn env_keeps_text_for_string_keys() {
        let config =
            from_env(&[("STARLING_DATA_DIR", "2024"), ("STARLING_LOG__LEVEL", "1")]).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("2024"));
        assert_eq!(config.log.level, "1");
    }

    #[test]
    fn env_ignores_other_variables() {
        let config =
            from_env(&[("PATH", "/bin"), ("RUST_LOG", "trace"), ("STARLINGX", "1")]).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn env_refuses_unknown_keys_and_sections() {
        for var in [
            "STARLING_MQTT_LISTEN",
            "STARLING_NODEID",
            "STARLING_MQTT__NOPE",
            "STARLING_NODE_ID__X",
            "STARLING_",
        ] {
            let err = from_env(&[(var, "1")]).unwrap_err();
            assert!(
                matches!(&err, ConfigError::UnknownEnvKey { var: v } if v == var),
                "{var}: {err}"
            );
        }
        let err = from_env(&[("STARLING_MQTT", "1")]).unwrap_err();
        assert!(matches!(err, ConfigError::EnvSection { .. }), "{err}");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = from_env(&[
            ("STARLING_NODE_ID", "3"),
            ("STARLING_MQTT__MAX_INFLIGHT", "lots"),
        ])
        .unwrap_err();
        assert!(
            matches!(&err, ConfigError::EnvValue { var, .. } if var == "STARLING_MQTT__MAX_INFLIGHT"),
            "{err}"
        );
        let err = from_env(&[("STARLING_LOG__FORMAT", "xml")]).unwrap_err();
        assert!(err.to_string().contains("STARLING_LOG__FORMAT"), "{err}");
    }

    #[test]
    fn env_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("starling.toml");
        std::fs::write(
            &path,
            "node_id = 5\ndata_dir = \"/srv/a\"\n[mqtt]\nmax_inflight = 9\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let config = load(
            Some(&path),
            env(&[
                ("STARLING_NODE_ID", "6"),
                ("STARLING_MQTT__MAX_INFLIGHT", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(config.node_id, 6);
        assert_eq!(config.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(config.mqtt.max_inflight, 10);
        assert_eq!(config.mqtt.listen, "127.0.0.1:1".parse().unwrap());
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = load(Some(&missing), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[mqtt]\nmax_inflight = \"many\"\n").unwrap();
        let err = load(Some(&bad), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }));
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }

    #[test]
    fn env_sets_the_cluster_keys() {
        let config = from_env(&[
            ("STARLING_CLUSTER__LISTEN", "0.0.0.0:7000"),
            ("STARLING_CLUSTER__ADVERTISE", "n1.example:7000"),
            ("STARLING_CLUSTER__JOIN", "n2.example:7000"),
            ("STARLING_CLUSTER__NODE_DOWN_AFTER_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(config.cluster.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(config.cluster.advertise, "n1.example:7000");
        assert_eq!(config.cluster.join, "n2.example:7000");
        assert_eq!(config.cluster.node_down_after_ms, 1500);
    }

    #[test]
    fn env_lists_are_comma_separated_or_toml() {
        let config = from_env(&[("STARLING_CLUSTER__PEERS", "1=a:1, 2=b:2,3=[::1]:3")]).unwrap();
        assert_eq!(config.cluster.peers, ["1=a:1", "2=b:2", "3=[::1]:3"]);
        let config = from_env(&[("STARLING_CLUSTER__PEERS", "1=a:1")]).unwrap();
        assert_eq!(config.cluster.peers, ["1=a:1"]);
        let config = from_env(&[("STARLING_CLUSTER__PEERS", r#"["1=a:1", "2=b,c:2"]"#)]).unwrap();
        assert_eq!(config.cluster.peers, ["1=a:1", "2=b,c:2"]);
        // An empty variable clears a list the file set.
        let mut base = Config::default();
        base.cluster.peers = vec!["1=a:1".into()];
        let config = apply_env(base, env(&[("STARLING_CLUSTER__PEERS", "")])).unwrap();
        assert!(config.cluster.peers.is_empty());
    }

    #[test]
    fn list_splitting() {
        let strings = |list: toml::Value| -> Vec<String> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(strings(split_list("a, b,,c ,")), ["a", "b", "c"]);
        assert!(strings(split_list("")).is_empty());
        assert!(strings(split_list(" , ")).is_empty());
    }

    fn with_cluster(node_id: u64, peers: &[&str], advertise: &str, join: &str) -> Config {
        Config {
            node_id,
            cluster: ClusterConfig {
                peers: peers.iter().map(|p| p.to_string()).collect(),
                advertise: advertise.to_owned(),
                join: join.to_owned(),
                ..ClusterConfig::default()
            },
            ..Config::default()
        }
    }

    #[test]
    fn valid_cluster_settings_pass() {
        Config::default().validate().unwrap();
        with_cluster(
            2,
            &["1=a:7946", "2=[::1]:7946", "3=10.0.0.3:7946"],
            "b:1",
            "",
        )
        .validate()
        .unwrap();
        with_cluster(4, &[], "10.0.0.4:7946", " a:7946 ")
            .validate()
            .unwrap();
    }

    #[test]
    fn invalid_cluster_settings_are_named() {
        for (config, key, needle) in [
            (
                with_cluster(1, &["1=a:1", "b:2"], "", ""),
                "cluster.peers",
                "\"b:2\"",
            ),
            (
                with_cluster(1, &["x=a:1"], "", ""),
                "cluster.peers",
                "x=a:1",
            ),
            (
                with_cluster(1, &["1=a:1", "1=b:1"], "", ""),
                "cluster.peers",
                "same id",
            ),
            (with_cluster(1, &["1=a"], "", ""), "cluster.peers", "\"a\""),
            (
                with_cluster(1, &["1=a:99999"], "", ""),
                "cluster.peers",
                "a:99999",
            ),
            (
                with_cluster(3, &["1=a:1", "2=b:1"], "", ""),
                "cluster.peers",
                "node_id 3",
            ),
            (with_cluster(1, &[], "a", ""), "cluster.advertise", "\"a\""),
            (
                with_cluster(1, &[], "", ":7946"),
                "cluster.join",
                "\":7946\"",
            ),
        ] {
            let err = config.validate().unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(&err, ConfigError::Invalid { key: k, .. } if *k == key),
                "{text}"
            );
            assert!(text.contains(needle), "{text}");
        }
        let text = with_cluster(1, &["nope"], "", "")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(text.contains("--peers"), "{text}");
        assert!(text.contains("STARLING_CLUSTER__PEERS"), "{text}");
    }

    #[test]
    fn to_toml_round_trips() {
        let mut config = Config {
            node_id: 3,
            ..Config::default()
        };
        config.log.format = LogFormat::Json;
        config.cluster.peers = vec!["1=a:1".into(), "3=b:1".into()];
        let text = config.to_toml().unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
    }
}
