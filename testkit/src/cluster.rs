//! A cluster of real `starling` processes on loopback, and the faults a test
//! inflicts on it: kill -9, restart, SIGSTOP/SIGCONT, real network partitions,
//! join and leave.
//!
//! Each node speaks to the others from its own loopback address (node N on
//! 127.0.0.(10+N)), so that firewall rules can cut one node off from the rest
//! while it stays alive and reachable by the test's clients on 127.0.0.1.
//!
//! Nodes are named by their node id (1..=n), as on the command line. Each has
//! its own temp dir, OS-chosen ports and log file; every log is printed when a
//! test fails. Clusters run one at a time in this binary: a handful of nodes
//! already fill a small machine, and the tests measure how long failover takes.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{http_status, Process};

/// How long a starting cluster, or a (re)started node, may take to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `node_down_after` when the config leaves it out.
pub const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(3);
/// `node_down_after` of the clusters started with `Cluster::start_fast`.
pub const FAST_DOWN_AFTER: Duration = Duration::from_millis(1500);

/// Held by each running cluster, so that clusters do not compete for the CPU
/// and skew each other's failover times.
static ONE_CLUSTER_AT_A_TIME: Semaphore = Semaphore::const_new(1);

/// How a node finds its cluster.
#[derive(Debug, Clone)]
enum Membership {
    /// `--peers`: a member of the cluster formed by the initial nodes.
    Peers(String),
    /// `--join ADDR`: joins the running cluster through a member.
    Join(String),
}

/// Node `id`'s own loopback address: 127.0.0.(10+id).
fn cluster_ip(id: u64) -> String {
    let last = u8::try_from(10 + id).expect("node ids stay below 246");
    format!("127.0.0.{last}")
}

/// One `starling` process of a cluster.
pub struct Node {
    pub id: u64,
    /// MQTT over TCP.
    pub mqtt: u16,
    /// HTTP: `/readyz`, `/metrics`, `/api/v1`.
    pub http: u16,
    /// Cluster gRPC.
    pub cluster: u16,
    membership: Membership,
    process: Process,
    /// Whether the process is SIGSTOPped.
    stopped: bool,
}

impl Node {
    fn new(id: u64, config_toml: Option<&str>) -> Node {
        let process = Process::new(
            &format!("node {id}"),
            &format!("starling-node{id}-"),
            &cluster_ip(id),
            config_toml,
        );
        Node {
            id,
            mqtt: process.mqtt,
            http: process.http,
            cluster: process.cluster,
            membership: Membership::Peers(String::new()),
            process,
            stopped: false,
        }
    }

    /// The loopback address this node's cluster traffic comes from and goes to.
    pub fn cluster_ip(&self) -> String {
        cluster_ip(self.id)
    }

    /// `127.0.0.(10+id):PORT` of the cluster listener.
    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.cluster_ip(), self.cluster)
    }

    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Waits until the process exits on its own, at most `timeout`; its exit
    /// status, or `None` if it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                return Some(status);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the node has logged so far (all its runs).
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// Its data directory, kept across restarts.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.process.data_dir()
    }

    fn spawn(&mut self) {
        let mut args = vec!["--node-id".to_owned(), self.id.to_string()];
        match &self.membership {
            Membership::Peers(peers) => args.extend(["--peers".to_owned(), peers.clone()]),
            Membership::Join(addr) => args.extend(["--join".to_owned(), addr.clone()]),
        }
        self.process.spawn(&self.cluster_ip(), &args);
        self.stopped = false;
    }

    fn kill9(&mut self) {
        self.process.kill9();
        self.stopped = false;
    }

    fn signal(&mut self, signal: &str) {
        self.process.signal(signal);
    }
}

/// A running cluster. Its processes are killed when it is dropped.
pub struct Cluster {
    nodes: BTreeMap<u64, Node>,
    config_toml: Option<String>,
    down_after: Duration,
    /// Declared last: released only once every process is gone.
    _turn: SemaphorePermit<'static>,
}

impl Cluster {
    /// `n` nodes with the default `node_down_after` (3 s); returns once every
    /// node reports ready.
    pub async fn start(n: u64) -> Cluster {
        Cluster::launch(n, None, DEFAULT_DOWN_AFTER).await
    }

    /// `n` nodes declaring a silent peer down after `FAST_DOWN_AFTER`.
    pub async fn start_fast(n: u64) -> Cluster {
        Cluster::start_with_down_after(n, FAST_DOWN_AFTER).await
    }

    /// `n` nodes, each with `toml` as its config file.
    pub async fn start_with_config(n: u64, toml: &str) -> Cluster {
        Cluster::launch(n, Some(toml.to_owned()), DEFAULT_DOWN_AFTER).await
    }

    /// `n` nodes declaring a silent peer down after `down_after`.
    pub async fn start_with_down_after(n: u64, down_after: Duration) -> Cluster {
        let toml = format!(
            "[cluster]\nnode_down_after_ms = {}\n",
            down_after.as_millis()
        );
        Cluster::launch(n, Some(toml), down_after).await
    }

    /// `n` nodes, each with `toml` as its config file, which sets
    /// `node_down_after` to `down_after` (or leaves the default).
    pub async fn start_with_config_and_down_after(
        n: u64,
        toml: &str,
        down_after: Duration,
    ) -> Cluster {
        Cluster::launch(n, Some(toml.to_owned()), down_after).await
    }

    async fn launch(n: u64, config_toml: Option<String>, down_after: Duration) -> Cluster {
        assert!(n >= 1, "a cluster has at least one node");
        let turn = ONE_CLUSTER_AT_A_TIME
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut nodes: BTreeMap<u64, Node> = (1..=n)
            .map(|id| (id, Node::new(id, config_toml.as_deref())))
            .collect();
        let peers = nodes
            .values()
            .map(|node| format!("{}={}", node.id, node.cluster_addr()))
            .collect::<Vec<_>>()
            .join(",");
        for node in nodes.values_mut() {
            node.membership = Membership::Peers(peers.clone());
        }
        let mut cluster = Cluster {
            nodes,
            config_toml,
            down_after,
            _turn: turn,
        };
        let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
        cluster.start_together(&ids).await;
        cluster
    }

    /// Spawns `ids` in a random order (a cluster must form whichever node
    /// comes first), then waits until each is ready.
    async fn start_together(&mut self, ids: &[u64]) {
        let order = shuffled(ids);
        eprintln!("cluster: starting nodes in the order {order:?}");
        for id in &order {
            self.node_mut(*id).spawn();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for id in &order {
            self.wait_ready_until(*id, deadline).await;
        }
    }

    /// The `node_down_after` the nodes run with.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    /// The node with id `id`.
    pub fn node(&self, id: u64) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The MQTT port of node `id`.
    pub fn mqtt(&self, id: u64) -> u16 {
        self.node(id).mqtt
    }

    /// Every node id, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill9(&mut self, id: u64) {
        eprintln!("cluster: kill -9 node {id}");
        self.node_mut(id).kill9();
    }

    /// SIGTERM node `id` (a clean stop) and waits, without blocking the
    /// runtime's clients, until the process has exited.
    pub async fn sigterm(&mut self, id: u64) -> std::process::ExitStatus {
        eprintln!("cluster: kill -TERM node {id}");
        let node = self.node_mut(id);
        let status = node.process.terminate(Duration::from_secs(30)).await;
        node.stopped = false;
        status
    }

    /// Waits until node `id` exits on its own (asked to drain, say), at most
    /// `timeout`; its exit status, or `None` if it still runs.
    pub async fn wait_exit(
        &mut self,
        id: u64,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        self.node_mut(id).wait_exit(timeout).await
    }

    /// Starts a process that claims member `id`'s node id, on another port,
    /// and tries to join through member `via`: a misconfigured node, which
    /// the cluster must refuse. Not part of the cluster.
    pub fn spawn_impostor(&self, via: u64, id: u64) -> Node {
        let mut node = Node::new(id, self.config_toml.as_deref());
        node.membership = Membership::Join(self.node(via).cluster_addr());
        eprintln!("cluster: starting a second node {id}, joining through node {via}");
        node.spawn();
        node
    }

    /// Cuts node `id` off from every other node with firewall rules on their
    /// loopback addresses: it stays alive, and clients still reach it. The cut
    /// heals when the returned guard is dropped (or `heal`ed).
    pub fn cut_off(&self, id: u64) -> Cut {
        let me = self.node(id).cluster_ip();
        let others: Vec<String> = self
            .nodes
            .values()
            .filter(|node| node.id != id)
            .map(Node::cluster_ip)
            .collect();
        eprintln!("cluster: cutting node {id} ({me}) off from {others:?}");
        let mut links = Vec::new();
        for other in &others {
            links.push((me.clone(), other.clone()));
            links.push((other.clone(), me.clone()));
        }
        Cut::install(&links)
    }

    /// Drops every packet from node `from`'s cluster address to node `to`'s,
    /// for each pair of `links` (one direction each: list both for a full
    /// cut). Heals when the returned guard is dropped (or `heal`ed).
    pub fn drop_links(&self, links: &[(u64, u64)]) -> Cut {
        eprintln!("cluster: dropping packets on the links (from, to) {links:?}");
        let links: Vec<(String, String)> = links
            .iter()
            .map(|(from, to)| (self.node(*from).cluster_ip(), self.node(*to).cluster_ip()))
            .collect();
        Cut::install(&links)
    }

    /// SIGKILL every running node.
    pub fn kill9_all(&mut self) {
        let running: Vec<u64> = self
            .nodes
            .values()
            .filter(|node| node.is_running())
            .map(|node| node.id)
            .collect();
        for id in running {
            self.kill9(id);
        }
    }

    /// Starts node `id` again with the same data dir, ports and flags, without
    /// waiting for it: for a node that is not expected to become ready.
    pub fn respawn(&mut self, id: u64) {
        eprintln!("cluster: starting node {id} again");
        self.node_mut(id).spawn();
    }

    /// Starts node `id` again with the same data dir, ports and flags and waits
    /// until it is ready.
    pub async fn restart(&mut self, id: u64) {
        eprintln!("cluster: restarting node {id}");
        self.node_mut(id).spawn();
        self.wait_ready(id).await;
    }

    /// Starts every stopped node again at once (alone, none of them could reach
    /// a quorum) and waits until all are ready.
    pub async fn restart_all(&mut self) {
        let down: Vec<u64> = self
            .nodes
            .values()
            .filter(|node| !node.is_running())
            .map(|node| node.id)
            .collect();
        self.start_together(&down).await;
    }

    /// Starts node `id` again, stopped and removed from the membership, as a
    /// new member joining through member `via` (`--join`), and waits until it
    /// is ready: how a node whose data directory was lost comes back.
    pub async fn rejoin(&mut self, id: u64, via: u64) {
        eprintln!("cluster: node {id} joins again through node {via}");
        let addr = self.node(via).cluster_addr();
        let node = self.node_mut(id);
        node.membership = Membership::Join(addr);
        node.spawn();
        self.wait_ready(id).await;
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn sigstop(&mut self, id: u64) {
        eprintln!("cluster: kill -STOP node {id}");
        let node = self.node_mut(id);
        node.signal("STOP");
        node.stopped = true;
    }

    /// SIGCONT after `sigstop`.
    pub fn sigcont(&mut self, id: u64) {
        eprintln!("cluster: kill -CONT node {id}");
        let node = self.node_mut(id);
        node.signal("CONT");
        node.stopped = false;
    }

    /// Waits until `/readyz` of node `id` answers 200.
    pub async fn wait_ready(&mut self, id: u64) {
        self.wait_ready_until(id, Instant::now() + READY_TIMEOUT)
            .await;
    }

    async fn wait_ready_until(&mut self, id: u64, deadline: Instant) {
        let started = Instant::now();
        loop {
            self.node_mut(id).process.assert_running();
            if self.readyz(id).await == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} not ready on /readyz after {:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` of node `id` answers anything but 200 (or nothing);
    /// returns that answer and how long it took. Panics after `timeout`.
    pub async fn wait_not_ready(&self, id: u64, timeout: Duration) -> (Option<u16>, Duration) {
        let started = Instant::now();
        loop {
            let status = self.readyz(id).await;
            if status != Some(200) {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "node {id} still ready on /readyz after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s `/metrics` text; panics if it does not answer.
    pub async fn metrics(&self, id: u64) -> String {
        let (_, text) = http_request(
            self.node(id).http,
            "GET",
            "/metrics",
            Duration::from_secs(2),
        )
        .await
        .unwrap_or_else(|| panic!("node {id} does not answer /metrics"));
        text
    }

    /// Waits until `holds` accepts node `id`'s `/metrics` text, at most
    /// `timeout`; panics naming `what` after that.
    pub async fn wait_metrics(
        &self,
        id: u64,
        timeout: Duration,
        what: &str,
        holds: impl Fn(&str) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let text = self.metrics(id).await;
            if holds(&text) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {id}: {what} not seen in /metrics within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The status of node `id`'s `/readyz`, `None` if it does not answer.
    pub async fn readyz(&self, id: u64) -> Option<u16> {
        http_status(self.node(id).http, "/readyz").await
    }

    /// Starts one more node that joins the cluster through member `via`'s
    /// cluster address, with the same config; returns its id once it is ready.
    pub async fn add_joining_node(&mut self, via: u64) -> u64 {
        let id = self.spawn_joining_node(via, None);
        self.wait_ready(id).await;
        id
    }

    /// Starts one more node that tries to join through member `via` with
    /// `config_toml` (the cluster's own when `None`), without waiting for it:
    /// for a node that must not get in. Returns its id.
    pub fn spawn_joining_node(&mut self, via: u64, config_toml: Option<&str>) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        let toml = config_toml.or(self.config_toml.as_deref());
        let mut node = Node::new(id, toml);
        node.membership = Membership::Join(self.node(via).cluster_addr());
        eprintln!("cluster: starting node {id}, joining through node {via}");
        node.spawn();
        self.nodes.insert(id, node);
        id
    }

    /// `POST /api/v1/cluster/leave` on node `id`: its status and body.
    pub async fn leave(&self, id: u64) -> Option<(u16, String)> {
        eprintln!("cluster: node {id} leaves");
        http_request(
            self.node(id).http,
            "POST",
            "/api/v1/cluster/leave",
            Duration::from_secs(20),
        )
        .await
    }

    /// The Raft leader, as far as the running nodes' `/metrics` tell: either
    /// a majority of nodes name the same leader id in a `starling_raft_*leader`
    /// or `*leader_id` gauge, or exactly one node says `*is_leader 1`. `None`
    /// when the metrics do not say; callers then pick a node themselves.
    pub async fn leader(&self) -> Option<u64> {
        let mut named: HashMap<u64, usize> = HashMap::new();
        let mut self_declared = Vec::new();
        for node in self.nodes.values().filter(|n| n.is_running() && !n.stopped) {
            let Some((200, body)) =
                http_request(node.http, "GET", "/metrics", Duration::from_secs(2)).await
            else {
                continue;
            };
            for line in body.lines().filter(|l| !l.starts_with('#')) {
                let mut parts = line.split_whitespace();
                let (Some(series), Some(value)) = (parts.next(), parts.last()) else {
                    continue;
                };
                let Ok(value) = value.parse::<f64>() else {
                    continue;
                };
                // `starling_raft_state{what="leader_id"}` and `{what="is_leader"}`.
                let Some(what) = series
                    .strip_prefix("starling_raft_state{what=\"")
                    .and_then(|rest| rest.strip_suffix("\"}"))
                else {
                    continue;
                };
                match what {
                    "is_leader" if value == 1.0 => self_declared.push(node.id),
                    "leader_id" => {
                        let id = value as u64;
                        if value == id as f64 && self.nodes.contains_key(&id) {
                            *named.entry(id).or_default() += 1;
                        }
                    }
                    _ => {}
                }
            }
        }
        let majority = self.nodes.len() / 2 + 1;
        if let Some((id, _)) = named.into_iter().find(|(_, votes)| *votes >= majority) {
            return Some(id);
        }
        match self_declared[..] {
            [id] => Some(id),
            _ => None,
        }
    }
}

/// `ids` in a random order.
fn shuffled(ids: &[u64]) -> Vec<u64> {
    let random = std::collections::hash_map::RandomState::new();
    let mut order = ids.to_vec();
    order.sort_by_key(|id| random.hash_one(id));
    order
}

/// A hand-written HTTP/1.0 request with an empty body: the status and the body
/// of the answer, or `None` when nothing answers within `timeout`.
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    http_request_with_body(port, method, path, "", timeout).await
}

/// The same with a JSON `body`.
pub async fn http_request_with_body(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut status_line = head.lines().next()?.split_whitespace();
        if !status_line.next()?.starts_with("HTTP/") {
            return None;
        }
        let status = status_line.next()?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// A network partition made of iptables rules in a chain of its own, removed
/// when dropped. Needs root and iptables, as CI has; without them the test
/// fails rather than pretending to cut anything.
pub struct Cut {
    chain: String,
    healed: bool,
}

impl Cut {
    /// Drops packets from the first address of each pair to the second.
    fn install(links: &[(String, String)]) -> Cut {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chain = format!("STARLING_CUT_{}_{n}", std::process::id());
        iptables(&["-N", &chain]);
        for (from, to) in links {
            iptables(&["-A", &chain, "-s", from, "-d", to, "-j", "DROP"]);
        }
        iptables(&["-I", "INPUT", "-j", &chain]);
        Cut {
            chain,
            healed: false,
        }
    }

    /// Removes the rules: the node hears the others again.
    pub fn heal(mut self) {
        self.remove();
    }

    fn remove(&mut self) {
        if std::mem::replace(&mut self.healed, true) {
            return;
        }
        eprintln!("cluster: healing the cut {}", self.chain);
        iptables(&["-D", "INPUT", "-j", &self.chain]);
        iptables(&["-F", &self.chain]);
        iptables(&["-X", &self.chain]);
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        self.remove();
    }
}

fn iptables(args: &[&str]) {
    let status = Command::new("iptables")
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            panic!("iptables {args:?}: {e} (the partition tests need iptables and root)")
        });
    assert!(status.success(), "iptables {args:?} failed: {status}");
}
