//! Multi-node clusters in one process, over real gRPC on loopback: bootstrap,
//! elections, forwarding proposals to the leader, catch-up after restarts (from the
//! log and by snapshot), liveness events, quorum loss, join and leave.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{command, position_in_reply, Journal};
use starling_cluster::{ClusterError, ClusterEvent, Node, NodeConfig, Tuning};
use tempfile::TempDir;
use tokio::sync::broadcast;

const DOWN_AFTER: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(20);

/// A port the OS picked and released, for a node to bind (and bind again after a
/// restart, which a port 0 listener could not).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

struct Member {
    addr: SocketAddr,
    dir: PathBuf,
    node: Option<Node>,
    app: Arc<Journal>,
}

struct Cluster {
    _root: TempDir,
    peers: BTreeMap<u64, String>,
    members: BTreeMap<u64, Member>,
    tuning: Tuning,
    down_after: Duration,
}

impl Cluster {
    /// Prepares `n` members (ids 1..=n) without starting them.
    fn new(n: u64, tuning: Tuning, down_after: Duration) -> Cluster {
        let root = TempDir::new().expect("temp dir");
        let mut members = BTreeMap::new();
        for id in 1..=n {
            members.insert(id, Cluster::member(&root, id));
        }
        let peers = members
            .iter()
            .map(|(id, m)| (*id, m.addr.to_string()))
            .collect();
        Cluster {
            _root: root,
            peers,
            members,
            tuning,
            down_after,
        }
    }

    fn member(root: &TempDir, id: u64) -> Member {
        Member {
            addr: free_addr(),
            dir: root.path().join(format!("node-{id}")),
            node: None,
            app: Arc::new(Journal::default()),
        }
    }

    /// Starts every member, in a random order, and waits until all are ready.
    async fn start_all(n: u64, tuning: Tuning) -> Cluster {
        Cluster::start_all_with(n, tuning, DOWN_AFTER).await
    }

    async fn start_all_with(n: u64, tuning: Tuning, down_after: Duration) -> Cluster {
        let mut cluster = Cluster::new(n, tuning, down_after);
        for id in shuffled(cluster.members.keys().copied().collect()) {
            cluster.start(id).await;
        }
        cluster.wait_all_ready().await;
        cluster
    }

    fn config(&self, id: u64) -> NodeConfig {
        let m = &self.members[&id];
        NodeConfig {
            node_id: id,
            data_dir: m.dir.clone(),
            max_batch: 256,
            listen: m.addr,
            peers: self.peers.clone(),
            node_down_after: self.down_after,
            ..NodeConfig::default()
        }
    }

    /// Starts member `id` from its data directory, with an empty journal that the
    /// snapshot and the log fill again.
    async fn start(&mut self, id: u64) {
        let config = self.config(id);
        self.start_with(id, config).await;
    }

    async fn start_with(&mut self, id: u64, config: NodeConfig) {
        let app = Arc::new(Journal::default());
        let node = Node::builder(config, app.clone())
            .tuning(self.tuning.clone())
            .start()
            .await
            .expect("node starts");
        let m = self.members.get_mut(&id).expect("member");
        m.app = app;
        m.node = Some(node);
    }

    async fn stop(&mut self, id: u64) {
        let node = self.members.get_mut(&id).and_then(|m| m.node.take());
        if let Some(node) = node {
            node.shutdown().await;
        }
    }

    fn node(&self, id: u64) -> &Node {
        self.members[&id].node.as_ref().expect("running")
    }

    fn running(&self) -> Vec<u64> {
        self.members
            .iter()
            .filter(|(_, m)| m.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    async fn wait_all_ready(&self) {
        for id in self.running() {
            self.node(id)
                .wait_ready(WAIT)
                .await
                .unwrap_or_else(|e| panic!("node {id} not ready: {e}"));
        }
    }

    /// Waits until every running member names the same running leader.
    async fn wait_leader(&self) -> u64 {
        let running = self.running();
        eventually("one leader known to all", WAIT, || {
            let leaders: Vec<_> = running
                .iter()
                .map(|id| self.node(*id).status().leader)
                .collect();
            let first = leaders[0]?;
            let agreed = leaders.iter().all(|l| *l == Some(first))
                && running.contains(&first)
                && self.node(first).status().is_leader
                && running.iter().all(|id| self.node(*id).is_ready());
            agreed.then_some(first)
        })
        .await
    }

    /// Waits until every running member has applied the same journal, of `len`
    /// commands, and returns it.
    async fn wait_same_journal(&self, len: usize) -> Vec<Vec<u8>> {
        let running = self.running();
        eventually("the same journal everywhere", WAIT, || {
            let first = self.members[&running[0]].app.applied();
            let same = first.len() == len
                && running
                    .iter()
                    .all(|id| self.members[id].app.applied() == first);
            same.then_some(first)
        })
        .await
    }
}

/// Polls `check` until it yields, failing the test after `timeout`.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for an event matching `wanted`, skipping others.
async fn wait_event(
    events: &mut broadcast::Receiver<ClusterEvent>,
    timeout: Duration,
    wanted: ClusterEvent,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Ok(event)) if event == wanted => return,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("event channel: {e}"),
            Err(_) => panic!("no {wanted:?} within {timeout:?}"),
        }
    }
}

/// A random order, printed so that a failing order can be recognized.
fn shuffled(mut ids: Vec<u64>) -> Vec<u64> {
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos() as u64
        | 1;
    for i in (1..ids.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        ids.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    println!("start order: {ids:?}");
    ids
}

/// Proposes `count` commands numbered from `first` on `node`, one at a time, and
/// checks each reply answers its own command.
async fn propose_on(node: &Node, first: usize, count: usize) {
    for i in first..first + count {
        let reply = node
            .propose(command(i))
            .await
            .unwrap_or_else(|e| panic!("proposal {i} on node {}: {e}", node.node_id()));
        position_in_reply(&reply, &command(i));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_in_any_order_initialize_once_and_apply_the_same_commands() {
    let cluster = Cluster::start_all(3, Tuning::default()).await;
    let leader = cluster.wait_leader().await;
    println!("leader: {leader}");

    let initialized: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| cluster.node(*id).status().initialized_here)
        .collect();
    assert_eq!(initialized, vec![1], "only the lowest id initializes");
    for id in cluster.running() {
        let members = cluster.node(id).members();
        let voters: Vec<u64> = members.iter().filter(|m| m.2).map(|m| m.0).collect();
        assert_eq!(voters, vec![1, 2, 3], "voters seen by node {id}");
        assert_eq!(cluster.node(id).node_id(), id);
    }

    // Proposals on every node at once, each answered with its own reply.
    let tasks: Vec<_> = cluster
        .running()
        .into_iter()
        .map(|id| {
            let node = cluster.node(id).clone();
            tokio::spawn(async move { propose_on(&node, id as usize * 1000, 30).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("proposer task");
    }
    let journal = cluster.wait_same_journal(90).await;
    for id in 1..=3usize {
        for i in id * 1000..id * 1000 + 30 {
            assert_eq!(
                journal.iter().filter(|c| **c == command(i)).count(),
                1,
                "command {i} applied once"
            );
        }
    }
    for id in cluster.running() {
        assert!(cluster.node(id).has_quorum(), "node {id} has a quorum");
    }

    // A restart of the whole cluster initializes nothing again.
    let mut cluster = cluster;
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in shuffled(vec![1, 2, 3]) {
        cluster.start(id).await;
    }
    cluster.wait_all_ready().await;
    for id in cluster.running() {
        assert!(!cluster.node(id).status().initialized_here);
    }
    cluster.wait_same_journal(90).await;
    propose_on(cluster.node(2), 9000, 1).await;
    cluster.wait_same_journal(91).await;
    for id in cluster.running() {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_proposals_continue() {
    // The default: time for an election, and for the leader's own shutdown.
    let down_after = NodeConfig::default().node_down_after;
    let mut cluster = Cluster::start_all_with(3, Tuning::default(), down_after).await;
    let old = cluster.wait_leader().await;
    propose_on(cluster.node(old), 0, 5).await;
    let survivors: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != old)
        .collect();

    // A proposal made just as the leader goes is retried on the next leader.
    let during = {
        let node = cluster.node(survivors[0]).clone();
        tokio::spawn(async move { node.propose(command(100)).await })
    };
    cluster.stop(old).await;
    let reply = during
        .await
        .expect("task")
        .expect("committed by the next leader");
    position_in_reply(&reply, &command(100));

    let new = cluster.wait_leader().await;
    assert_ne!(new, old);
    propose_on(cluster.node(survivors[0]), 200, 5).await;
    propose_on(cluster.node(survivors[1]), 300, 5).await;
    cluster.wait_same_journal(16).await;
    for id in cluster.running() {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_by_snapshot_and_from_the_log() {
    let tuning = Tuning {
        snapshot_after_entries: 20,
        entries_kept_after_snapshot: 5,
        ..Tuning::default()
    };
    let mut cluster = Cluster::start_all(3, tuning).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    propose_on(cluster.node(leader), 0, 5).await;
    cluster.wait_same_journal(5).await;
    let left_at = cluster.node(follower).status().last_log_index.expect("log");
    cluster.stop(follower).await;

    // Far more entries than the leader keeps after a snapshot.
    propose_on(cluster.node(leader), 5, 60).await;
    eventually("the leader purged past the stopped follower", WAIT, || {
        let status = cluster.node(leader).status();
        (status.purged_index > Some(left_at)).then_some(())
    })
    .await;
    cluster.start(follower).await;
    cluster.wait_same_journal(65).await;
    let status = cluster.node(follower).status();
    assert!(
        status.snapshot_index > Some(left_at),
        "caught up by snapshot: {status:?}"
    );

    // A short absence is caught up from the log.
    let snapshot_before = cluster.node(follower).status().snapshot_index;
    cluster.stop(follower).await;
    propose_on(cluster.node(leader), 65, 3).await;
    cluster.start(follower).await;
    cluster.wait_same_journal(68).await;
    assert_eq!(
        cluster.node(follower).status().started_from_snapshot,
        snapshot_before,
        "restored its own snapshot"
    );
    cluster
        .node(follower)
        .wait_ready(WAIT)
        .await
        .expect("ready");
    for id in cluster.running() {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_a_stopped_follower_down_and_up_again() {
    let mut cluster = Cluster::start_all(3, Tuning::default()).await;
    let leader = cluster.wait_leader().await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    let mut events = cluster.node(leader).events();

    let stopped_at = Instant::now();
    cluster.stop(follower).await;
    wait_event(
        &mut events,
        DOWN_AFTER + Duration::from_secs(1),
        ClusterEvent::PeerDown { node: follower },
    )
    .await;
    assert!(stopped_at.elapsed() >= DOWN_AFTER - Duration::from_millis(200));
    // Two of three still make a quorum.
    assert!(cluster.node(leader).has_quorum());

    cluster.start(follower).await;
    wait_event(&mut events, WAIT, ClusterEvent::PeerUp { node: follower }).await;
    for id in cluster.running() {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_quorum_says_so_and_refuses_proposals_in_bounded_time() {
    let mut cluster = Cluster::start_all(3, Tuning::default()).await;
    let leader = cluster.wait_leader().await;
    propose_on(cluster.node(leader), 0, 3).await;
    // Keep the leader alone: it stays leader, but no quorum acknowledges it.
    let lone = leader;
    let mut events = cluster.node(lone).events();
    for id in cluster.running().into_iter().filter(|id| *id != lone) {
        cluster.stop(id).await;
    }
    wait_event(
        &mut events,
        DOWN_AFTER + Duration::from_secs(2),
        ClusterEvent::QuorumLost,
    )
    .await;
    assert!(!cluster.node(lone).has_quorum());
    assert!(!cluster.node(lone).is_ready());

    let started = Instant::now();
    let result = cluster.node(lone).propose(command(10)).await;
    assert!(
        matches!(result, Err(ClusterError::Unavailable)),
        "{result:?}"
    );
    assert!(started.elapsed() < DOWN_AFTER + Duration::from_secs(2));

    // One peer back: a quorum again.
    let back = cluster
        .members
        .keys()
        .copied()
        .find(|id| *id != lone)
        .expect("peer");
    cluster.start(back).await;
    wait_event(&mut events, WAIT, ClusterEvent::QuorumRegained).await;
    cluster.wait_leader().await;
    propose_on(cluster.node(lone), 20, 1).await;
    propose_on(cluster.node(back), 21, 1).await;
    for id in cluster.running() {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_the_quorum_refuses_proposals_in_bounded_time() {
    let mut cluster = Cluster::start_all(3, Tuning::default()).await;
    let leader = cluster.wait_leader().await;
    let lone = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    for id in cluster.running().into_iter().filter(|id| *id != lone) {
        cluster.stop(id).await;
    }
    eventually(
        "the follower notices",
        DOWN_AFTER + Duration::from_secs(2),
        || (!cluster.node(lone).has_quorum()).then_some(()),
    )
    .await;
    let started = Instant::now();
    let result = cluster.node(lone).propose(command(1)).await;
    assert!(
        matches!(result, Err(ClusterError::Unavailable)),
        "{result:?}"
    );
    assert!(started.elapsed() < DOWN_AFTER + Duration::from_secs(2));
    cluster.stop(lone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_voter_and_leaves_again() {
    let mut cluster = Cluster::start_all(3, Tuning::default()).await;
    let leader = cluster.wait_leader().await;
    propose_on(cluster.node(leader), 0, 10).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");

    // The fourth node asks a follower, which passes the request to the leader.
    let member = Cluster::member(&cluster._root, 4);
    let join_config = |m: &Member| NodeConfig {
        node_id: 4,
        data_dir: m.dir.clone(),
        max_batch: 256,
        listen: m.addr,
        join: Some(cluster.peers[&follower].clone()),
        node_down_after: DOWN_AFTER,
        ..NodeConfig::default()
    };
    let config = join_config(&member);
    cluster.members.insert(4, member);
    cluster.start_with(4, config.clone()).await;
    let voters = |c: &Cluster, id: u64| -> Vec<u64> {
        c.node(id)
            .members()
            .iter()
            .filter(|m| m.2)
            .map(|m| m.0)
            .collect()
    };
    assert_eq!(voters(&cluster, leader), vec![1, 2, 3, 4]);
    cluster.node(4).wait_ready(WAIT).await.expect("ready");
    propose_on(cluster.node(4), 100, 3).await;
    cluster.wait_same_journal(13).await;

    // Joining again after a restart is harmless.
    cluster.stop(4).await;
    cluster.start_with(4, config).await;
    cluster.node(4).wait_ready(WAIT).await.expect("ready again");
    assert_eq!(voters(&cluster, leader), vec![1, 2, 3, 4]);

    cluster.node(4).leave().await.expect("leave");
    eventually("node 4 gone from every member's view", WAIT, || {
        [1, 2, 3]
            .iter()
            .all(|id| cluster.node(*id).members().iter().all(|m| m.0 != 4))
            .then_some(())
    })
    .await;
    cluster.stop(4).await;
    cluster.members.remove(&4);

    // The leader itself leaves: the others elect a new one and go on.
    let leader = cluster.wait_leader().await;
    cluster.node(leader).leave().await.expect("leader leaves");
    let rest: Vec<u64> = cluster
        .running()
        .into_iter()
        .filter(|id| *id != leader)
        .collect();
    eventually("a new leader among the rest", WAIT, || {
        let l = cluster.node(rest[0]).status().leader?;
        (rest.contains(&l) && cluster.node(rest[1]).status().leader == Some(l)).then_some(())
    })
    .await;
    assert_eq!(voters(&cluster, rest[0]), rest);
    cluster.stop(leader).await;
    propose_on(cluster.node(rest[0]), 200, 2).await;
    propose_on(cluster.node(rest[1]), 300, 2).await;
    cluster.wait_same_journal(17).await;
    for id in cluster.running() {
        cluster.stop(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_tolerate_two_stopped() {
    let mut cluster = Cluster::start_all(5, Tuning::default()).await;
    let leader = cluster.wait_leader().await;
    propose_on(cluster.node(leader), 0, 5).await;
    let follower = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("follower");
    cluster.stop(leader).await;
    cluster.stop(follower).await;
    cluster.wait_leader().await;
    for (n, id) in cluster.running().into_iter().enumerate() {
        propose_on(cluster.node(id), 100 * (n + 1), 2).await;
    }
    cluster.wait_same_journal(11).await;
    for id in cluster.running() {
        assert!(cluster.node(id).has_quorum());
        cluster.stop(id).await;
    }
}

/// Large commands proposed at once are split into entries bounded in bytes,
/// not only in count: one entry of thousands of large publishes would pass the
/// gRPC message limit and wedge replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commands_form_entries_bounded_in_bytes_and_replicate() {
    const COMMANDS: usize = 48;
    const SIZE: usize = 256 * 1024;
    const LIMIT: usize = 1024 * 1024;
    let tuning = Tuning {
        max_batch_bytes: LIMIT,
        ..Tuning::default()
    };
    let cluster = Cluster::start_all(3, tuning).await;
    let leader = cluster.wait_leader().await;
    let proposer = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let node = cluster.node(proposer).clone();
    let before = node.stats();
    let big = |i: usize| {
        let mut command = command(i);
        command.resize(SIZE, b'.');
        command
    };
    let tasks: Vec<_> = (0..COMMANDS)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { node.propose(big(i)).await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        task.await.expect("proposer task").expect("committed");
    }
    let journal = cluster.wait_same_journal(COMMANDS).await;
    for i in 0..COMMANDS {
        assert_eq!(
            journal.iter().filter(|c| **c == big(i)).count(),
            1,
            "command {i}"
        );
    }
    let after = node.stats();
    let batches = after.batches - before.batches;
    let per_entry = LIMIT / SIZE;
    assert!(
        batches >= (COMMANDS / per_entry) as u64,
        "{COMMANDS} commands of {SIZE} bytes in {batches} entries: more than {LIMIT} bytes in one"
    );
}
