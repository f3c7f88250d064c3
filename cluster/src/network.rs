//! The client side of the transport between members: openraft's `RaftNetwork` over
//! tonic, plus the calls the proposer and the membership code make to a leader.
//!
//! One lazily connected `Channel` per address is cached in [`Peers`] and shared by
//! every replication stream, heartbeat round and forwarded request. Every call has
//! a deadline. A successful Raft reply stamps the peer as alive; the liveness
//! monitor reads those stamps.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Snapshot, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use starling_proto::cluster::raft_client::RaftClient;
use starling_proto::cluster::{
    MembershipReply, MembershipRequest, ProposeRequest, RaftReply, RaftRequest, SnapshotChunk,
};
use starling_storage::{NodeId, PeerNode, Request, TypeConfig};
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::timeouts;
use crate::wire::{
    self, JoinRequest, LeaveRequest, MembershipResult, ProposeResult, SnapshotHeader, WireError,
    MAX_MESSAGE_BYTES, VERSION,
};

/// Snapshot bytes per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks read ahead of the stream sending a snapshot.
const SNAPSHOT_CHUNKS_AHEAD: usize = 4;

/// What this node knows of the others: a channel per address, and when each peer
/// last answered.
pub(crate) struct Peers {
    self_id: NodeId,
    /// How this node's connections to other members start: their source
    /// address, their TLS.
    dialer: crate::tls::Dialer,
    /// Channels by address. Locked only to look up or insert one.
    channels: Mutex<HashMap<String, Channel>>,
    /// When each peer last sent a successful Raft reply. Locked only to stamp or read.
    last_ok: Mutex<HashMap<NodeId, Instant>>,
    /// When a leader's AppendEntries last reached this node. Locked only to stamp
    /// or read.
    heard_leader: Mutex<Option<Instant>>,
    /// When each peer last asked this node for its vote. Apart from `last_ok`,
    /// which tells the leader which followers answer it.
    asked_vote: Mutex<HashMap<NodeId, Instant>>,
}

impl Peers {
    pub(crate) fn new(self_id: NodeId, dialer: crate::tls::Dialer) -> Peers {
        Peers {
            self_id,
            dialer,
            channels: Mutex::default(),
            last_ok: Mutex::default(),
            heard_leader: Mutex::default(),
            asked_vote: Mutex::default(),
        }
    }

    /// A client for the member at `addr`; connects on first use.
    pub(crate) fn client(
        &self,
        addr: &str,
    ) -> Result<RaftClient<Channel>, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = endpoint(addr, &self.dialer)?.connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn stamp(&self, peer: NodeId) {
        self.last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    /// When `peer` last answered a Raft RPC successfully.
    pub(crate) fn last_ok(&self, peer: NodeId) -> Option<Instant> {
        self.last_ok
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .copied()
    }

    /// Called by the server when `peer` asked for this node's vote.
    pub(crate) fn stamp_candidate(&self, peer: NodeId) {
        self.asked_vote
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer, Instant::now());
    }

    /// When `peer` was last heard from: its last successful reply to a Raft
    /// call, or its last vote request, whichever is later.
    pub(crate) fn heard_from(&self, peer: NodeId) -> Option<Instant> {
        let asked = self
            .asked_vote
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&peer)
            .copied();
        self.last_ok(peer).max(asked)
    }

    /// Called by the server when a leader's AppendEntries was accepted.
    pub(crate) fn stamp_leader(&self) {
        *self
            .heard_leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    pub(crate) fn heard_leader(&self) -> Option<Instant> {
        *self
            .heard_leader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a batch to the leader at `addr` to append as it is.
    pub(crate) async fn propose(
        &self,
        addr: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<ProposeResult, CallError> {
        let mut client = self.client(addr).map_err(CallError::address)?;
        let command = wire::encode(request)?;
        let message = ProposeRequest {
            version: VERSION,
            command,
        };
        let reply = call(timeout, message, |r| async move { client.propose(r).await }).await?;
        Ok(wire::decode(reply.version, &reply.data)?)
    }

    pub(crate) async fn join(
        &self,
        addr: &str,
        request: &JoinRequest,
        timeout: Duration,
    ) -> Result<MembershipResult, CallError> {
        let data = wire::encode(request)?;
        self.membership(addr, data, timeout, |mut client, r| async move {
            client.join(r).await
        })
        .await
    }

    pub(crate) async fn leave(
        &self,
        addr: &str,
        request: &LeaveRequest,
        timeout: Duration,
    ) -> Result<MembershipResult, CallError> {
        let data = wire::encode(request)?;
        self.membership(addr, data, timeout, |mut client, r| async move {
            client.leave(r).await
        })
        .await
    }

    /// One membership RPC (`rpc` picks which) to the member at `addr`.
    async fn membership<F, Fut>(
        &self,
        addr: &str,
        data: Bytes,
        timeout: Duration,
        rpc: F,
    ) -> Result<MembershipResult, CallError>
    where
        F: FnOnce(RaftClient<Channel>, tonic::Request<MembershipRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<MembershipReply>, Status>>,
    {
        let client = self.client(addr).map_err(CallError::address)?;
        let message = MembershipRequest {
            version: VERSION,
            data,
        };
        let reply = call(timeout, message, |r| rpc(client, r)).await?;
        Ok(wire::decode(reply.version, &reply.data)?)
    }
}

/// A lazily connected gRPC endpoint to another member, with the transport
/// settings every node-to-node channel uses. Connections start from the
/// dialer's source address when it has one: a node listening on one address
/// of a multi-homed host also talks from it, so peers and firewalls see one
/// address per node. With TLS they show this node's certificate and check the
/// member's.
pub(crate) fn endpoint(
    addr: &str,
    dialer: &crate::tls::Dialer,
) -> Result<Endpoint, tonic::transport::Error> {
    let scheme = if dialer.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = match addr.split_once("://") {
        Some((_, rest)) => format!("{scheme}://{rest}"),
        None => format!("{scheme}://{addr}"),
    };
    let endpoint = Endpoint::from_shared(uri)?
        .tcp_nodelay(true)
        .connect_timeout(timeouts::CONNECT)
        .http2_keep_alive_interval(timeouts::H2_KEEPALIVE)
        .keep_alive_timeout(timeouts::H2_KEEPALIVE)
        .keep_alive_while_idle(true)
        .local_address(dialer.source);
    match &dialer.tls {
        Some(tls) => endpoint.tls_config(tls.clone()),
        None => Ok(endpoint),
    }
}

/// The address outgoing connections start from for a node listening on
/// `listen`: that address, unless it is the wildcard one.
pub fn source_for(listen: std::net::SocketAddr) -> Option<IpAddr> {
    let ip = listen.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Why a call to another member failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// Not connected, refused, or the address is unusable.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer in time")]
    Timeout,
    #[error("{0}")]
    Status(Status),
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl CallError {
    fn address(e: tonic::transport::Error) -> CallError {
        CallError::Unreachable(e.to_string())
    }
}

impl From<Status> for CallError {
    fn from(status: Status) -> CallError {
        match status.code() {
            Code::Unavailable => CallError::Unreachable(status.message().to_owned()),
            Code::DeadlineExceeded => CallError::Timeout,
            _ => CallError::Status(status),
        }
    }
}

/// One unary call with a deadline, both as `grpc-timeout` (the server drops the
/// work) and locally (a peer that never answers).
async fn call<M, R, F, Fut>(timeout: Duration, message: M, send: F) -> Result<R, CallError>
where
    F: FnOnce(tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, send(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.into()),
        Err(_) => Err(CallError::Timeout),
    }
}

/// Hands openraft a client per peer, sharing the cached channels.
pub(crate) struct NetworkFactory {
    pub(crate) peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &PeerNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.grpc_addr.clone(),
            client: self
                .peers
                .client(&node.grpc_addr)
                .map_err(|e| e.to_string()),
            peers: self.peers.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub(crate) struct PeerClient {
    target: NodeId,
    addr: String,
    /// Why not, if the address cannot be used.
    client: Result<RaftClient<Channel>, String>,
    peers: Arc<Peers>,
}

type RpcError<E = RaftError<NodeId>> = RPCError<NodeId, PeerNode, E>;

/// An error that only says what went wrong, for openraft's error wrappers.
#[derive(Debug, thiserror::Error)]
#[error("node {target} at {addr}: {detail}")]
struct PeerFailure {
    target: NodeId,
    addr: String,
    detail: String,
}

impl PeerClient {
    fn failure(&self, detail: impl ToString) -> PeerFailure {
        PeerFailure {
            target: self.target,
            addr: self.addr.clone(),
            detail: detail.to_string(),
        }
    }

    fn client(&self) -> Result<RaftClient<Channel>, Unreachable> {
        self.client
            .clone()
            .map_err(|e| Unreachable::new(&self.failure(e)))
    }

    fn timeout(&self, action: RPCTypes, ttl: Duration) -> Timeout<NodeId> {
        Timeout {
            action,
            id: self.peers.self_id,
            target: self.target,
            timeout: ttl,
        }
    }

    /// One Raft RPC whose reply is `Result<Resp, RaftError>`.
    async fn unary<Req, Resp, F, Fut>(
        &mut self,
        action: RPCTypes,
        rpc: &Req,
        option: &RPCOption,
        send: F,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        F: FnOnce(RaftClient<Channel>, tonic::Request<RaftRequest>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<RaftReply>, Status>>,
    {
        let client = self.client()?;
        let data = wire::encode(rpc).map_err(|e| NetworkError::new(&self.failure(e)))?;
        let ttl = option.hard_ttl();
        let message = RaftRequest {
            version: VERSION,
            data,
        };
        let reply = match call(ttl, message, |r| send(client, r)).await {
            Ok(reply) => reply,
            Err(CallError::Timeout) => return Err(RPCError::Timeout(self.timeout(action, ttl))),
            Err(CallError::Unreachable(e)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&self.failure(e))))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&self.failure(e)))),
        };
        let result: Result<Resp, RaftError<NodeId>> = wire::decode(reply.version, &reply.data)
            .map_err(|e| NetworkError::new(&self.failure(e)))?;
        match result {
            Ok(resp) => {
                self.peers.stamp(self.target);
                Ok(resp)
            }
            Err(e) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
        }
    }

    /// Streams the whole snapshot in one call; the first chunk carries the vote and
    /// the metadata.
    async fn send_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        ttl: Duration,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let mut client = self.client()?;
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let header = wire::encode(&header).map_err(|e| NetworkError::new(&self.failure(e)))?;
        // Read from the snapshot's file a chunk at a time as the stream takes
        // them: a few chunks in memory, whatever the snapshot's size.
        let (chunks, to_send) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
        let mut data = snapshot.snapshot;
        let target = self.target;
        let reader = tokio::spawn(async move {
            let mut header = Some(header);
            loop {
                let mut chunk = BytesMut::with_capacity(SNAPSHOT_CHUNK_BYTES);
                while chunk.len() < SNAPSHOT_CHUNK_BYTES {
                    match data.read_buf(&mut chunk).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(target, error = %e, "cannot read the snapshot to send");
                            return;
                        }
                    }
                }
                let last = chunk.len() < SNAPSHOT_CHUNK_BYTES;
                let first = header.take();
                if chunk.is_empty() && first.is_none() {
                    return;
                }
                let message = SnapshotChunk {
                    version: VERSION,
                    header: first.unwrap_or_default(),
                    data: chunk.freeze(),
                };
                if chunks.send(message).await.is_err() || last {
                    return;
                }
            }
        });
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(to_send));
        request.set_timeout(ttl);
        let reply = match tokio::time::timeout(ttl, client.install_snapshot(request)).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => {
                return Err(match CallError::from(status) {
                    CallError::Unreachable(e) => Unreachable::new(&self.failure(e)).into(),
                    CallError::Timeout => self.timeout(RPCTypes::InstallSnapshot, ttl).into(),
                    e => NetworkError::new(&self.failure(e)).into(),
                })
            }
            Err(_) => return Err(self.timeout(RPCTypes::InstallSnapshot, ttl).into()),
        };
        reader.abort();
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            wire::decode(reply.version, &reply.data)
                .map_err(|e| NetworkError::new(&self.failure(e)))?;
        match result {
            Ok(resp) => {
                self.peers.stamp(self.target);
                Ok(resp)
            }
            Err(fatal) => Err(RemoteError::new(self.target, fatal).into()),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.unary(
            RPCTypes::AppendEntries,
            &rpc,
            &option,
            |mut c, r| async move { c.append_entries(r).await },
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.unary(RPCTypes::Vote, &rpc, &option, |mut c, r| async move {
            c.vote(r).await
        })
        .await
    }

    /// Never called: snapshots go whole through [`PeerClient::full_snapshot`].
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<RaftError<NodeId, InstallSnapshotError>>>
    {
        Err(RPCError::Network(NetworkError::new(&self.failure(
            "chunked snapshots are not used; snapshots are streamed whole",
        ))))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        mut snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        // openraft sets no deadline of its own around a snapshot transfer. The
        // data is positioned at the snapshot's first byte; what follows is it.
        let bytes = snapshot_len(&mut snapshot.snapshot)
            .await
            .map_err(|e| NetworkError::new(&self.failure(e)))?;
        let ttl = option
            .hard_ttl()
            .max(timeouts::SNAPSHOT_BASE + Duration::from_secs(bytes / (8 << 20)));
        tokio::select! {
            result = self.send_snapshot(vote, snapshot, ttl) => result,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }
}

/// The bytes from `data`'s position to its end; the position is kept.
async fn snapshot_len(data: &mut tokio::fs::File) -> std::io::Result<u64> {
    use tokio::io::AsyncSeekExt;
    let at = data.stream_position().await?;
    let end = data.seek(std::io::SeekFrom::End(0)).await?;
    data.seek(std::io::SeekFrom::Start(at)).await?;
    Ok(end.saturating_sub(at))
}
