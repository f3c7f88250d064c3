//! `starling ctl` against a running node: the admin API from the command
//! line, with the token the node asks for.

use std::process::{Command, Output};
use std::time::Duration;

use rumqttc::QoS;
use starling_testkit::client::{self, Client};
use starling_testkit::Broker;

const TOKEN: &str = "ctl-test-token";

/// `starling ctl --addr ... ARGS` with the token in the environment.
fn ctl(broker: &Broker, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(starling_testkit::process::starling_bin());
    command
        .arg("ctl")
        .arg("--addr")
        .arg(format!("127.0.0.1:{}", broker.http_port))
        .args(args)
        .env_remove("STARLING_HTTP__TOKEN");
    if let Some(token) = token {
        command.env("STARLING_HTTP__TOKEN", token);
    }
    command.output().expect("run starling ctl")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "starling ctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn ctl_lists_acts_and_reports_errors() {
    let broker = Broker::start_with(&format!("[http]\ntoken = \"{TOKEN}\"\n")).await;

    let members = stdout(&ctl(&broker, Some(TOKEN), &["members"]));
    assert!(members.contains("leader"), "{members}");
    assert!(members.contains("node 1 sees term"), "{members}");

    let mut sub = Client::connect(client::options(broker.port, "ctl-sub")).await;
    sub.subscribe_ok("ctl/#", QoS::AtLeastOnce).await;
    let clients = stdout(&ctl(&broker, Some(TOKEN), &["clients", "--prefix", "ctl-"]));
    assert!(
        clients.lines().any(|l| l.starts_with("ctl-sub ")),
        "{clients}"
    );

    let published = ctl(
        &broker,
        Some(TOKEN),
        &["publish", "ctl/t", "from ctl", "--qos", "1", "--retain"],
    );
    stdout(&published);
    let got = sub.recv_publish(Duration::from_secs(5)).await;
    assert_eq!(&got.payload[..], b"from ctl");
    let retained = stdout(&ctl(&broker, Some(TOKEN), &["retained", "ctl/#"]));
    assert!(retained.contains("\"payload\": \"from ctl\""), "{retained}");

    stdout(&ctl(&broker, Some(TOKEN), &["kick", "ctl-sub"]));
    // The connection's log lines name its peer and client id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let line = loop {
        let log = broker.log_text();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("disconnected by an operator"))
        {
            break line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no kick logged: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        line.contains("peer=127.0.0.1:") && line.contains("client_id=\"ctl-sub\""),
        "{line}"
    );
    let missing = ctl(&broker, Some(TOKEN), &["kick", "ctl-sub-nobody"]);
    assert!(!missing.status.success());
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(error.contains("404"), "{error}");

    let refused = ctl(&broker, None, &["members"]);
    assert!(!refused.status.success(), "no token, no answer");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}

#[tokio::test]
async fn a_client_shows_what_it_has_not_acknowledged() {
    use starling_testkit::raw::{self, Connect, Raw};

    let broker = Broker::start().await;
    let (mut lazy, _) = Raw::connect(broker.port, &Connect::v311("lazy")).await;
    lazy.send(&raw::subscribe(1, &[("lazy/#", 1)])).await;
    lazy.expect(raw::WAIT).await; // SUBACK
    let mut publisher = Client::connect(client::options(broker.port, "lazy-pub")).await;
    for i in 0..3 {
        publisher
            .publish("lazy/t", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for _ in 0..3 {
        assert_eq!(lazy.expect(raw::WAIT).await.kind(), raw::kind::PUBLISH);
    }
    // Read, never acknowledged: three in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = starling_testkit::http_get(broker.http_port, "/api/v1/clients/lazy")
            .await
            .expect("the API answers");
        assert_eq!(status, 200, "{body}");
        let detail: serde_json::Value = serde_json::from_str(&body).unwrap();
        if detail["mailbox"]["inflight"] == 3 {
            assert_eq!(detail["mailbox"]["messages"], 0, "{detail}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{detail}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
