//! Who is in the cluster: the one-time bootstrap from a static peer list, joining a
//! running cluster, leaving it, and the leader's side of join and leave requests.
//!
//! Requests reach the leader however they arrive: a member that is not the leader
//! passes a request on to the leader it knows, once; the asking node retries while
//! there is no leader or a change is in progress.

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{ChangeMembershipError, ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, ServerState};
use starling_storage::{NodeId, PeerNode};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::network::CallError;
use crate::shared::Core;
use crate::timeouts;
use crate::wire::{JoinRequest, LeaveRequest, MembershipResult, Refused};
use crate::ClusterError;

/// Initializes the cluster if this node is the one to do it and its storage is
/// new: a node alone (no peers, no join), or the lowest id of `peers`. Any other
/// node waits for the leader to contact it. Returns whether this node initialized.
pub(crate) async fn bootstrap(
    core: &Core,
    peers: &BTreeMap<NodeId, String>,
    alone: bool,
    advertise: &str,
) -> Result<bool, ClusterError> {
    let raft_error = |e: &dyn std::fmt::Display| ClusterError::Raft(e.to_string());
    if core
        .raft
        .is_initialized()
        .await
        .map_err(|e| raft_error(&e))?
    {
        return Ok(false);
    }
    let members: BTreeMap<NodeId, PeerNode> = if alone {
        BTreeMap::from([(core.id, peer_node(advertise))])
    } else if peers.keys().next() == Some(&core.id) {
        peers
            .iter()
            .map(|(id, addr)| (*id, peer_node(addr)))
            .collect()
    } else {
        info!("waiting for the bootstrap node to contact this one");
        return Ok(false);
    };
    let voters: Vec<NodeId> = members.keys().copied().collect();
    match core.raft.initialize(members).await {
        Ok(()) => {
            info!(?voters, "initialized a new cluster");
            Ok(true)
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
        Err(e) => Err(raft_error(&e)),
    }
}

fn peer_node(addr: &str) -> PeerNode {
    PeerNode {
        grpc_addr: addr.to_owned(),
    }
}

/// Where a request for the leader is carried out.
enum Route {
    Here,
    /// At the leader, which listens at this address.
    Leader(String),
    /// Nowhere yet: no leader known (or the request was already relayed once).
    Nowhere(Option<NodeId>),
}

fn route(core: &Core, relayed: bool) -> Route {
    let metrics = core.raft.metrics();
    let m = metrics.borrow();
    if m.state == ServerState::Leader {
        return Route::Here;
    }
    match m.current_leader {
        Some(leader) if leader != core.id && !relayed => {
            match m.membership_config.membership().get_node(&leader) {
                Some(node) => Route::Leader(node.grpc_addr.clone()),
                None => Route::Nowhere(Some(leader)),
            }
        }
        leader => Route::Nowhere(leader),
    }
}

fn refused(e: RaftError<NodeId, ClientWriteError<NodeId, PeerNode>>) -> Refused {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Refused::NotLeader {
            leader: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(e),
        )) => Refused::Busy(e.to_string()),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Refused::Failed(e.to_string())
        }
        RaftError::Fatal(_) => Refused::Stopping,
    }
}

fn relay_failed(e: CallError) -> Refused {
    Refused::Busy(format!("leader: {e}"))
}

/// A `Join` request arriving at this node.
pub(crate) async fn on_join(core: &Core, request: JoinRequest) -> MembershipResult {
    match route(core, request.relayed) {
        Route::Here => join_here(core, request.node_id, &request.addr).await,
        Route::Leader(addr) => {
            let relayed = JoinRequest {
                relayed: true,
                ..request
            };
            core.peers
                .join(&addr, &relayed, timeouts::MEMBERSHIP_RELAY)
                .await
                .unwrap_or_else(|e| Err(relay_failed(e)))
        }
        Route::Nowhere(leader) => Err(Refused::NotLeader { leader }),
    }
}

/// A `Leave` request arriving at this node.
pub(crate) async fn on_leave(core: &Core, request: LeaveRequest) -> MembershipResult {
    match route(core, request.relayed) {
        Route::Here => leave_here(core, request.node_id).await,
        Route::Leader(addr) => {
            let relayed = LeaveRequest {
                relayed: true,
                ..request
            };
            core.peers
                .leave(&addr, &relayed, timeouts::MEMBERSHIP_RELAY)
                .await
                .unwrap_or_else(|e| Err(relay_failed(e)))
        }
        Route::Nowhere(leader) => Err(Refused::NotLeader { leader }),
    }
}

/// On the leader: makes `id` a voter, first as a learner that catches up.
async fn join_here(core: &Core, id: NodeId, addr: &str) -> MembershipResult {
    let membership = core.raft.metrics().borrow().membership_config.clone();
    let membership = membership.membership();
    if let Some(existing) = membership.get_node(&id) {
        if existing.grpc_addr != addr {
            // Two processes with one id would split the member's votes and
            // log between them: the second one is a configuration mistake.
            warn!(
                node = id,
                addr,
                member = %existing.grpc_addr,
                "refused a node that claims a member's id from another address"
            );
            return Err(Refused::Failed(format!(
                "node id {id} is already a member of the cluster, at {}; give this node \
                 another id, or remove the member first (DELETE /api/v1/cluster/members/{id})",
                existing.grpc_addr
            )));
        }
        if membership.voter_ids().any(|v| v == id) {
            return Ok(());
        }
    }
    info!(node = id, addr, "adding a node as learner");
    match tokio::time::timeout(
        timeouts::MEMBERSHIP_STEP,
        core.raft.add_learner(id, peer_node(addr), true),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(refused(e)),
        Err(_) => return Err(Refused::Busy("the new node is still catching up".into())),
    }
    info!(node = id, "promoting the learner to voter");
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    match tokio::time::timeout(
        timeouts::MEMBERSHIP_STEP,
        core.raft.change_membership(change, true),
    )
    .await
    {
        Ok(Ok(_)) => {
            info!(node = id, "node joined as a voter");
            warn_if_even(core);
            Ok(())
        }
        Ok(Err(e)) => Err(refused(e)),
        Err(_) => Err(Refused::Busy(
            "the membership change is still committing".into(),
        )),
    }
}

/// Warns when the voters are an even number: four nodes tolerate one failure,
/// as three do, with one more node to lose.
fn warn_if_even(core: &Core) {
    let voters = core
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    if voters > 1 && voters % 2 == 0 {
        warn!(
            voters,
            "an even number of voters tolerates no more failures than one fewer; \
             add or remove a node"
        );
    }
}

/// On the leader: removes `id` from the membership altogether.
async fn leave_here(core: &Core, id: NodeId) -> MembershipResult {
    let membership = core.raft.metrics().borrow().membership_config.clone();
    let membership = membership.membership();
    if membership.get_node(&id).is_none() {
        return Ok(());
    }
    let ids = BTreeSet::from([id]);
    let change = if membership.voter_ids().any(|v| v == id) {
        ChangeMembers::RemoveVoters(ids)
    } else {
        ChangeMembers::RemoveNodes(ids)
    };
    info!(node = id, "removing a node from the cluster");
    match tokio::time::timeout(
        timeouts::MEMBERSHIP_STEP,
        core.raft.change_membership(change, false),
    )
    .await
    {
        Ok(Ok(_)) => {
            info!(node = id, "node removed");
            Ok(())
        }
        Ok(Err(e)) => Err(refused(e)),
        Err(_) => Err(Refused::Busy(
            "the membership change is still committing".into(),
        )),
    }
}

/// Asks the member at `seed` to make this node a voter, until it is one or
/// `deadline` passes.
pub(crate) async fn join(
    core: &Core,
    seed: &str,
    advertise: &str,
    deadline: Instant,
) -> Result<(), ClusterError> {
    let request = JoinRequest {
        node_id: core.id,
        addr: advertise.to_owned(),
        relayed: false,
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClusterError::Unavailable);
        }
        let why = match core
            .peers
            .join(
                seed,
                &request,
                remaining.min(timeouts::MEMBERSHIP_RELAY + timeouts::MEMBERSHIP_RETRY_PAUSE),
            )
            .await
        {
            Ok(Ok(())) => {
                info!(seed, "joined the cluster");
                return Ok(());
            }
            Ok(Err(Refused::Failed(e))) => return Err(ClusterError::Membership(e)),
            Ok(Err(refused)) => refused.to_string(),
            Err(e) => e.to_string(),
        };
        debug!(seed, why, "join not done yet; retrying");
        tokio::time::sleep_until((Instant::now() + timeouts::MEMBERSHIP_RETRY_PAUSE).min(deadline))
            .await;
    }
}

/// Removes this node from the cluster through the leader, retrying until
/// `deadline` while there is no leader or a change is in progress.
pub(crate) async fn leave(core: &Core, deadline: Instant) -> Result<(), ClusterError> {
    remove(core, core.id, deadline).await
}

/// Removes node `node_id` (this one or another, such as a dead member) from
/// the cluster through the leader, retrying likewise.
pub(crate) async fn remove(
    core: &Core,
    node_id: u64,
    deadline: Instant,
) -> Result<(), ClusterError> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClusterError::Unavailable);
        }
        let result = match route(core, false) {
            Route::Here => leave_here(core, node_id).await,
            Route::Leader(addr) => {
                // Sent to the leader itself: it must not pass it on.
                let request = LeaveRequest {
                    node_id,
                    relayed: true,
                };
                core.peers
                    .leave(&addr, &request, remaining.min(timeouts::MEMBERSHIP_RELAY))
                    .await
                    .unwrap_or_else(|e| Err(relay_failed(e)))
            }
            Route::Nowhere(leader) => Err(Refused::NotLeader { leader }),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(Refused::Failed(e)) => return Err(ClusterError::Membership(e)),
            Err(Refused::Stopping) if *core.stopping.borrow() => {
                return Err(ClusterError::ShuttingDown)
            }
            Err(why) => debug!(%why, "leave not done yet; retrying"),
        }
        tokio::time::sleep_until((Instant::now() + timeouts::MEMBERSHIP_RETRY_PAUSE).min(deadline))
            .await;
    }
}
