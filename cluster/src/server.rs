//! The cluster gRPC server: the Raft RPCs of the other members, proposals and
//! membership requests they pass to this node, and the forwarding streams.
//!
//! It is stopped together with Raft: a server left running would answer with a
//! stopped Raft, and a peer would not notice this node is gone.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest};
use openraft::Snapshot;
use serde::Serialize;
use starling_proto::cluster::raft_server::{Raft as RaftRpc, RaftServer};
use starling_proto::cluster::{
    MembershipReply, MembershipRequest, ProposeReply, ProposeRequest, RaftReply, RaftRequest,
    SnapshotChunk,
};
use starling_storage::{NodeId, Request, TypeConfig};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};
use tracing::{debug, warn, Instrument};

use crate::forward::{forward_service, ForwardHandler};
use crate::membership;
use crate::shared::Core;
use crate::timeouts;
use crate::wire::{self, Refused, SnapshotHeader, MAX_MESSAGE_BYTES, MAX_SNAPSHOT_BYTES, VERSION};

/// Serves on `listener` until `stop` turns true; with `tls`, only to members
/// that show a certificate of the cluster's CA.
pub(crate) fn spawn(
    listener: TcpListener,
    core: Arc<Core>,
    forward: Option<Arc<dyn ForwardHandler>>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, tonic::transport::Error> {
    let raft = RaftServer::new(RaftService { core })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .http2_keepalive_interval(Some(timeouts::H2_KEEPALIVE))
        .http2_keepalive_timeout(Some(timeouts::H2_KEEPALIVE))
        .add_service(raft)
        .add_optional_service(forward.map(forward_service));
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            // Raft heartbeats and small proposals must not wait for Nagle.
            let _ = stream.set_nodelay(true);
        })
    });
    let shutdown = async move {
        let _ = stop.wait_for(|stop| *stop).await;
    };
    Ok(tokio::spawn(
        async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                warn!(error = %e, "cluster server failed");
            }
        }
        .in_current_span(),
    ))
}

struct RaftService {
    core: Arc<Core>,
}

fn raft_reply<T: Serialize>(result: &T) -> Result<tonic::Response<RaftReply>, Status> {
    Ok(tonic::Response::new(RaftReply {
        version: VERSION,
        data: wire::encode(result)?,
    }))
}

fn membership_reply(
    result: &wire::MembershipResult,
) -> Result<tonic::Response<MembershipReply>, Status> {
    Ok(tonic::Response::new(MembershipReply {
        version: VERSION,
        data: wire::encode(result)?,
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, Status> {
        let request = request.into_inner();
        let rpc: AppendEntriesRequest<TypeConfig> = wire::decode(request.version, &request.data)?;
        let result = self.core.raft.append_entries(rpc).await;
        // Anything but a refusal of a stale leader means a current leader reached us.
        if matches!(&result, Ok(resp) if !matches!(resp, AppendEntriesResponse::HigherVote(_))) {
            self.core.peers.stamp_leader();
        }
        raft_reply(&result)
    }

    async fn vote(
        &self,
        request: tonic::Request<RaftRequest>,
    ) -> Result<tonic::Response<RaftReply>, Status> {
        let request = request.into_inner();
        let rpc: VoteRequest<NodeId> = wire::decode(request.version, &request.data)?;
        if let Some(candidate) = rpc.vote.leader_id().voted_for() {
            self.core.peers.stamp_candidate(candidate);
        }
        raft_reply(&self.core.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<Streaming<SnapshotChunk>>,
    ) -> Result<tonic::Response<RaftReply>, Status> {
        let mut chunks = request.into_inner();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header: SnapshotHeader = wire::decode(first.version, &first.header)?;
        // Written to storage's file as it streams, never held whole here.
        let mut data = self
            .core
            .raft
            .begin_receiving_snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let io = |e: std::io::Error| Status::internal(format!("cannot spool the snapshot: {e}"));
        data.write_all(&first.data).await.map_err(io)?;
        let mut received = first.data.len();
        while let Some(chunk) = chunks.message().await? {
            if chunk.version != VERSION {
                return Err(wire::WireError::Version(chunk.version).into());
            }
            received = received.saturating_add(chunk.data.len());
            if received > MAX_SNAPSHOT_BYTES {
                warn!(bytes = received, "snapshot stream over its bound, refused");
                return Err(Status::resource_exhausted("snapshot larger than allowed"));
            }
            data.write_all(&chunk.data).await.map_err(io)?;
        }
        data.flush().await.map_err(io)?;
        data.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
        debug!(snapshot = %header.meta, bytes = received, "received snapshot");
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: data,
        };
        let result = self
            .core
            .raft
            .install_full_snapshot(header.vote, snapshot)
            .await;
        if result.is_ok() {
            self.core.peers.stamp_leader();
        }
        raft_reply(&result)
    }

    async fn propose(
        &self,
        request: tonic::Request<ProposeRequest>,
    ) -> Result<tonic::Response<ProposeReply>, Status> {
        let request = request.into_inner();
        let batch: Request = wire::decode(request.version, &request.command)?;
        if self.core.stepping_down.load(Ordering::Relaxed) {
            // The asking node retries, and finds the next leader.
            return Ok(tonic::Response::new(ProposeReply {
                version: VERSION,
                data: wire::encode(&wire::ProposeResult::Err(Refused::NotLeader {
                    leader: None,
                }))?,
            }));
        }
        let result: wire::ProposeResult = match self.core.raft.client_write(batch).await {
            Ok(response) => Ok(response.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Refused::NotLeader {
                    leader: f.leader_id,
                })
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(Refused::Failed(e.to_string()))
            }
            Err(RaftError::Fatal(_)) => Err(Refused::Stopping),
        };
        Ok(tonic::Response::new(ProposeReply {
            version: VERSION,
            data: wire::encode(&result)?,
        }))
    }

    async fn join(
        &self,
        request: tonic::Request<MembershipRequest>,
    ) -> Result<tonic::Response<MembershipReply>, Status> {
        let request = request.into_inner();
        let join: wire::JoinRequest = wire::decode(request.version, &request.data)?;
        membership_reply(&membership::on_join(&self.core, join).await)
    }

    async fn leave(
        &self,
        request: tonic::Request<MembershipRequest>,
    ) -> Result<tonic::Response<MembershipReply>, Status> {
        let request = request.into_inner();
        let leave: wire::LeaveRequest = wire::decode(request.version, &request.data)?;
        membership_reply(&membership::on_leave(&self.core, leave).await)
    }
}
