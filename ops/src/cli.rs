//! The command line: flags for the common settings, which override the config file and
//! the environment, and the `config`, `passwd` and `probe` subcommands.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use starling_broker::auth::{PasswordFile, PasswordFileError};

use crate::config::{self, Config, ConfigError, LogFormat};

/// A clustered MQTT broker.
///
/// Settings come from the defaults, then the config file, then STARLING_* environment
/// variables, then these flags; each overrides the ones before it.
#[derive(Debug, Parser)]
#[command(name = "starling", version)]
pub struct Cli {
    /// Config file (TOML); see `starling config --example`.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the configuration this node would run with, as TOML.
    Config {
        /// Print a commented example file instead: every key, what it means, and its
        /// default.
        #[arg(long, conflicts_with = "check")]
        example: bool,
        /// Check the configuration as a start would (config file, environment,
        /// --set and flags), without starting anything or touching the data
        /// directory: print "configuration OK" and exit 0, or print what is wrong
        /// and exit 1.
        #[arg(long)]
        check: bool,
    },
    /// Add a user to a password file (`auth.password_file`), or change its password,
    /// as `mosquitto_passwd` does: the file is created if missing (readable by its owner
    /// only), and its other lines are kept.
    ///
    /// The password is asked twice on the terminal, without echo. When standard input is
    /// not a terminal, its first line is the password, for scripts: `printf '%s\n'
    /// "$PASSWORD" | starling passwd FILE USER`. With -b it is the third argument, as
    /// with `mosquitto_passwd -b` (and as visible to other local users). A running broker
    /// reads the file again on SIGHUP.
    Passwd(PasswdArgs),
    /// Talk to a running node's admin API: members, clients, sessions,
    /// retained messages, publishing, reloading the auth files.
    Ctl(crate::ctl::CtlArgs),
    /// GET a URL once and exit 0 if the answer is 2xx, 1 otherwise (also when no
    /// answer comes within the timeout): a health check that needs no curl, as in
    /// the container image's HEALTHCHECK: `starling probe
    /// http://127.0.0.1:8080/healthz`.
    Probe(crate::probe::ProbeArgs),
}

/// The arguments of `starling passwd`.
#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Batch mode: the password is the third argument
    #[arg(short = 'b', requires = "password")]
    pub batch: bool,
    /// The password file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The user to add or update
    #[arg(value_name = "USER")]
    pub user: String,
    /// The password, in batch mode (-b)
    #[arg(value_name = "PASSWORD", requires = "batch")]
    pub password: Option<String>,
}

/// Flags that override single config keys.
#[derive(Debug, Default, Args)]
pub struct Overrides {
    /// Sets any config key, as KEY=VALUE with the key as the config file
    /// spells it (mqtt.max_inflight=64); repeatable. Applied over the
    /// environment, under the flags below. `--help` lists every key.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub settings: Vec<String>,
    /// Directory of the node's durable state [config: data_dir; default: ./data]
    #[arg(long, value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// MQTT-over-TCP listener [config: mqtt.listen; default: 127.0.0.1:1883]
    #[arg(long, value_name = "ADDR", global = true)]
    pub mqtt_listen: Option<SocketAddr>,
    /// HTTP listener for /healthz, /readyz, /metrics [config: http.listen; default:
    /// 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR", global = true)]
    pub http_listen: Option<SocketAddr>,
    /// Id of this node in the cluster [config: node_id; default: 1]
    #[arg(long, value_name = "N", global = true)]
    pub node_id: Option<u64>,
    /// Log output format [config: log.format; default: text]
    #[arg(long, value_name = "FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// Cluster listener: Raft and publish forwarding [config: cluster.listen; default:
    /// 127.0.0.1:7946]
    #[arg(long, value_name = "ADDR", global = true)]
    pub cluster_listen: Option<SocketAddr>,
    /// Address other nodes dial to reach this one [config: cluster.advertise; default:
    /// the cluster listener's]
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub advertise: Option<String>,
    /// Members of a new cluster, the same list on every node, this one included
    /// [config: cluster.peers; default: none, a cluster of this node alone]
    #[arg(
        long,
        value_name = "ID=HOST:PORT,...",
        value_delimiter = ',',
        global = true
    )]
    pub peers: Option<Vec<String>>,
    /// Cluster address of a member of a running cluster to join [config: cluster.join;
    /// default: none]
    #[arg(long, value_name = "HOST:PORT", global = true)]
    pub join: Option<String>,
}

impl Cli {
    /// Parses the command line; `--help` ends with every config key.
    pub fn parse_args() -> Cli {
        use clap::{CommandFactory as _, FromArgMatches as _};
        let command = Cli::command().after_long_help(config::keys_help());
        let matches = command.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }

    /// The configuration to run with: defaults, overridden by the config file, then by
    /// the `STARLING_*` variables in `env`, then by the flags; with
    /// `node_id_from_hostname`, the node id is then taken from the hostname; checked
    /// as a whole.
    // `ConfigError` is large (it carries a TOML error), and lives in the library
    // since the fuzz targets need it: only then does clippy look at its size here.
    // Read once per start; not worth a box.
    #[allow(clippy::result_large_err)]
    pub fn resolve_config<I>(&self, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let config = config::load(self.config.as_deref(), env)?;
        let mut config = config::apply_settings(config, &self.overrides.settings)?;
        self.overrides.apply(&mut config);
        config.resolve_node_id(config::hostname)?;
        config.validate()?;
        Ok(config)
    }
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(addr) = self.mqtt_listen {
            config.mqtt.listen = addr;
        }
        if let Some(addr) = self.http_listen {
            config.http.listen = addr;
        }
        if let Some(id) = self.node_id {
            config.node_id = id;
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(addr) = self.cluster_listen {
            config.cluster.listen = addr;
        }
        if let Some(addr) = &self.advertise {
            config.cluster.advertise = addr.clone();
        }
        if let Some(peers) = &self.peers {
            // As for the environment: entries trimmed, empty ones dropped, so that
            // `--peers ""` clears the list.
            config.cluster.peers = peers
                .iter()
                .map(|peer| peer.trim())
                .filter(|peer| !peer.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(addr) = &self.join {
            config.cluster.join = addr.clone();
        }
    }
}

/// `starling passwd`: sets the password of the user in the file.
pub fn passwd(args: &PasswdArgs) -> anyhow::Result<()> {
    let mut file = match PasswordFile::load(&args.file) {
        Ok(file) => file,
        Err(PasswordFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            PasswordFile::new()
        }
        Err(e) => return Err(e.into()),
    };
    let password = match &args.password {
        Some(password) => password.clone(),
        None => read_password()?,
    };
    anyhow::ensure!(!password.is_empty(), "the password is empty");
    file.set(&args.user, password.as_bytes())?;
    file.save(&args.file)?;
    Ok(())
}

/// The password, asked twice on the terminal without echo, or else the first line of
/// standard input.
fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let password =
            rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let again =
            rpassword::prompt_password("Reenter password: ").context("cannot read the password")?;
        anyhow::ensure!(password == again, "the passwords do not match");
        return Ok(password);
    }
    let mut line = String::new();
    let read = std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    anyhow::ensure!(read > 0, "no password on standard input");
    let line = line.strip_suffix('\n').unwrap_or(&line);
    Ok(line.strip_suffix('\r').unwrap_or(line).to_owned())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("starling").chain(args.iter().copied())).unwrap()
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_arguments_give_the_defaults() {
        let cli = parse(&[]);
        assert!(cli.command.is_none());
        assert_eq!(cli.resolve_config(env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn flags_set_their_keys() {
        let cli = parse(&[
            "--data-dir",
            "/tmp/n2",
            "--mqtt-listen",
            "0.0.0.0:1884",
            "--http-listen",
            "127.0.0.1:0",
            "--node-id",
            "2",
            "--log-format",
            "json",
        ]);
        let config = cli.resolve_config(env(&[])).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/tmp/n2"));
        assert_eq!(config.mqtt.listen, "0.0.0.0:1884".parse().unwrap());
        assert_eq!(config.http.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.node_id, 2);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn cluster_flags_set_their_keys() {
        let cli = parse(&[
            "--node-id",
            "2",
            "--cluster-listen",
            "0.0.0.0:7000",
            "--advertise",
            "n2.example:7000",
            "--peers",
            "1=n1.example:7000, 2=n2.example:7000,3=[::1]:7000",
        ]);
        let config = cli.resolve_config(env(&[])).unwrap();
        assert_eq!(config.cluster.listen, "0.0.0.0:7000".parse().unwrap());
        assert_eq!(config.cluster.advertise, "n2.example:7000");
        assert_eq!(
            config.cluster.peers,
            ["1=n1.example:7000", "2=n2.example:7000", "3=[::1]:7000"]
        );
        // `--join` on its own: with `--peers` the configuration is refused.
        let cli = parse(&["--node-id", "2", "--join", "n1.example:7000"]);
        let config = cli.resolve_config(env(&[])).unwrap();
        assert_eq!(config.cluster.join, "n1.example:7000");
    }

    #[test]
    fn set_overrides_any_key_over_the_environment_and_under_flags() {
        let cli = parse(&[
            "--set",
            "mqtt.max_retained_messages=7",
            "--set",
            "auth.allow_anonymous=true",
            "--set",
            "node_id=9",
            "--node-id",
            "3",
        ]);
        let config = cli
            .resolve_config(env(&[("STARLING_MQTT__MAX_RETAINED_MESSAGES", "5")]))
            .unwrap();
        assert_eq!(config.mqtt.max_retained_messages, 7);
        assert_eq!(config.auth.allow_anonymous, Some(true));
        assert_eq!(config.node_id, 3, "a flag wins over --set");

        let error = parse(&["--set", "mqtt.max_inflight"])
            .resolve_config(env(&[]))
            .unwrap_err();
        assert!(matches!(error, ConfigError::BadSetting { .. }), "{error}");
        let error = parse(&["--set", "mqtt.no_such_key=1"])
            .resolve_config(env(&[]))
            .unwrap_err();
        assert!(error.to_string().contains("MQTT__NO_SUCH_KEY"), "{error}");
    }

    #[test]
    fn long_help_lists_the_config_keys() {
        let mut command = Cli::command().after_long_help(config::keys_help());
        let help = command.render_long_help().to_string();
        assert!(help.contains("--set <KEY=VALUE>"), "{help}");
        assert!(
            help.contains("  auth.password_file  (STARLING_AUTH__PASSWORD_FILE)"),
            "{help}"
        );
        assert!(
            help.contains("  http.token_file  (STARLING_HTTP__TOKEN_FILE)"),
            "{help}"
        );
    }

    #[test]
    fn peers_flag_can_repeat_and_clear() {
        let cli = parse(&["--peers", "1=a:1", "--peers", "2=b:2,3=c:3"]);
        let config = cli.resolve_config(env(&[])).unwrap();
        assert_eq!(config.cluster.peers, ["1=a:1", "2=b:2", "3=c:3"]);

        let cli = parse(&["--peers", ""]);
        let config = cli
            .resolve_config(env(&[("STARLING_CLUSTER__PEERS", "1=a:1,2=b:2")]))
            .unwrap();
        assert!(config.cluster.peers.is_empty());
    }

    #[test]
    fn invalid_cluster_settings_fail_whatever_set_them() {
        let cli = parse(&["--peers", "1=a:1,two=b:2"]);
        let err = cli.resolve_config(env(&[])).unwrap_err().to_string();
        assert!(
            err.contains("cluster.peers") && err.contains("two=b:2"),
            "{err}"
        );
        // The environment is checked too, after the flags had their say.
        let err = parse(&[])
            .resolve_config(env(&[("STARLING_CLUSTER__PEERS", "2=b:2")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("node_id 1"), "{err}");
        let cli = parse(&["--node-id", "2"]);
        cli.resolve_config(env(&[("STARLING_CLUSTER__PEERS", "2=b:2")]))
            .unwrap();
        let err = parse(&["--join", "nohost"])
            .resolve_config(env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cluster.join") && err.contains("--join"),
            "{err}"
        );
    }

    #[test]
    fn bad_flag_values_are_refused() {
        for args in [
            &["--mqtt-listen", "localhost"][..],
            &["--cluster-listen", "localhost:7946"],
            &["--node-id", "-1"],
            &["--log-format", "xml"],
            &["--no-such-flag"],
        ] {
            let argv = std::iter::once("starling").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn config_subcommand() {
        let cli = parse(&["config", "--example"]);
        assert!(matches!(
            cli.command,
            Some(Command::Config {
                example: true,
                check: false
            })
        ));
        let cli = parse(&["--node-id", "4", "config"]);
        assert!(matches!(
            cli.command,
            Some(Command::Config {
                example: false,
                check: false
            })
        ));
        assert_eq!(cli.overrides.node_id, Some(4));
        let cli = parse(&["config", "--node-id", "5"]);
        assert_eq!(cli.overrides.node_id, Some(5));
    }

    #[test]
    fn config_check_takes_the_file_before_or_after_it() {
        for args in [
            &["config", "--check", "--config", "/etc/starling.toml"][..],
            &["--config", "/etc/starling.toml", "config", "--check"],
        ] {
            let cli = parse(args);
            assert!(
                matches!(cli.command, Some(Command::Config { check: true, .. })),
                "{args:?}"
            );
            assert_eq!(cli.config, Some(PathBuf::from("/etc/starling.toml")));
        }
        let argv = ["starling", "config", "--check", "--example"];
        assert!(Cli::try_parse_from(argv).is_err(), "one or the other");
    }

    #[test]
    fn passwd_subcommand() {
        let cli = parse(&["passwd", "-b", "/etc/passwd.mqtt", "alice", "secret"]);
        let Some(Command::Passwd(args)) = cli.command else {
            panic!("passwd expected: {cli:?}");
        };
        assert!(args.batch);
        assert_eq!(args.file, PathBuf::from("/etc/passwd.mqtt"));
        assert_eq!(args.user, "alice");
        assert_eq!(args.password.as_deref(), Some("secret"));
        let cli = parse(&["passwd", "f", "bob"]);
        assert!(matches!(
            cli.command,
            Some(Command::Passwd(PasswdArgs { password: None, .. }))
        ));
        // The password is an argument with -b only, and -b needs it.
        for args in [&["passwd", "-b", "f", "u"][..], &["passwd", "f", "u", "p"]] {
            let argv = std::iter::once("starling").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?}");
        }
    }

    #[test]
    fn passwd_creates_the_file_and_adds_or_updates_users() {
        use starling_broker::auth::Verdict;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let set = |user: &str, password: &str| {
            passwd(&PasswdArgs {
                batch: true,
                file: path.clone(),
                user: user.to_owned(),
                password: Some(password.to_owned()),
            })
        };
        set("alice", "one").unwrap();
        set("bob", "two").unwrap();
        set("alice", "three").unwrap();
        assert!(set("carol", "").is_err(), "an empty password is refused");
        assert!(set("a:b", "p").is_err());
        let file = PasswordFile::load(&path).unwrap();
        assert_eq!(file.len(), 2);
        assert_eq!(file.verify("alice", b"three"), Verdict::Ok);
        assert_eq!(file.verify("bob", b"two"), Verdict::Ok);
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("starling.toml");
        std::fs::write(
            &path,
            "node_id = 2\n\
             data_dir = \"/from/file\"\n\
             [mqtt]\n\
             listen = \"127.0.0.1:2000\"\n\
             max_inflight = 8\n\
             [http]\n\
             listen = \"127.0.0.1:2001\"\n\
             [log]\n\
             format = \"json\"\n\
             [cluster]\n\
             listen = \"127.0.0.1:2002\"\n\
             advertise = \"file:2002\"\n\
             peers = [\"4=file:2002\"]\n\
             node_down_after_ms = 2000\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let cli = parse(&[
            "--config",
            path,
            "--node-id",
            "4",
            "--mqtt-listen",
            "127.0.0.1:4000",
            "--cluster-listen",
            "127.0.0.1:4002",
        ]);
        let config = cli
            .resolve_config(env(&[
                ("STARLING_NODE_ID", "3"),
                ("STARLING_MQTT__LISTEN", "127.0.0.1:3000"),
                ("STARLING_HTTP__LISTEN", "127.0.0.1:3001"),
                ("STARLING_CLUSTER__LISTEN", "127.0.0.1:3002"),
                ("STARLING_CLUSTER__ADVERTISE", "env:3002"),
                ("STARLING_CLUSTER__NODE_DOWN_AFTER_MS", "1500"),
            ]))
            .unwrap();
        // Flag over environment over file.
        assert_eq!(config.node_id, 4);
        assert_eq!(config.mqtt.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(config.cluster.listen, "127.0.0.1:4002".parse().unwrap());
        // Environment over file.
        assert_eq!(config.http.listen, "127.0.0.1:3001".parse().unwrap());
        assert_eq!(config.cluster.advertise, "env:3002");
        assert_eq!(config.cluster.node_down_after_ms, 1500);
        // File over defaults.
        assert_eq!(config.data_dir, PathBuf::from("/from/file"));
        assert_eq!(config.cluster.peers, ["4=file:2002"]);
        assert_eq!(config.mqtt.max_inflight, 8);
        assert_eq!(config.log.format, LogFormat::Json);
        // Defaults where nobody said anything.
        assert_eq!(
            config.log.level,
            "info,openraft=warn,openraft::core::raft_core=error,openraft::raft::raft_inner=off"
        );
        assert_eq!(config.cluster.join, "");
        assert_eq!(
            config.mqtt.max_packet_size,
            Config::default().mqtt.max_packet_size
        );
    }
}
