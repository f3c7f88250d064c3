//! The password and ACL files reloaded on every node through the admin API of
//! one (`POST /api/v1/auth/reload`): the reload is committed through Raft, and
//! each node reads its own files when it applies it. A file the asked node
//! cannot parse reloads nothing anywhere.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use starling_testkit::client::{self, Client};
use starling_testkit::cluster::{http_request, Cluster};

/// `starling passwd -b FILE USER PASSWORD`.
fn passwd(file: &Path, user: &str, password: &str) {
    let status = Command::new(starling_testkit::process::starling_bin())
        .args(["passwd", "-b", file.to_str().unwrap(), user, password])
        .stdin(Stdio::null())
        .status()
        .expect("run starling passwd");
    assert!(status.success(), "starling passwd: {status}");
}

async fn logs_in(port: u16, user: &str, password: &str) -> bool {
    let mut options = client::options(port, &format!("login-{user}-{port}"));
    options.set_credentials(user, password);
    Client::try_connect(options).await.is_ok()
}

#[tokio::test]
async fn one_admin_call_reloads_the_password_file_on_every_node() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("passwd");
    passwd(&file, "alice", "one");
    let config = format!("[auth]\npassword_file = {:?}\n", file.display().to_string());
    let cluster = Cluster::start_with_config(3, &config).await;
    for id in cluster.ids() {
        assert!(logs_in(cluster.mqtt(id), "alice", "one").await);
        assert!(!logs_in(cluster.mqtt(id), "dave", "two").await);
    }

    // Changed on disk, not yet read: nobody lets dave in.
    passwd(&file, "dave", "two");
    assert!(!logs_in(cluster.mqtt(3), "dave", "two").await);

    let reload = |id: u64| {
        http_request(
            cluster.node(id).http,
            "POST",
            "/api/v1/auth/reload",
            Duration::from_secs(10),
        )
    };
    let (status, body) = reload(1).await.expect("node 1 answers");
    assert_eq!(status, 200, "{body}");
    for id in cluster.ids() {
        assert!(
            logs_in(cluster.mqtt(id), "dave", "two").await,
            "node {id} reloaded"
        );
    }

    // A broken file is refused by the node asked, and no node takes it.
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("not an entry\n");
    std::fs::write(&file, text).unwrap();
    let (status, body) = reload(2).await.expect("node 2 answers");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("\"invalid_auth_file\""), "{body}");
    assert!(body.contains("line"), "the error names the line: {body}");
    for id in cluster.ids() {
        assert!(logs_in(cluster.mqtt(id), "dave", "two").await);
        assert!(cluster.node(id).is_running(), "node {id} still runs");
    }
}
