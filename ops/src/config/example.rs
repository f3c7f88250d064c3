//! `starling config --example`: a commented config file holding every key at its
//! default value.
//!
//! The values come from `Config::default()`, so they cannot drift. Doc comments are
//! not available at run time, so the comments are kept in `DOCS`; the unit tests check
//! that it holds exactly the keys of the config and the same text as the doc comments
//! of the structs (ours and the broker's `MqttConfig` and `ClusterConfig`), and that the example parses
//! back into the defaults.

use std::fmt::Write as _;

use super::{Config, ENV_PREFIX, ENV_SEPARATOR, UNSET_BY_DEFAULT};

/// Every key and section of the config file, in the order the example shows them, with
/// the doc comment of its field. Top-level keys come before the first section.
const DOCS: &[(&str, &str)] = &[
    (
        "node_id",
        "Id of this node in the cluster; every node of a cluster needs its own.",
    ),
    (
        "node_id_from_hostname",
        "Take the node id from this machine's hostname instead of `node_id`: the\n\
         number after the hostname's last '-', plus one, so that the pods\n\
         \"starling-0\", \"starling-1\", ... of a Kubernetes StatefulSet are the nodes\n\
         1, 2, ... A hostname without such a number fails the start. A node whose\n\
         id is then not in `cluster.peers` (a StatefulSet scaled up past them)\n\
         joins the running cluster through the first of them instead.",
    ),
    (
        "data_dir",
        "Directory of the node's durable state: the Raft log, snapshots and the MQTT\n\
         state they hold. Created if missing.",
    ),
    ("mqtt", "Settings of the MQTT side of a node."),
    ("mqtt.listen", "Address of the MQTT-over-TCP listener."),
    (
        "mqtt.max_packet_size",
        "Largest packet accepted from a client, in bytes (fixed header included).\n\
         Bigger packets close the connection before their body is read.",
    ),
    (
        "mqtt.max_inflight",
        "QoS 1/2 messages sent to one client and not yet acknowledged, at most. A\n\
         window this wide keeps a subscriber from waiting on round trips; the\n\
         messages in it are sent again (DUP) when a persistent session resumes.",
    ),
    (
        "mqtt.max_queued_messages",
        "QoS 1/2 messages kept for one persistent session; further ones are dropped\n\
         and counted.",
    ),
    (
        "mqtt.max_queued_bytes",
        "Payload bytes kept for one persistent session, at most; further messages\n\
         are dropped and counted.",
    ),
    (
        "mqtt.max_connections",
        "Connections this node accepts at once; more wait in the accept queue.",
    ),
    (
        "mqtt.mailbox_capacity",
        "Messages waiting in one connection's mailbox; past that, QoS 0 messages to\n\
         it are dropped and counted.",
    ),
    (
        "mqtt.mailbox_capacity_bytes",
        "Payload bytes waiting in one connection's mailbox; past that, as past\n\
         `mailbox_capacity`.",
    ),
    (
        "mqtt.slow_subscriber_timeout",
        "Seconds a subscriber may keep its mailbox over capacity, or leave one\n\
         write to its socket unfinished, before it is disconnected (counted as\n\
         `slow_subscriber`). Publishers are held back for at most this long by it.",
    ),
    (
        "mqtt.max_keepalive",
        "The longest keepalive a client gets, in seconds: an MQTT 5 client asking\n\
         more (or 0, none) is told this one as Server Keep Alive in CONNACK; a\n\
         3.1.1 client asking more is held to it too. 65535: no limit.",
    ),
    (
        "mqtt.receive_maximum",
        "MQTT 5 Receive Maximum: QoS 1/2 messages one client may send us\n\
         without an answer; one more is a DISCONNECT 0x93.",
    ),
    (
        "mqtt.topic_alias_maximum",
        "MQTT 5 Topic Alias Maximum: the aliases one client may set for topics\n\
         it publishes to (0: none).",
    ),
    (
        "mqtt.max_qos",
        "The highest QoS clients may publish and are granted (0, 1 or 2); a\n\
         PUBLISH above it closes the connection (MQTT 5: DISCONNECT 0x9B).",
    ),
    (
        "mqtt.retain_available",
        "Whether retained messages are kept. Off, a retained PUBLISH closes the\n\
         connection (MQTT 5: DISCONNECT 0x9A).",
    ),
    (
        "mqtt.shared_subscriptions",
        "Whether `$share/{group}/{filter}` subscriptions are accepted. Off, they\n\
         get SUBACK 0x9E.",
    ),
    (
        "mqtt.persistent_session_expiry",
        "Seconds an MQTT 3.1 / 3.1.1 persistent session (Clean Session 0)\n\
         outlives its connection; 0: it never expires (the session then lasts\n\
         until the client cleans it). MQTT 5 clients say their own Session\n\
         Expiry Interval.",
    ),
    (
        "mqtt.shared_subscription_strategy",
        "How this node chooses the member of a shared subscription's group that\n\
         gets a message it routes: \"round_robin\", \"random\" or \"sticky\". (A\n\
         message committed through Raft, such as one for persistent sessions,\n\
         goes to the member every node computes alike, in turn.)",
    ),
    (
        "mqtt.scram_users",
        "Users for MQTT 5 enhanced authentication with SCRAM-SHA-256, as\n\
         \"user:password\" entries. A stand-in until users come from a password\n\
         file; empty: the method is not offered.",
    ),
    (
        "mqtt.connect_timeout",
        "Seconds a new connection has to send CONNECT (after its TLS or\n\
         WebSocket handshake, within the same time); then it is closed.",
    ),
    (
        "mqtt.max_connection_rate_per_ip",
        "New connections per second accepted from one address; more are\n\
         closed at once and counted (`rate_per_ip`). 0: no limit.",
    ),
    (
        "mqtt.max_client_id_len",
        "The longest client identifier accepted, in bytes (CONNACK 0x85,\n\
         3.1.1: 2).",
    ),
    (
        "mqtt.max_topic_len",
        "The longest topic name or filter accepted, in bytes (MQTT 5: PUBACK\n\
         0x90 or SUBACK 0x8F; 3.1.1: the PUBLISH is dropped, SUBACK 0x80).",
    ),
    (
        "mqtt.max_topic_levels",
        "The most levels a topic or filter may have. 0: no limit.",
    ),
    (
        "mqtt.max_subscriptions",
        "The most subscriptions one client holds (SUBACK 0x97, 3.1.1: 0x80).\n\
         0: no limit.",
    ),
    (
        "mqtt.max_publish_rate",
        "PUBLISH packets one client may send per second, on average over a\n\
         second's burst; more closes the connection (MQTT 5: DISCONNECT\n\
         0x96). 0: no limit.",
    ),
    (
        "mqtt.max_retained_messages",
        "Retained messages the cluster keeps, at most: a retained PUBLISH\n\
         that would store one more is refused (MQTT 5: PUBACK or PUBREC 0x97;\n\
         3.1.1: dropped and acknowledged) and counted (`retained_full`).\n\
         Replacing or clearing one is always accepted. 0: no limit.",
    ),
    (
        "mqtt.max_retained_bytes",
        "Bytes of retained messages (topics and payloads) the cluster keeps,\n\
         at most; past that, as past `max_retained_messages`. 0: no limit.",
    ),
    (
        "mqtt.drain_will_grace",
        "Seconds a client of a draining node (SIGTERM, or the admin API's\n\
         drain) has to connect again, to any node, before its will is\n\
         published; for an MQTT 5 client, the longer of this and its Will\n\
         Delay. Its session is kept that long too.",
    ),
    (
        "mqtt.drain_timeout",
        "Seconds a draining node waits for its clients to go before it stops\n\
         anyway.",
    ),
    (
        "mqtt.sys_interval",
        "Seconds between two publications of this node's `$SYS/broker/...`\n\
         topics to the clients connected to it. 0: none are published.",
    ),
    ("websocket", "MQTT over WebSocket: off unless enabled."),
    (
        "websocket.enabled",
        "Whether the node also serves MQTT over WebSocket (subprotocol \"mqtt\",\n\
         binary frames), for browsers and clients behind HTTP proxies.",
    ),
    (
        "websocket.listen",
        "Address of the MQTT-over-WebSocket listener.",
    ),
    (
        "websocket.path",
        "The HTTP path MQTT is served on; other paths are refused (404).",
    ),
    (
        "websocket.tls_listen",
        "Address of the secure WebSocket (wss) listener, with the certificates\n\
         of `[tls]` and the path and subprotocol rules above; on whatever\n\
         `enabled` says. Empty: none.",
    ),
    (
        "tls",
        "MQTT over TLS, and the certificates of the secure WebSocket listener:\n\
         off unless enabled.",
    ),
    (
        "tls.enabled",
        "Whether the node also serves MQTT over TLS (1.2 or 1.3).",
    ),
    ("tls.listen", "Address of the MQTT-over-TLS listener."),
    (
        "tls.cert_file",
        "The server's certificate chain (PEM), its own certificate first. The\n\
         files are read again on SIGHUP and when they change: new connections\n\
         get the new certificate, open ones keep theirs.",
    ),
    (
        "tls.key_file",
        "The certificate's private key (PEM: PKCS#8, RSA or SEC1).",
    ),
    (
        "tls.ca_file",
        "CA certificates (PEM) that client certificates must chain to. Empty:\n\
         clients are not asked for a certificate; else one they present is\n\
         checked.",
    ),
    (
        "tls.require_client_certificate",
        "Whether a client must present a certificate that chains to `ca_file`;\n\
         without one its TLS handshake fails.",
    ),
    (
        "tls.use_identity_as_username",
        "Whether the common name (CN) of the client certificate's subject\n\
         becomes the session's username, in place of the one in CONNECT (as\n\
         Mosquitto's option of that name). Needs `require_client_certificate`.",
    ),
    (
        "tls.use_subject_alt_name_as_username",
        "As `use_identity_as_username`, with the first DNS name or email\n\
         address among the certificate's subject alternative names.",
    ),
    (
        "auth",
        "Who may connect: users of a password file, anonymous clients.",
    ),
    (
        "auth.password_file",
        "A Mosquitto password file (\"user:hash\" lines, as `mosquitto_passwd` and\n\
         `starling passwd` write them): a client that gives a username must give\n\
         its password. Read at start and again on SIGHUP. Empty: none.",
    ),
    (
        "auth.allow_anonymous",
        "Whether clients may connect without authenticating: with no username\n\
         (or with one but no password file to check it against) and no MQTT 5\n\
         enhanced authentication. Unset: true when neither a password file nor\n\
         client certificates are configured, false otherwise, as in Mosquitto 2.",
    ),
    (
        "auth.acl_file",
        "A Mosquitto ACL file: which topics each client may publish and\n\
         subscribe to. Empty: none.",
    ),
    (
        "cluster",
        "Settings of the cluster side of a node: how it reaches the other nodes, and\n\
         which cluster it forms or joins.",
    ),
    (
        "cluster.listen",
        "Address of the cluster gRPC listener: Raft and publish forwarding.",
    ),
    (
        "cluster.advertise",
        "The address other nodes dial to reach this one (host:port). Empty: the\n\
         listen address.",
    ),
    (
        "cluster.peers",
        "The members of a new cluster as \"ID=HOST:PORT\" entries, the same list on\n\
         every node, this one included. Empty: a cluster of this node alone.",
    ),
    (
        "cluster.join",
        "The cluster address of a member of a running cluster to join. Empty: none.",
    ),
    (
        "cluster.node_down_after_ms",
        "How long a node may stay silent before it is declared down, in\n\
         milliseconds: its clients' wills are then published by the others.",
    ),
    (
        "cluster.max_log_bytes",
        "Bytes the Raft log may hold on disk, about: a snapshot is built once half\n\
         of this came after the last one, and the log behind a snapshot is purged\n\
         down to a quarter of this (kept for followers a little behind). Bounds\n\
         disk use and restart time whatever the payloads.",
    ),
    ("cluster.tls", "Mutual TLS between the nodes."),
    (
        "cluster.tls.cert_file",
        "This node's certificate chain (PEM). Empty: the cluster port speaks\n\
         plaintext, for one machine only.",
    ),
    ("cluster.tls.key_file", "This node's private key (PEM)."),
    (
        "cluster.tls.ca_file",
        "The cluster's own CA (PEM): only nodes with a certificate it signed\n\
         may join, replicate, propose or forward.",
    ),
    (
        "cluster.tls.server_name",
        "The DNS name every node's certificate carries, checked whatever\n\
         address a node is dialed at. Empty: \"starling-cluster\".",
    ),
    ("http", "The HTTP server for health checks and metrics."),
    (
        "http.listen",
        "Address of the HTTP server: `/healthz`, `/readyz` and `/metrics`.",
    ),
    (
        "http.token",
        "The bearer token the admin API (`/api/...`) asks for. Empty: none, and\n\
         the admin API then answers loopback addresses only.",
    ),
    (
        "http.token_file",
        "A file holding the token (its first line), instead of `token`.",
    ),
    ("log", "What is logged, and how."),
    (
        "log.level",
        "Which events are logged, as a `RUST_LOG`-style filter such as \"info\" or\n\
         \"info,starling_broker=debug\". `RUST_LOG`, when set, replaces it.",
    ),
    (
        "log.format",
        "\"text\" for people, or \"json\" (one object per line) for log collectors.",
    ),
];

const HEADER: &str = "\
# Starling configuration (TOML).
#
# Every key is optional: the values below are the defaults, and a node started
# without any config file runs with them. Precedence, lowest first: defaults, this
# file, environment variables, command-line flags. Every key can be set from the
# environment as STARLING_<KEY> or STARLING_<SECTION>__<KEY>, as noted beside it.
";

/// A commented config file with every key at its default value.
pub fn example() -> Result<String, super::ConfigError> {
    let defaults = toml::Value::try_from(Config::default())?;
    let mut out = String::from(HEADER);
    let mut after_section = false;
    for (path, doc) in DOCS {
        // A key without a default is shown commented out; any other path that is
        // not in the config is left out, and the tests make sure there is none.
        let Some(value) = path
            .split('.')
            .try_fold(&defaults, |node, key| node.get(key))
        else {
            if UNSET_BY_DEFAULT.contains(path) {
                if !after_section {
                    out.push('\n');
                }
                after_section = false;
                for line in doc.lines() {
                    let _ = writeln!(out, "# {line}");
                }
                let key = path.rsplit('.').next().unwrap_or(path);
                let _ = writeln!(out, "# (environment: {}; unset by default)", env_var(path));
                let _ = writeln!(out, "# {key} = false");
            }
            continue;
        };
        // A blank line between keys, but none between a section and its first key.
        if !after_section {
            out.push('\n');
        }
        after_section = value.is_table();
        for line in doc.lines() {
            let _ = writeln!(out, "# {line}");
        }
        if value.is_table() {
            let _ = writeln!(out, "[{path}]");
        } else {
            let key = path.rsplit('.').next().unwrap_or(path);
            // Lists can be given as comma-separated text; see `config::apply_env`.
            let list = if value.is_array() {
                ", comma-separated"
            } else {
                ""
            };
            let _ = writeln!(out, "# (environment: {}{list})", env_var(path));
            let _ = writeln!(out, "{key} = {value}");
        }
    }
    Ok(out)
}

/// Every config key with its environment variable and the first line of what
/// it means, for `starling --help`.
pub fn keys_help() -> String {
    let defaults = toml::Value::try_from(Config::default()).unwrap_or(toml::Value::Integer(0));
    let is_section = |path: &str| {
        path.split('.')
            .try_fold(&defaults, |node, key| node.get(key))
            .is_some_and(toml::Value::is_table)
    };
    let mut out = String::from(
        "Config keys: in the config file (see `starling config --example` for what each \
         means and its default), as an environment variable, or as --set KEY=VALUE:\n",
    );
    for (path, doc) in DOCS.iter().filter(|(path, _)| !is_section(path)) {
        let text = doc.split_whitespace().collect::<Vec<_>>().join(" ");
        // Up to the end of the first sentence or clause.
        let end = [". ", ": ", "; "]
            .iter()
            .filter_map(|stop| text.find(stop))
            .min()
            .unwrap_or(text.len());
        let first = text[..end].trim_end_matches('.');
        let _ = writeln!(out, "  {path}  ({})\n      {first}", env_var(path));
    }
    out
}

/// `mqtt.max_inflight` -> `STARLING_MQTT__MAX_INFLIGHT`.
pub(super) fn env_var(path: &str) -> String {
    let keys: Vec<String> = path.split('.').map(str::to_ascii_uppercase).collect();
    format!("{ENV_PREFIX}{}", keys.join(ENV_SEPARATOR))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn the_example_parses_back_into_the_defaults() {
        let text = example().unwrap();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn the_example_sets_every_key_explicitly() {
        let example: toml::Value = toml::from_str(&example().unwrap()).unwrap();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        assert_eq!(example, defaults);
    }

    /// Dotted paths of every key and section of the default config.
    fn paths(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(table) = value.as_table() {
            for (key, inner) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                paths(inner, &path, out);
            }
        }
    }

    #[test]
    fn docs_cover_exactly_the_config_keys() {
        let mut expected = Vec::new();
        paths(
            &toml::Value::try_from(Config::default()).unwrap(),
            "",
            &mut expected,
        );
        expected.extend(UNSET_BY_DEFAULT.iter().map(|key| key.to_string()));
        expected.sort();
        let mut documented: Vec<String> = DOCS.iter().map(|(p, _)| p.to_string()).collect();
        documented.sort();
        assert_eq!(documented, expected);
    }

    #[test]
    fn docs_list_top_level_keys_before_sections() {
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let first_section = DOCS
            .iter()
            .position(|(path, _)| defaults.get(path).is_some_and(toml::Value::is_table))
            .unwrap();
        assert!(DOCS[first_section..]
            .iter()
            .all(|(path, _)| path.contains('.') || defaults[path].is_table()));
    }

    /// Field name -> doc comment, for each struct in a Rust source file. Enough for
    /// plain config structs: `///` lines directly above `pub name: Type,`.
    fn doc_comments(source: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut structs: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut current = None;
        let mut doc: Vec<&str> = Vec::new();
        for line in source.lines().map(str::trim) {
            if let Some(text) = line.strip_prefix("///") {
                doc.push(text.strip_prefix(' ').unwrap_or(text));
                continue;
            }
            if line.starts_with("#[") {
                continue;
            }
            if let Some(rest) = line.strip_prefix("pub struct ") {
                let name = rest.split([' ', '{', '<']).next().unwrap_or_default();
                current = Some(name.to_owned());
            } else if line == "}" {
                current = None;
            } else if let (Some(name), Some(field)) = (&current, line.strip_prefix("pub ")) {
                if let Some((field, _)) = field.split_once(':') {
                    structs
                        .entry(name.clone())
                        .or_default()
                        .insert(field.to_owned(), doc.join("\n"));
                }
            }
            doc.clear();
        }
        structs
    }

    #[test]
    fn docs_match_the_doc_comments_of_the_structs() {
        let mut source = doc_comments(include_str!("../config.rs"));
        source.extend(doc_comments(include_str!("../../../broker/src/config.rs")));
        source.extend(doc_comments(include_str!(
            "../../../broker/src/auth/config.rs"
        )));
        let mut expected = BTreeMap::new();
        for (name, section) in [
            ("Config", ""),
            ("MqttConfig", "mqtt."),
            ("WebSocketConfig", "websocket."),
            ("TlsConfig", "tls."),
            ("AuthConfig", "auth."),
            ("ClusterConfig", "cluster."),
            ("ClusterTlsConfig", "cluster.tls."),
            ("HttpConfig", "http."),
            ("LogConfig", "log."),
        ] {
            let fields = source
                .remove(name)
                .unwrap_or_else(|| panic!("struct {name} not found"));
            for (field, doc) in fields {
                expected.insert(format!("{section}{field}"), doc);
            }
        }
        let documented: BTreeMap<String, String> = DOCS
            .iter()
            .map(|(path, doc)| (path.to_string(), doc.to_string()))
            .collect();
        assert_eq!(documented, expected);
    }

    #[test]
    fn keys_without_a_default_are_shown_commented_out() {
        let text = example().unwrap();
        let shown = "# (environment: STARLING_AUTH__ALLOW_ANONYMOUS; unset by default)\n\
                     # allow_anonymous = false\n\n# A Mosquitto ACL file";
        assert!(text.contains(shown), "{text}");
    }

    #[test]
    fn the_example_says_how_to_set_lists_from_the_environment() {
        let text = example().unwrap();
        assert!(
            text.contains("# (environment: STARLING_CLUSTER__PEERS, comma-separated)\npeers = []"),
            "{text}"
        );
        assert!(
            text.contains("\npeers = []\n\n# The cluster address"),
            "{text}"
        );
        assert!(text.contains("# (environment: STARLING_CLUSTER__JOIN)\njoin = \"\""));
    }

    #[test]
    fn help_lists_every_key_with_its_variable() {
        let help = keys_help();
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let mut expected = Vec::new();
        paths(&defaults, "", &mut expected);
        expected.extend(UNSET_BY_DEFAULT.iter().map(|key| key.to_string()));
        for path in expected.iter().filter(|p| {
            !p.split('.')
                .try_fold(&defaults, |node, key| node.get(key))
                .is_some_and(toml::Value::is_table)
        }) {
            let line = format!("  {path}  ({})", env_var(path));
            assert!(help.contains(&line), "{line} missing from\n{help}");
        }
        assert!(help.contains("  mqtt.max_retained_messages  (STARLING_MQTT__MAX_RETAINED_MESSAGES)\n      Retained messages the cluster keeps, at most\n"), "{help}");
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var("node_id"), "STARLING_NODE_ID");
        assert_eq!(env_var("mqtt.max_inflight"), "STARLING_MQTT__MAX_INFLIGHT");
    }
}
