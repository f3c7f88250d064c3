//! A node's disk after a crash or damage: killed while it writes snapshots,
//! it comes back from the last complete one and the log after it; a log tail
//! cut short, damaged or followed by garbage is cut and the node catches up
//! from the leader; a log damaged before its end makes the node refuse to
//! start, naming the file, while the other two go on serving, and the node
//! comes back once removed, emptied and joined again. Nothing acknowledged is
//! lost in any of these.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::QoS;
use tokio::sync::watch;

use starling_testkit::client;
use starling_testkit::cluster::Cluster;
use starling_testkit::process::starling_bin;
use starling_testkit::raw::{self, Connect, Raw, Read};
use starling_testkit::subscribers::Subscriber;
use starling_testkit::traffic::{
    assert_delivered_in_order, connect_retry, raw_connect_retry, wait_until, Live, Publisher,
};

const PROGRESS_DEADLINE: Duration = Duration::from_secs(15);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(20);
const TOPIC: &str = "rec/q1";

/// The segment files of node `id`'s Raft log, in log order.
fn segments(cluster: &Cluster, id: u64) -> Vec<PathBuf> {
    let dir = cluster.node(id).data_dir().join("raft").join("log");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

fn last_segment(cluster: &Cluster, id: u64) -> PathBuf {
    segments(cluster, id).pop().expect("a segment file")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned()
}

/// A `starling_raft_state{what="..."}` gauge of a `/metrics` text.
fn raft_gauge(metrics: &str, what: &str) -> u64 {
    let series = format!("starling_raft_state{{what=\"{what}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// The retained topics under `prefix/` that node `id` holds.
async fn retained(cluster: &Cluster, id: u64, prefix: &str) -> BTreeSet<String> {
    let port = cluster.mqtt(id);
    let client_id = format!("rec-reader-{id}-{prefix}");
    let mut reader = connect_retry(|| client::options(port, &client_id)).await;
    reader
        .subscribe_ok(&format!("{prefix}/#"), QoS::AtLeastOnce)
        .await;
    let mut topics = BTreeSet::new();
    while let Some(message) = reader.try_recv_publish(Duration::from_secs(1)).await {
        topics.insert(message.topic.clone());
    }
    reader.disconnect().await;
    topics
}

async fn set_retained(cluster: &Cluster, id: u64, topic: &str) {
    RetainedPublisher::new(cluster.mqtt(id), "rec-setter")
        .publish(topic, b"kept")
        .await;
}

/// Waits until node `id` has applied what the cluster had committed when it
/// was called, as its `/metrics` show.
async fn wait_caught_up(cluster: &Cluster, id: u64, from: u64) {
    let target = raft_gauge(&cluster.metrics(from).await, "applied_index");
    cluster
        .wait_metrics(
            id,
            Duration::from_secs(20),
            &format!("applied index {target}"),
            |m| raft_gauge(m, "applied_index") >= target,
        )
        .await;
}

/// Stops the publisher and checks that the subscriber got every message it
/// had acknowledged, in order.
async fn assert_all_delivered(publisher: Publisher, subscriber: Subscriber) {
    let acked = publisher.finish().await;
    let done = wait_until(DELIVERY_DEADLINE, || subscriber.done_waiting(TOPIC, &acked)).await;
    eprintln!(
        "{} acknowledged; all delivered in time: {done}",
        acked.len()
    );
    let deliveries = subscriber.finish().await;
    assert_delivered_in_order("rec-sub", &deliveries, TOPIC, &acked);
}

/// Publishes retained messages at QoS 1 on one node, connecting again when
/// the node closes the connection (it does while it has no quorum, as it may
/// for a moment under load while a node is down).
struct RetainedPublisher {
    port: u16,
    client_id: String,
    conn: Option<Raw>,
    pkid: u16,
}

impl RetainedPublisher {
    fn new(port: u16, client_id: &str) -> RetainedPublisher {
        RetainedPublisher {
            port,
            client_id: client_id.to_owned(),
            conn: None,
            pkid: 0,
        }
    }

    /// Publishes until a PUBACK comes back.
    async fn publish(&mut self, topic: &str, payload: &[u8]) {
        loop {
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => {
                    let connect = Connect::v311(&self.client_id);
                    let (conn, _) = raw_connect_retry(self.port, &connect).await;
                    self.conn.insert(conn)
                }
            };
            self.pkid = self.pkid % 60_000 + 1;
            let packet = raw::publish(topic.as_bytes(), 1, true, false, self.pkid, payload);
            if conn.try_send(&packet).await.is_ok() {
                if let Read::Packet(p) = conn.read(Duration::from_secs(10)).await {
                    if p.kind() == raw::kind::PUBACK && p.pkid() == self.pkid {
                        return;
                    }
                }
            }
            self.conn = None;
        }
    }
}

enum Damage {
    /// The last record loses its last bytes: a write cut short.
    CutMidEntry,
    /// A byte of the last record's payload changes.
    FlipInLastEntry,
    /// Bytes that are no record follow the last one.
    Garbage,
}

fn damage_tail(path: &Path, damage: &Damage) {
    let len = fs::metadata(path).expect("segment").len();
    match damage {
        Damage::CutMidEntry => OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(len - 5)
            .expect("cut"),
        Damage::FlipInLastEntry => {
            let mut bytes = fs::read(path).expect("read");
            let at = bytes.len() - 3;
            bytes[at] ^= 0xff;
            fs::write(path, bytes).expect("write");
        }
        Damage::Garbage => {
            let mut bytes = fs::read(path).expect("read");
            bytes.extend_from_slice(&[0xab; 1000]);
            fs::write(path, bytes).expect("write");
        }
    }
}

#[tokio::test]
async fn a_damaged_log_tail_is_cut_and_the_node_catches_up_from_the_leader() {
    let mut cluster = Cluster::start_fast(3).await;
    let live = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let subscriber = Subscriber::start(&live, 3, "rec-sub", &[(TOPIC, 1)]).await;
    let mut publisher = Publisher::start(&live, 1, "rec-pub", TOPIC, 1);
    publisher
        .wait_progress(30, PROGRESS_DEADLINE, "before any kill")
        .await;

    for (round, damage) in [
        Damage::CutMidEntry,
        Damage::FlipInLastEntry,
        Damage::Garbage,
    ]
    .iter()
    .enumerate()
    {
        live.remove(3);
        cluster.kill9(3);
        let segment = last_segment(&cluster, 3);
        damage_tail(&segment, damage);
        // Written while node 3 is down: it must get it from the leader.
        set_retained(&cluster, 1, &format!("rec/retained/{round}")).await;
        publisher
            .wait_progress(20, PROGRESS_DEADLINE, "with node 3 down")
            .await;
        cluster.restart(3).await;
        live.add(3, cluster.mqtt(3));

        let log = cluster.node(3).log_text();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("raft log ends in a record that does not check out"))
            .collect();
        assert_eq!(warnings.len(), round + 1, "one warning per damage: {log}");
        let warning = warnings[round];
        assert!(
            warning.contains(&file_name(&segment)) && warning.contains("offset"),
            "the warning names the file and the offset: {warning}"
        );
        eprintln!("node 3 after damage {round}: {warning}");
        publisher
            .wait_progress(20, PROGRESS_DEADLINE, "after node 3 came back")
            .await;
    }

    wait_caught_up(&cluster, 3, 1).await;
    let expected: BTreeSet<String> = (0..3).map(|r| format!("rec/retained/{r}")).collect();
    assert_eq!(retained(&cluster, 3, "rec/retained").await, expected);
    assert_eq!(cluster.readyz(3).await, Some(200));
    assert_all_delivered(publisher, subscriber).await;
}

#[tokio::test]
async fn a_log_damaged_before_its_end_refuses_to_start_and_the_others_serve() {
    let mut cluster = Cluster::start_fast(3).await;
    let live = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let subscriber = Subscriber::start(&live, 2, "rec-sub", &[(TOPIC, 1)]).await;
    let mut publisher = Publisher::start(&live, 1, "rec-pub", TOPIC, 1);
    publisher
        .wait_progress(200, PROGRESS_DEADLINE, "before the kill")
        .await;
    set_retained(&cluster, 1, "rec/retained/before").await;

    live.remove(3);
    cluster.kill9(3);
    // A byte in the middle of the last file: records follow the damaged one.
    let segment = last_segment(&cluster, 3);
    let len = fs::metadata(&segment).expect("segment").len();
    let mut bytes = fs::read(&segment).expect("read");
    bytes[(len / 2) as usize] ^= 0xff;
    fs::write(&segment, &bytes).expect("write");

    cluster.respawn(3);
    let status = cluster
        .wait_exit(3, Duration::from_secs(20))
        .await
        .expect("node 3 refuses to start");
    assert!(!status.success(), "it exits with a failure: {status}");
    let log = cluster.node(3).log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("failed to start"))
        .unwrap_or_else(|| panic!("no refusal in the log: {log}"));
    eprintln!("node 3: {refusal}");
    assert!(
        refusal.contains("corrupt raft log")
            && refusal.contains(&file_name(&segment))
            && refusal.contains("refusing to start"),
        "{refusal}"
    );
    assert_eq!(fs::read(&segment).expect("read"), bytes, "left as it was");

    // The other two serve: publishing goes on, and what node 1 takes, a
    // client of node 2 receives.
    publisher
        .wait_progress(50, PROGRESS_DEADLINE, "with node 3 refusing to start")
        .await;
    set_retained(&cluster, 1, "rec/retained/during").await;
    assert!(retained(&cluster, 2, "rec/retained")
        .await
        .contains("rec/retained/during"));

    // The operator's way back: remove the member, empty its data directory,
    // let it join again.
    let addr = format!("127.0.0.1:{}", cluster.node(1).http);
    let removed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(starling_bin())
            .args(["ctl", "--addr", &addr, "remove-member", "3"])
            .output()
            .expect("run starling ctl")
    })
    .await
    .expect("ctl task");
    assert!(
        removed.status.success(),
        "remove-member: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    fs::remove_dir_all(cluster.node(3).data_dir()).expect("remove the data directory");
    cluster.rejoin(3, 1).await;
    live.add(3, cluster.mqtt(3));
    publisher
        .wait_progress(20, PROGRESS_DEADLINE, "after node 3 joined again")
        .await;
    wait_caught_up(&cluster, 3, 1).await;
    let expected: BTreeSet<String> = ["rec/retained/before", "rec/retained/during"]
        .map(String::from)
        .into();
    assert_eq!(retained(&cluster, 3, "rec/retained").await, expected);
    assert_all_delivered(publisher, subscriber).await;
}

/// Retained messages of 4 KB on 300 topics, on node 1 until told to stop:
/// they make snapshots large and frequent. The task returns how many it sent.
fn fill(port: u16) -> (watch::Sender<bool>, tokio::task::JoinHandle<u32>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut filler = RetainedPublisher::new(port, "rec-filler");
        let payload = vec![b'f'; 4096];
        let mut i = 0u32;
        while !*stopped.borrow_and_update() {
            filler
                .publish(&format!("rec/fill/{}", i % 300), &payload)
                .await;
            i += 1;
        }
        i
    });
    (stop, task)
}

#[tokio::test]
async fn a_node_killed_while_writing_snapshots_restarts_from_the_last_complete_one() {
    // A snapshot every 100 KB of log.
    let mut cluster = Cluster::start_with_config(
        3,
        "[cluster]\nnode_down_after_ms = 1500\nmax_log_bytes = 200000\n",
    )
    .await;
    let live = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let subscriber = Subscriber::start(&live, 2, "rec-sub", &[(TOPIC, 1)]).await;
    let mut publisher = Publisher::start(&live, 1, "rec-pub", TOPIC, 1);
    let (stop, filler) = fill(cluster.mqtt(1));
    cluster
        .wait_metrics(3, Duration::from_secs(20), "two snapshots", |m| {
            raft_gauge(m, "snapshot_index") > 0
                && m.lines()
                    .find_map(|l| l.strip_prefix("starling_raft_snapshots_total "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .is_some_and(|n| n >= 2.0)
        })
        .await;

    // Where a snapshot is written before it is renamed into place.
    let tmp = cluster.node(3).data_dir().join("raft").join("snapshot.tmp");
    let mut cut_short = 0;
    for _ in 0..5 {
        // Killed as soon as a snapshot is being written, if one starts soon.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !tmp.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        live.remove(3);
        cluster.kill9(3);
        if tmp.exists() {
            cut_short += 1;
        }
        publisher
            .wait_progress(20, PROGRESS_DEADLINE, "with node 3 killed")
            .await;
        cluster.restart(3).await;
        live.add(3, cluster.mqtt(3));
    }
    eprintln!("node 3 was killed in the middle of writing a snapshot {cut_short} times of 5");
    assert!(cut_short > 0, "no kill landed while a snapshot was written");
    let log = cluster.node(3).log_text();
    for needle in [
        "removed a snapshot that a crash cut short",
        "recovered snapshot at index",
    ] {
        let line = log
            .lines()
            .rfind(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log: {log}"));
        eprintln!("node 3: {line}");
    }

    let _ = stop.send(true);
    let filled = filler.await.expect("filler");
    publisher
        .wait_progress(20, PROGRESS_DEADLINE, "after the kills")
        .await;
    wait_caught_up(&cluster, 3, 1).await;
    assert_eq!(cluster.readyz(3).await, Some(200));
    assert_eq!(
        retained(&cluster, 3, "rec/fill").await.len(),
        filled.min(300) as usize
    );
    assert_all_delivered(publisher, subscriber).await;
}

/// Bytes of the files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                tree_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

fn copy_tree(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

#[tokio::test]
async fn a_follower_whose_disk_fills_exits_and_catches_up_once_there_is_room() {
    let mut cluster = Cluster::start_fast(3).await;
    let live = Live::new(cluster.ids().into_iter().map(|id| (id, cluster.mqtt(id))));
    let subscriber = Subscriber::start(&live, 2, "rec-sub", &[(TOPIC, 1)]).await;
    let mut publisher = Publisher::start(&live, 1, "rec-pub", TOPIC, 1);
    publisher
        .wait_progress(20, PROGRESS_DEADLINE, "before the disk is swapped")
        .await;

    // Node 3's data directory moves onto a tmpfs with 3 MiB to spare.
    live.remove(3);
    cluster.kill9(3);
    let data = cluster.node(3).data_dir();
    let saved = data.with_extension("saved");
    fs::create_dir_all(&saved).expect("create");
    copy_tree(&data, &saved);
    fs::remove_dir_all(&data).expect("empty the data directory");
    let size = format!("{}k", tree_bytes(&saved) / 1024 + 3 * 1024);
    let disk = starling_testkit::tmpfs::Tmpfs::mount(&data, &size);
    copy_tree(&saved, &data);
    cluster.restart(3).await;
    live.add(3, cluster.mqtt(3));

    // Retained messages of 8 KB on node 1 until node 3 has no room left.
    let mut filler = RetainedPublisher::new(cluster.mqtt(1), "rec-filler");
    let mut filled = 0u32;
    let status = loop {
        if let Some(status) = cluster.wait_exit(3, Duration::ZERO).await {
            break status;
        }
        assert!(filled < 2000, "node 3 still runs with a full disk");
        filler
            .publish(&format!("rec/full/{filled}"), &[b'd'; 8000])
            .await;
        filled += 1;
    };
    live.remove(3);
    assert_eq!(status.code(), Some(3), "{status}");
    let log = cluster.node(3).log_text();
    let line = log
        .lines()
        .find(|l| l.contains("raft stopped on a storage error"))
        .unwrap_or_else(|| panic!("no cause in the log: {log}"));
    eprintln!("node 3 after {filled} messages: {line}");
    assert!(log.contains("No space left on device"), "{log}");

    // The other two go on taking messages.
    for i in 0..20 {
        filler
            .publish(&format!("rec/full/{}", filled + i), &[b'd'; 8000])
            .await;
    }
    filled += 20;
    publisher
        .wait_progress(20, PROGRESS_DEADLINE, "with node 3 out of room")
        .await;

    disk.grow("256m");
    cluster.restart(3).await;
    live.add(3, cluster.mqtt(3));
    wait_caught_up(&cluster, 3, 1).await;
    assert_eq!(
        retained(&cluster, 3, "rec/full").await.len(),
        filled as usize
    );
    assert_all_delivered(publisher, subscriber).await;
    cluster.kill9(3);
    drop(disk);
}
