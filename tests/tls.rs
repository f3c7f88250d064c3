//! MQTT over TLS and secure WebSocket, against a real broker whose
//! certificates are made at test time (rcgen): a rustls client speaking raw
//! MQTT bytes, Debian's mosquitto clients and `openssl s_client`; client
//! certificates, the certificate's name as the username, and certificates
//! read again on SIGHUP or when their files change, with open connections
//! kept.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::QoS;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use starling_testkit::client::{self, Client};
use starling_testkit::raw::{self, Connect, Raw, RawPacket};
use starling_testkit::{free_port, Broker};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

// ------------------------------------------------------------- certificates

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as DER and as PEM.
struct Leaf {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        Ca { issuer }
    }

    fn cert(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for the broker on this machine: localhost and 127.0.0.1.
    fn server(&self, cn: &str, serial: u64) -> Leaf {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let params = CertificateParams::new(names).expect("server names");
        self.sign(params, cn, serial, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A certificate for a client named `cn`.
    fn client(&self, cn: &str) -> Leaf {
        let params = CertificateParams::default();
        self.sign(params, cn, 7, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(
        &self,
        mut params: CertificateParams,
        cn: &str,
        serial: u64,
        usage: ExtendedKeyUsagePurpose,
    ) -> Leaf {
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(serial.into());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        Leaf {
            cert: cert.der().clone(),
            key: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// The files a broker's `[tls]` names, in a temp dir of their own.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::Builder::new()
                .prefix("starling-tls-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the broker's certificate and key (cert.pem, key.pem), replacing
    /// them whole (written aside, then renamed) as a certificate tool would.
    fn server(&self, leaf: &Leaf) {
        self.write("cert.pem", &leaf.cert_pem);
        self.write("key.pem", &leaf.key_pem);
    }

    fn write(&self, name: &str, text: &str) {
        let aside = self.path(&format!("{name}.new"));
        std::fs::write(&aside, text).expect("write a PEM file");
        std::fs::rename(&aside, self.path(name)).expect("rename a PEM file");
    }

    /// The `[tls]` section for a listener on `port`, with `extra` lines.
    fn section(&self, port: u16, extra: &str) -> String {
        format!(
            "[tls]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\ncert_file = {:?}\n\
             key_file = {:?}\n{extra}",
            self.path("cert.pem"),
            self.path("key.pem"),
        )
    }
}

/// A CA, a broker certificate it signed and their files.
fn pki() -> (Ca, Files) {
    let ca = Ca::new("Starling test CA");
    let files = Files::new();
    files.server(&ca.server("starling-1", 1));
    files.write("ca.pem", &ca.issuer.pem());
    (ca, files)
}

// ------------------------------------------------------------- a TLS client

#[allow(deprecated)] // ring, as the broker: rustls 0.23.48 deprecates it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `ca`, presenting `cert` if given.
fn client_config(ca: &CertificateDer<'static>, cert: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("a root");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.clone()));
            builder
                .with_client_auth_cert(vec![leaf.cert.clone()], key)
                .expect("a client certificate")
        }
    };
    Arc::new(config)
}

/// A TLS connection to the broker on `port`, checked against the name
/// "localhost".
async fn tls_connect(port: u16, config: Arc<ClientConfig>) -> Result<TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("TCP: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("a name");
    let handshake = TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(raw::WAIT, handshake).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("TLS: {e}")),
        Err(_) => Err("TLS handshake not done in time".to_owned()),
    }
}

/// The certificate the broker presented.
fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates");
    certs[0].clone().into_owned()
}

/// The next MQTT packet from `stream`, or an error (closed, an alert, or
/// nothing within `raw::WAIT`).
async fn read_packet<S: AsyncRead + Unpin>(stream: &mut S) -> Result<RawPacket, String> {
    let read = async {
        let first_byte = stream.read_u8().await?;
        let mut len = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = stream.read_u8().await?;
            len |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await?;
        Ok::<_, std::io::Error>(RawPacket { first_byte, body })
    };
    match tokio::time::timeout(raw::WAIT, read).await {
        Ok(Ok(packet)) => Ok(packet),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err(format!("no packet within {:?}", raw::WAIT)),
    }
}

/// A TLS connection that sent CONNECT for `client_id` and got CONNACK's
/// return code back.
async fn mqtt_over_tls(
    port: u16,
    config: Arc<ClientConfig>,
    client_id: &str,
) -> Result<(TlsStream<TcpStream>, u8), String> {
    let mut stream = tls_connect(port, config).await?;
    stream
        .write_all(&Connect::v311(client_id).encode())
        .await
        .map_err(|e| format!("write: {e}"))?;
    // With TLS 1.3 a refused client certificate shows here, as an alert.
    let packet = read_packet(&mut stream).await?;
    let (_, code) = packet.connack();
    Ok((stream, code))
}

/// A broker with the TLS listener on a port of its own, `[tls]` holding
/// `extra` too, and `more` after it.
async fn broker(files: &Files, extra: &str, more: &str) -> (Broker, u16) {
    let port = free_port();
    let config = format!("{}{more}", files.section(port, extra));
    (Broker::start_with(&config).await, port)
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn a_tls_client_gets_what_a_tcp_client_publishes() {
    let (ca, files) = pki();
    let (broker, port) = broker(&files, "", "").await;
    let config = client_config(&ca.cert(), None);
    let (mut tls, code) = mqtt_over_tls(port, config, "tls-sub")
        .await
        .expect("CONNECT over TLS");
    assert_eq!(code, 0, "CONNACK");
    tls.write_all(&raw::subscribe(1, &[("tls/in", 1)]))
        .await
        .unwrap();
    let suback = read_packet(&mut tls).await.expect("SUBACK");
    assert_eq!(suback.suback(), (1, vec![1]));

    let mut tcp = Client::connect(client::options(broker.port, "tcp-pub")).await;
    tcp.publish("tls/in", QoS::AtLeastOnce, false, "over tls")
        .await;
    let publish = read_packet(&mut tls).await.expect("PUBLISH").publish();
    assert_eq!(publish.topic, "tls/in");
    assert_eq!(publish.payload, b"over tls");
    tls.write_all(&raw::puback(publish.pkid)).await.unwrap();

    // And the other way: QoS 1 from the TLS client, PUBACK over TLS.
    tcp.subscribe_ok("tls/out", QoS::AtLeastOnce).await;
    tls.write_all(&raw::publish(b"tls/out", 1, false, false, 9, b"from tls"))
        .await
        .unwrap();
    let puback = read_packet(&mut tls).await.expect("PUBACK");
    assert_eq!((puback.first_byte, puback.pkid()), (0x40, 9));
    let got = tcp.recv_publish(raw::WAIT).await;
    assert_eq!(&got.payload[..], b"from tls");
}

/// Runs `program` with `args` to its end (at most 20 s), output captured.
async fn run(program: &str, args: &[impl AsRef<std::ffi::OsStr>]) -> Output {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} not found on PATH: .ci/run installs it (Debian package)")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // Its output is small: it fits the pipes until it is read at the end.
    while child.try_wait().expect("try_wait").is_none() {
        if tokio::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} still running after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.wait_with_output().expect("its output")
}

#[tokio::test]
async fn mosquitto_clients_speak_to_it_over_tls() {
    let (_ca, files) = pki();
    let (_broker, port) = broker(&files, "", "").await;
    let port = port.to_string();
    let cafile = files.path("ca.pem");
    let cafile = cafile.to_str().expect("a UTF-8 path");
    let args = |more: &[&str]| -> Vec<String> {
        ["--cafile", cafile, "-h", "localhost", "-p", &port]
            .iter()
            .chain(more)
            .map(|arg| arg.to_string())
            .collect()
    };
    let sub_args = args(&["-t", "demo/#", "-C", "1", "-W", "15"]);
    let sub = tokio::spawn(async move { run("mosquitto_sub", &sub_args).await });
    // mosquitto_sub does not say when it has subscribed: publish until it has
    // received one message and exited (-C 1).
    let pub_args = args(&["-t", "demo/tls", "-m", "secret hello", "-q", "1"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(12);
    while !sub.is_finished() && tokio::time::Instant::now() < deadline {
        let published = run("mosquitto_pub", &pub_args).await;
        assert!(
            published.status.success(),
            "mosquitto_pub over TLS: {}",
            String::from_utf8_lossy(&published.stderr)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let output = sub.await.expect("the mosquitto_sub task");
    assert!(
        output.status.success(),
        "mosquitto_sub over TLS: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "secret hello\n");
}

/// `openssl s_client` to `port` with `version` (-tls1_2 ...): whether the
/// handshake succeeded, and what it said.
async fn s_client(port: u16, cafile: &Path, version: &str) -> (bool, String) {
    let connect = format!("127.0.0.1:{port}");
    let output = run(
        "openssl",
        &[
            "s_client",
            "-connect",
            &connect,
            "-servername",
            "localhost",
            version,
            // Let this client offer old versions: the broker must refuse them.
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-CAfile",
            cafile.to_str().expect("a UTF-8 path"),
            "-verify_return_error",
        ],
    )
    .await;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

#[tokio::test]
async fn tls_1_2_and_1_3_only() {
    let (_ca, files) = pki();
    let (_broker, port) = broker(&files, "", "").await;
    let cafile = files.path("ca.pem");
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, said) = s_client(port, &cafile, version).await;
        assert!(ok, "{version}: {said}");
        assert!(said.contains(name), "{version}: {said}");
        assert!(said.contains("Verify return code: 0 (ok)"), "{said}");
    }
    for version in ["-tls1_1", "-tls1"] {
        let (ok, said) = s_client(port, &cafile, version).await;
        assert!(!ok, "{version} must be refused: {said}");
        // Refused by the broker (its alert), not by this client's settings.
        assert!(said.contains("SSL alert number"), "{version}: {said}");
    }
}

#[tokio::test]
async fn a_required_client_certificate_must_come_from_the_ca() {
    let (ca, files) = pki();
    let ca_file = files.path("ca.pem");
    let extra = format!("ca_file = {ca_file:?}\nrequire_client_certificate = true\n");
    let (_broker, port) = broker(&files, &extra, "").await;

    // Refused by the broker's alert: with TLS 1.3 the client reads it after
    // its side of the handshake is done.
    let refused = |result: Result<(TlsStream<TcpStream>, u8), String>, alert: &str| match result {
        Ok((_, code)) => panic!("accepted (CONNACK {code}), {alert} expected"),
        Err(e) => assert!(e.contains(alert), "{e}"),
    };
    let none = mqtt_over_tls(port, client_config(&ca.cert(), None), "none").await;
    refused(none, "CertificateRequired");

    let other = Ca::new("Another CA").client("intruder");
    let intruder = mqtt_over_tls(port, client_config(&ca.cert(), Some(&other)), "intruder").await;
    refused(intruder, "UnknownCA");

    let ours = ca.client("sensor-17");
    let (_, code) = mqtt_over_tls(port, client_config(&ca.cert(), Some(&ours)), "sensor")
        .await
        .expect("a certificate from the CA");
    assert_eq!(code, 0, "CONNACK");
}

#[tokio::test]
async fn the_certificate_common_name_is_the_username() {
    let (ca, files) = pki();
    let ca_file = files.path("ca.pem");
    let extra = format!(
        "ca_file = {ca_file:?}\nrequire_client_certificate = true\n\
         use_identity_as_username = true\n"
    );
    let log = "[log]\nlevel = \"info,starling_broker=debug\"\n";
    let (broker, port) = broker(&files, &extra, log).await;

    let cert = ca.client("sensor-17");
    let (_, code) = mqtt_over_tls(port, client_config(&ca.cert(), Some(&cert)), "sensor")
        .await
        .expect("a certificate from the CA");
    assert_eq!(code, 0, "CONNACK: the certificate authenticated the client");
    // Certificates name the users now: anonymous clients are refused (as in
    // Mosquitto 2, unless allow_anonymous says otherwise).
    let (_, _, code) = Raw::connect_with(broker.port, &Connect::v311("anonymous")).await;
    assert_eq!(code, 5, "CONNACK: not authorized");

    let line = logged(&broker, "authenticated by its client certificate").await;
    assert!(line.contains("username=sensor-17"), "{line}");
}

/// The first line of the broker's log that holds `needle`, once there is one.
async fn logged(broker: &Broker, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + raw::WAIT;
    loop {
        let log = broker.log_text();
        if let Some(line) = log.lines().find(|line| line.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects over TLS until the broker presents `cert`.
async fn wait_for_certificate(port: u16, config: &Arc<ClientConfig>, cert: &CertificateDer<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let stream = tls_connect(port, config.clone())
            .await
            .expect("a TLS connection");
        if served_certificate(&stream) == *cert {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An open TLS connection still carries traffic: a message published over
/// TCP to `topic`, which it subscribed to, and a ping.
async fn still_works(tls: &mut TlsStream<TcpStream>, tcp: &mut Client, topic: &str) {
    tcp.publish(topic, QoS::AtMostOnce, false, "still here")
        .await;
    let publish = read_packet(tls).await.expect("PUBLISH").publish();
    assert_eq!(publish.payload, b"still here");
    tls.write_all(&raw::PINGREQ).await.expect("PINGREQ");
    let pong = read_packet(tls).await.expect("PINGRESP");
    assert_eq!(pong.first_byte, raw::PINGRESP[0]);
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_and_keeps_open_connections() {
    let (ca, files) = pki();
    let (broker, port) = broker(&files, "", "").await;
    let config = client_config(&ca.cert(), None);
    let (mut open, code) = mqtt_over_tls(port, config.clone(), "kept")
        .await
        .expect("CONNECT");
    assert_eq!(code, 0);
    let first = served_certificate(&open);
    open.write_all(&raw::subscribe(1, &[("kept/#", 0)]))
        .await
        .unwrap();
    read_packet(&mut open).await.expect("SUBACK");

    let renewed = ca.server("starling-2", 2);
    assert_ne!(renewed.cert, first);
    files.server(&renewed);
    broker.signal("HUP");
    wait_for_certificate(port, &config, &renewed.cert).await;
    let line = logged(&broker, "TLS certificates reloaded").await;
    assert!(
        line.contains("asked"),
        "the reload comes from SIGHUP: {line}"
    );

    let mut tcp = Client::connect(client::options(broker.port, "tcp-pub")).await;
    still_works(&mut open, &mut tcp, "kept/a").await;
    // A broken file keeps what is served.
    files.write("key.pem", "not a key");
    broker.signal("HUP");
    logged(&broker, "TLS certificates not reloaded").await;
    let stream = tls_connect(port, config.clone())
        .await
        .expect("TLS still served");
    assert_eq!(served_certificate(&stream), renewed.cert);
    still_works(&mut open, &mut tcp, "kept/b").await;
}

#[tokio::test]
async fn changed_files_are_read_again_without_a_signal() {
    let (ca, files) = pki();
    let (_broker, port) = broker(&files, "", "").await;
    let config = client_config(&ca.cert(), None);
    let renewed = ca.server("starling-3", 3);
    files.server(&renewed);
    wait_for_certificate(port, &config, &renewed.cert).await;
}

#[tokio::test]
async fn mqtt_over_secure_websocket() {
    let (ca, files) = pki();
    let wss = free_port();
    // Only the secure WebSocket listener: `[tls] enabled` is for MQTT over TLS.
    let more = format!("[websocket]\ntls_listen = \"127.0.0.1:{wss}\"\n");
    let broker = Broker::start_with(&format!(
        "{more}[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        files.path("cert.pem"),
        files.path("key.pem")
    ))
    .await;
    let config = client_config(&ca.cert(), None);

    let open = |path: &'static str| {
        let config = config.clone();
        async move {
            let stream = tls_connect(wss, config).await?;
            let mut request = format!("wss://localhost:{wss}{path}")
                .into_client_request()
                .expect("a request");
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            tokio_tungstenite::client_async(request, stream)
                .await
                .map(|(ws, _)| ws)
                .map_err(|e| e.to_string())
        }
    };
    let refused = open("/elsewhere").await;
    assert!(
        refused.is_err_and(|e| e.contains("404")),
        "MQTT is on /mqtt only"
    );

    let mut ws = open("/mqtt").await.expect("a secure WebSocket");
    ws.send(Message::Binary(Connect::v311("wss-client").encode().into()))
        .await
        .unwrap();
    assert_eq!(
        next_binary(&mut ws).await,
        [0x20, 0x02, 0x00, 0x00],
        "CONNACK"
    );
    ws.send(Message::Binary(raw::subscribe(1, &[("wss/in", 0)]).into()))
        .await
        .unwrap();
    assert_eq!(
        next_binary(&mut ws).await,
        [0x90, 0x03, 0x00, 0x01, 0x00],
        "SUBACK"
    );
    let mut tcp = Client::connect(client::options(broker.port, "tcp-pub")).await;
    tcp.publish("wss/in", QoS::AtMostOnce, false, "to the browser")
        .await;
    let publish = next_binary(&mut ws).await;
    assert_eq!(publish[0] & 0xF0, 0x30, "PUBLISH");
    assert!(publish.ends_with(b"to the browser"));
}

/// The next binary frame's bytes.
async fn next_binary<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Vec<u8>
where
    S: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(raw::WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the stream is open")
            .expect("a valid frame");
        match frame {
            Message::Binary(bytes) => return bytes.to_vec(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("a binary frame expected, got {other:?}"),
        }
    }
}
