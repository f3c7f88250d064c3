//! Username and password authentication against a Mosquitto password file:
//! a file made by Debian's `mosquitto_passwd` (package `mosquitto`) is read
//! by Starling, one made by `starling passwd` is read by Starling and by
//! Mosquitto's own broker, and SIGHUP reloads it. CONNACK codes are read as
//! raw bytes, for MQTT 3.1.1 and 5.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, Raw, RawPacket};
use starling_testkit::{http_get, Broker};

const INSTALL_HINT: &str = "mosquitto / mosquitto_passwd not found: install them (Debian: \
     `apt-get install mosquitto mosquitto-clients`) to run this test";

/// MQTT 3.1.1 and 5.0, as CONNECT's protocol level says.
const V311: u8 = 4;
const V5: u8 = 5;

/// A CONNECT (clean start, keepalive 30 s) at protocol `level`, with a
/// username and password if given; MQTT 5 with no properties.
fn connect(level: u8, client_id: &str, username: Option<&str>, password: Option<&str>) -> Vec<u8> {
    let mut flags = 0x02;
    if username.is_some() {
        flags |= 0x80;
    }
    if password.is_some() {
        flags |= 0x40;
    }
    let mut body = raw::string(b"MQTT");
    body.extend([level, flags, 0, 30]);
    if level == V5 {
        body.push(0);
    }
    body.extend(raw::string(client_id.as_bytes()));
    for field in [username, password].into_iter().flatten() {
        body.extend(raw::string(field.as_bytes()));
    }
    raw::packet(0x10, &body)
}

/// The CONNACK's return code (3.1.1) or reason code (5) for a CONNECT at
/// `level` with these credentials.
async fn connack(port: u16, level: u8, username: Option<&str>, password: Option<&str>) -> u8 {
    let mut raw = Raw::tcp(port).await;
    raw.send(&connect(level, "auth-test", username, password))
        .await;
    let packet: RawPacket = raw.expect(raw::WAIT).await;
    if level == V311 {
        return packet.connack().1;
    }
    assert_eq!(packet.first_byte, 0x20, "CONNACK expected: {packet:?}");
    packet.body[1]
}

/// A rumqttc client (MQTT 3.1.1) connecting with a username and password.
async fn try_login(port: u16, username: &str, password: &str) -> Result<Client, String> {
    let mut options = client::options(port, &format!("login-{username}"));
    options.set_credentials(username, password);
    Client::try_connect(options).await
}

/// Runs `program` with `args` to its end; fails the test unless it succeeds.
fn run(program: &Path, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            _ => panic!("cannot run {}: {e}", program.display()),
        });
    assert!(
        output.status.success(),
        "{} {args:?}: {}\n{}",
        program.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A broker whose `[auth]` names `file`; anonymous clients are then refused
/// (the default with a password file).
async fn broker_with(file: &Path) -> Broker {
    let config = format!("[auth]\npassword_file = {:?}\n", file.display().to_string());
    Broker::start_with(&config).await
}

/// `starling_auth_failures_total{reason}` as the broker reports it.
async fn failures(broker: &Broker, reason: &str) -> u64 {
    let (_, body) = http_get(broker.http_port, "/metrics")
        .await
        .expect("/metrics answers");
    let series = format!("starling_auth_failures_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test]
async fn a_mosquitto_passwd_file_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();
    run(
        Path::new("mosquitto_passwd"),
        &["-c", "-b", path, "user", "pass"],
    );
    let broker = broker_with(&file).await;
    let port = broker.port;

    let user = try_login(port, "user", "pass").await.expect("user:pass");
    user.assert_connected();
    user.disconnect().await;
    assert_eq!(connack(port, V311, Some("user"), Some("pass")).await, 0);
    assert_eq!(connack(port, V5, Some("user"), Some("pass")).await, 0);

    // Wrong password or unknown user: "bad user name or password".
    assert_eq!(connack(port, V311, Some("user"), Some("wrong")).await, 4);
    assert_eq!(connack(port, V5, Some("user"), Some("wrong")).await, 0x86);
    assert_eq!(connack(port, V311, Some("nobody"), Some("pass")).await, 4);
    assert_eq!(connack(port, V5, Some("user"), None).await, 0x86);
    assert!(try_login(port, "user", "Pass").await.is_err());

    // No username: "not authorized".
    assert_eq!(connack(port, V311, None, None).await, 5);
    assert_eq!(connack(port, V5, None, None).await, 0x87);

    assert_eq!(failures(&broker, "wrong_password").await, 4);
    assert_eq!(failures(&broker, "unknown_user").await, 1);
    assert_eq!(failures(&broker, "anonymous").await, 2);
}

/// A Mosquitto broker on a free loopback port, killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts `mosquitto` with `password_file` and no anonymous clients, and
    /// waits until it listens.
    async fn start(password_file: &Path) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = starling_testkit::free_port();
        let conf = dir.path().join("mosquitto.conf");
        // `user root`: run as root (in CI), it keeps the rights it has rather
        // than becoming `mosquitto`, which could not read our private files.
        let text = format!(
            "listener {port} 127.0.0.1\npassword_file {}\nallow_anonymous false\n\
             persistence false\nuser root\n",
            password_file.display()
        );
        std::fs::write(&conf, text).unwrap();
        let log = dir.path().join("mosquitto.log");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT}: {e}"));
        let mut mosquitto = Mosquitto {
            child,
            port,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(status) = mosquitto.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("mosquitto exited: {status}\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto not listening within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        mosquitto
    }

    /// Whether `mosquitto_pub` gets a message through with these credentials.
    fn publishes_as(&self, username: &str, password: &str) -> bool {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-u", username, "-P", password, "-t", "t", "-m", "m"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{INSTALL_HINT}: {e}"));
        status.success()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mosquitto` on the PATH, or in /usr/sbin where Debian puts it.
fn mosquitto_bin() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/mosquitto");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("mosquitto").is_file()));
    if !on_path && sbin.is_file() {
        return sbin;
    }
    PathBuf::from("mosquitto")
}

/// `starling passwd FILE USER` with the password on standard input, as a
/// script would give it.
fn passwd_from_stdin(file: &Path, user: &str, password: &str) {
    let mut child = Command::new(starling_testkit::process::starling_bin())
        .arg("passwd")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .spawn()
        .expect("run starling passwd");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(format!("{password}\n").as_bytes()).unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "starling passwd: {status}");
}

#[tokio::test]
async fn a_starling_passwd_file_is_read_by_starling_and_by_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();
    let starling = starling_testkit::process::starling_bin();
    run(&starling, &["passwd", "-b", path, "alice", "s3cret"]);
    passwd_from_stdin(&file, "bob", "hunter2 with spaces");
    run(&starling, &["passwd", "-b", path, "alice", "changed"]);
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");

    let broker = broker_with(&file).await;
    let port = broker.port;
    assert_eq!(connack(port, V311, Some("alice"), Some("changed")).await, 0);
    assert_eq!(connack(port, V311, Some("alice"), Some("s3cret")).await, 4);
    assert_eq!(
        connack(port, V5, Some("bob"), Some("hunter2 with spaces")).await,
        0
    );
    assert_eq!(connack(port, V5, Some("bob"), Some("hunter2")).await, 0x86);

    let mosquitto = Mosquitto::start(&file).await;
    assert!(mosquitto.publishes_as("alice", "changed"));
    assert!(mosquitto.publishes_as("bob", "hunter2 with spaces"));
    assert!(!mosquitto.publishes_as("alice", "s3cret"));
    assert!(!mosquitto.publishes_as("carol", "changed"));
}

#[tokio::test]
async fn sighup_reloads_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();
    let starling = starling_testkit::process::starling_bin();
    run(&starling, &["passwd", "-b", path, "alice", "one"]);
    let mut broker = broker_with(&file).await;
    let port = broker.port;
    assert_eq!(connack(port, V311, Some("dave"), Some("two")).await, 4);

    run(&starling, &["passwd", "-b", path, "dave", "two"]);
    // Not read before the signal.
    assert_eq!(connack(port, V311, Some("dave"), Some("two")).await, 4);
    hangup(&broker);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connack(port, V311, Some("dave"), Some("two")).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dave not let in within 5 s of SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(connack(port, V5, Some("alice"), Some("one")).await, 0);

    // A broken file is not taken: the users loaded before stay.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("not an entry\n");
    std::fs::write(&file, text).unwrap();
    hangup(&broker);
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.assert_alive().await;
    assert_eq!(connack(port, V311, Some("dave"), Some("two")).await, 0);
    assert_eq!(connack(port, V311, Some("alice"), Some("two")).await, 4);
}

/// SIGHUP to the broker.
fn hangup(broker: &Broker) {
    let status = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP: {status}");
}

#[tokio::test]
async fn a_malformed_password_file_fails_the_start_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let path = file.to_str().unwrap();
    let starling = starling_testkit::process::starling_bin();
    run(&starling, &["passwd", "-b", path, "alice", "one"]);
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("bob:$7$101$not-a-hash\n");
    std::fs::write(&file, text).unwrap();
    let config = dir.path().join("starling.toml");
    std::fs::write(
        &config,
        format!("[auth]\npassword_file = {:?}\n", file.display().to_string()),
    )
    .unwrap();
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let log = dir.path().join("starling.log");
    let mut child = Command::new(&starling)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--mqtt-listen", &addr(starling_testkit::free_port())])
        .args(["--http-listen", &addr(starling_testkit::free_port())])
        .args(["--cluster-listen", &addr(starling_testkit::free_port())])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("run starling");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("starling still running 20 s after start with a malformed password file");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let said = format!(
        "{}{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
    );
    assert!(!status.success(), "started with a malformed file: {said}");
    assert!(
        said.contains(&format!("password file {path}, line 2")),
        "{said}"
    );
}

/// A broker with users alice and bob and an ACL file in Mosquitto's format.
async fn broker_with_acl(dir: &Path, acl: &str) -> Broker {
    let passwd = dir.join("passwd");
    let path = passwd.to_str().unwrap();
    let starling = starling_testkit::process::starling_bin();
    run(&starling, &["passwd", "-b", path, "alice", "a-pass"]);
    run(&starling, &["passwd", "-b", path, "bob", "b-pass"]);
    let acl_file = dir.join("acl");
    std::fs::write(&acl_file, acl).unwrap();
    let config = format!(
        "[auth]\npassword_file = {:?}\nacl_file = {:?}\n",
        passwd.display().to_string(),
        acl_file.display().to_string()
    );
    Broker::start_with(&config).await
}

#[tokio::test]
async fn the_acl_file_governs_publish_subscribe_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let acl = "\
# alice reports, bob reads; each has a private inbox by pattern
user alice
topic write sensors/#
topic read alerts/#

user bob
topic read sensors/#

pattern readwrite inbox/%u/#
";
    let mut broker = broker_with_acl(dir.path(), acl).await;
    let port = broker.port;
    let mut alice = try_login(port, "alice", "a-pass").await.expect("alice");
    let mut bob = try_login(port, "bob", "b-pass").await.expect("bob");
    bob.subscribe_ok("sensors/#", rumqttc::QoS::AtLeastOnce)
        .await;
    // bob may not read alerts: SUBACK 0x80 (3.1.1).
    let codes = bob.subscribe("alerts/#", rumqttc::QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
    // A pattern gives bob his inbox, and nobody else's.
    bob.subscribe_ok("inbox/bob/#", rumqttc::QoS::AtLeastOnce)
        .await;
    let codes = bob
        .subscribe("inbox/alice/#", rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);

    alice
        .publish("sensors/t1", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await;
    let got = bob.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("sensors/t1", &b"21.5"[..])
    );
    // bob may not publish to sensors: acknowledged (3.1.1) and dropped.
    bob.publish("sensors/t1", rumqttc::QoS::AtLeastOnce, false, "forged")
        .await;
    bob.assert_no_publish(Duration::from_millis(500)).await;

    // MQTT 5 says why: PUBACK 0x87 for a topic the user may not write.
    let mut raw = Raw::tcp(port).await;
    raw.send(&connect(V5, "bob-v5", Some("bob"), Some("b-pass")))
        .await;
    let connack = raw.expect(raw::WAIT).await;
    assert_eq!(connack.kind(), raw::kind::CONNACK);
    assert_eq!(connack.body()[1], 0, "bob connects over MQTT 5");
    let mut publish = vec![0x32];
    let body = [
        &[0x00, 0x09][..],
        b"sensors/x",
        &[0x00, 0x07], // packet id 7
        &[0x00],       // no properties
        b"forged",
    ]
    .concat();
    publish.extend(raw::remaining_length(body.len()));
    publish.extend(body);
    raw.send(&publish).await;
    let puback: RawPacket = raw.expect(raw::WAIT).await;
    assert_eq!(puback.kind(), raw::kind::PUBACK);
    assert_eq!(puback.pkid(), 7);
    assert_eq!(puback.body().get(2), Some(&0x87), "Not authorized");
    broker.assert_alive().await;
}
