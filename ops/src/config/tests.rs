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
    assert_eq!(
        config.log.level,
        "info,openraft=warn,openraft::core::raft_core=error,openraft::raft::raft_inner=off"
    );
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
    let config = from_env(&[("STARLING_DATA_DIR", "2024"), ("STARLING_LOG__LEVEL", "1")]).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("2024"));
    assert_eq!(config.log.level, "1");
}

#[test]
fn env_ignores_other_variables() {
    let config = from_env(&[("PATH", "/bin"), ("RUST_LOG", "trace"), ("STARLINGX", "1")]).unwrap();
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

#[test]
fn the_auth_section_and_its_unset_key() {
    let config: Config = toml::from_str(
        "[auth]\npassword_file = \"/etc/starling/passwd\"\nallow_anonymous = true\n",
    )
    .unwrap();
    assert_eq!(
        config.auth.password_file,
        PathBuf::from("/etc/starling/passwd")
    );
    assert_eq!(config.auth.allow_anonymous, Some(true));
    assert_eq!(Config::default().auth.allow_anonymous, None);
    // Unset, it is absent from the TOML, and the environment can still set it.
    let text = Config::default().to_toml().unwrap();
    assert!(!text.contains("allow_anonymous"), "{text}");
    let config = from_env(&[
        ("STARLING_AUTH__ALLOW_ANONYMOUS", "false"),
        ("STARLING_AUTH__PASSWORD_FILE", "/p"),
    ])
    .unwrap();
    assert_eq!(config.auth.allow_anonymous, Some(false));
    assert_eq!(config.auth.password_file, PathBuf::from("/p"));
    let round_trip: Config = toml::from_str(&config.to_toml().unwrap()).unwrap();
    assert_eq!(round_trip, config);
    assert!(from_env(&[("STARLING_AUTH__ALLOW_ANONYMOUS", "maybe")]).is_err());
    assert!(from_env(&[("STARLING_AUTH__NO_SUCH_KEY", "1")]).is_err());
}

#[test]
fn tls_without_its_files_names_the_missing_key() {
    let config = from_env(&[("STARLING_TLS__ENABLED", "true")]).unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(
        error.contains("tls.cert_file") && error.contains("STARLING_TLS__CERT_FILE"),
        "{error}"
    );
    let config = from_env(&[
        ("STARLING_WEBSOCKET__TLS_LISTEN", "127.0.0.1:8084"),
        ("STARLING_TLS__CERT_FILE", "/etc/starling/cert.pem"),
    ])
    .unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("tls.key_file"), "{error}");
    let config = from_env(&[
        ("STARLING_TLS__ENABLED", "true"),
        ("STARLING_TLS__CERT_FILE", "/etc/starling/cert.pem"),
        ("STARLING_TLS__KEY_FILE", "/etc/starling/key.pem"),
    ])
    .unwrap();
    assert!(config.validate().is_ok());
    let config = from_env(&[("STARLING_WEBSOCKET__TLS_LISTEN", "somewhere")]).unwrap();
    let error = config.validate().unwrap_err().to_string();
    assert!(error.contains("websocket.tls_listen"), "{error}");
}

/// The error `config` fails validation with, after checking that it names `key`
/// as its key and in its text.
fn refused(config: &Config, key: &str) -> String {
    let err = config.validate().unwrap_err();
    let named = match &err {
        ConfigError::Invalid { key: k, .. } | ConfigError::Setting { key: k, .. } => *k,
        other => panic!("{key}: not a key's error: {other}"),
    };
    let text = err.to_string();
    assert_eq!(named, key, "{text}");
    assert!(text.contains(key), "{text}");
    text
}

#[test]
fn limits_that_refuse_every_client_are_refused() {
    let mut config = Config::default();
    config.mqtt.max_packet_size = 0;
    let text = refused(&config, "mqtt.max_packet_size");
    assert!(text.contains("STARLING_MQTT__MAX_PACKET_SIZE"), "{text}");
    let mut config = Config::default();
    config.mqtt.max_connections = 0;
    refused(&config, "mqtt.max_connections");
}

#[test]
fn node_down_after_under_the_election_timeout_is_refused() {
    let mut config = Config::default();
    config.cluster.node_down_after_ms = 0;
    refused(&config, "cluster.node_down_after_ms");
    config.cluster.node_down_after_ms = 499;
    refused(&config, "cluster.node_down_after_ms");
    config.cluster.node_down_after_ms = 500;
    config.validate().unwrap();
}

#[test]
fn peers_and_join_together_are_refused() {
    let config = with_cluster(1, &["1=a:1", "2=b:1"], "", "b:1");
    let text = refused(&config, "cluster.join");
    assert!(
        text.contains("cluster.peers") && text.contains("--join"),
        "{text}"
    );
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let addr = |text: &str| -> SocketAddr { text.parse().unwrap() };
    let mut config = Config::default();
    config.http.listen = config.mqtt.listen;
    let text = refused(&config, "http.listen");
    assert!(
        text.contains("mqtt.listen") && text.contains("--http-listen"),
        "{text}"
    );

    let mut config = Config::default();
    config.cluster.listen = addr("0.0.0.0:1883");
    let text = refused(&config, "cluster.listen");
    assert!(
        text.contains("mqtt.listen"),
        "the wildcard takes the port too: {text}"
    );

    let mut config = Config::default();
    config.websocket.listen = config.http.listen;
    config.validate().unwrap();
    config.websocket.enabled = true;
    refused(&config, "websocket.listen");

    let mut config = from_env(&[
        ("STARLING_TLS__CERT_FILE", "/c.pem"),
        ("STARLING_TLS__KEY_FILE", "/k.pem"),
    ])
    .unwrap();
    config.tls.listen = config.cluster.listen;
    config.validate().unwrap();
    config.tls.enabled = true;
    refused(&config, "tls.listen");
    config.tls.enabled = false;
    config.websocket.tls_listen = config.mqtt.listen.to_string();
    refused(&config, "websocket.tls_listen");
}

#[test]
fn listeners_on_port_0_or_other_addresses_do_not_collide() {
    let mut config = Config::default();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.cluster.listen = "127.0.0.2:1883".parse().unwrap();
    config.validate().unwrap();
    config.cluster.listen = "[::1]:0".parse().unwrap();
    config.mqtt.listen = "[::1]:1883".parse().unwrap();
    config.http.listen = "0.0.0.0:1883".parse().unwrap();
    config.validate().unwrap();
}

#[test]
fn a_log_level_tracing_cannot_parse_is_refused() {
    let mut config = Config::default();
    config.log.level = "info,starling_broker=loud".to_owned();
    let text = refused(&config, "log.level");
    assert!(text.contains("STARLING_LOG__LEVEL"), "{text}");
    config.log.level = "warn,starling_broker=debug,openraft=off".to_owned();
    config.validate().unwrap();
}

#[test]
fn keys_with_flags_name_their_variable_and_flag() {
    for (key, env, flag) in FLAGS {
        assert_eq!(*env, example::env_var(key), "{key}");
        assert!(flag.starts_with("--"), "{key}");
    }
}

#[test]
fn the_node_id_is_the_hostname_ordinal_plus_one() {
    for (host, id) in [
        ("starling-0", 1),
        ("starling-2", 3),
        ("my-mqtt-broker-12", 13),
        ("starling-4.starling-headless.mqtt.svc.cluster.local", 5),
        ("starling-007\n", 8),
    ] {
        assert_eq!(node_id_from_hostname(host), Ok(id), "{host}");
    }
    for host in [
        "starling",
        "starling-",
        "starling-x1",
        "starling-1a",
        "",
        "-",
        "starling-18446744073709551615",
        "starling.1",
    ] {
        assert!(node_id_from_hostname(host).is_err(), "{host}");
    }
}

#[test]
fn node_id_from_hostname_replaces_the_node_id_only_when_asked() {
    let mut config = from_env(&[("STARLING_NODE_ID", "9")]).unwrap();
    config
        .resolve_node_id(|| panic!("the hostname is not read when not asked"))
        .unwrap();
    assert_eq!(config.node_id, 9);

    let mut config = from_env(&[("STARLING_NODE_ID_FROM_HOSTNAME", "true")]).unwrap();
    assert!(config.node_id_from_hostname);
    config
        .resolve_node_id(|| Ok("starling-1".to_owned()))
        .unwrap();
    assert_eq!(config.node_id, 2);

    let mut config = from_env(&[("STARLING_NODE_ID_FROM_HOSTNAME", "true")]).unwrap();
    let err = config
        .resolve_node_id(|| Ok("broker".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node_id_from_hostname") && err.contains("STARLING_NODE_ID_FROM_HOSTNAME"),
        "{err}"
    );
    assert!(err.contains("\"broker\""), "{err}");
    let err = config
        .resolve_node_id(|| Err(std::io::Error::other("no uts namespace")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read the hostname"), "{err}");
}

#[test]
fn a_node_past_the_peers_joins_through_the_first_of_them() {
    let peers = "1=s-0.h:7946,2=s-1.h:7946,3=s-2.h:7946";
    let vars = [
        ("STARLING_NODE_ID_FROM_HOSTNAME", "true"),
        ("STARLING_CLUSTER__PEERS", peers),
    ];
    // Among the peers: they stay, no join.
    let mut config = from_env(&vars).unwrap();
    config.resolve_node_id(|| Ok("s-2".to_owned())).unwrap();
    assert_eq!(config.node_id, 3);
    assert_eq!(config.cluster.peers.len(), 3);
    assert!(config.cluster.join.is_empty());
    config.validate().unwrap();
    // Past them (scaled up to 4): joins through node 1.
    let mut config = from_env(&vars).unwrap();
    config.resolve_node_id(|| Ok("s-3".to_owned())).unwrap();
    assert_eq!(config.node_id, 4);
    assert!(config.cluster.peers.is_empty());
    assert_eq!(config.cluster.join, "s-0.h:7946");
    config.validate().unwrap();
    // On the wildcard address, the others need an advertised address to reach it.
    let mut config = from_env(&vars).unwrap();
    config.cluster.listen = "0.0.0.0:7946".parse().unwrap();
    let err = config
        .resolve_node_id(|| Ok("s-3".to_owned()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cluster.advertise") && err.contains("s-0.h:7946"),
        "{err}"
    );
    config.cluster.advertise = "s-3.h:7946".to_owned();
    config.resolve_node_id(|| Ok("s-3".to_owned())).unwrap();
    assert_eq!(config.cluster.join, "s-0.h:7946");
    // A join given explicitly is kept, and the peers with it (validate refuses both).
    let mut config = from_env(&[
        ("STARLING_NODE_ID_FROM_HOSTNAME", "true"),
        ("STARLING_CLUSTER__JOIN", "seed:7946"),
    ])
    .unwrap();
    config.resolve_node_id(|| Ok("s-5".to_owned())).unwrap();
    assert_eq!(config.cluster.join, "seed:7946");
    // Without peers: a cluster of one, as before.
    let mut config = from_env(&[("STARLING_NODE_ID_FROM_HOSTNAME", "true")]).unwrap();
    config.resolve_node_id(|| Ok("s-0".to_owned())).unwrap();
    assert!(config.cluster.peers.is_empty() && config.cluster.join.is_empty());
}
