//! Membership changes (add a voter, remove a node) and the answering side of the peer
//! protocol: every message a transport delivers ends up in [`Store::handle_peer`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};

use crate::consensus::NodeId;
use crate::error::{Error, Result};
use crate::network::{decode, encode, Envelope, PeerRequest, PeerResponse};
use crate::store::{from_raft, Store};

/// How long a membership change may take (a new node catching up included).
const MEMBERSHIP_TTL: Duration = Duration::from_secs(120);

/// A refused membership change is the caller's mistake; everything else as for writes.
fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::InvalidArgument(e.to_string())
        }
        other => from_raft(other),
    }
}

impl Store {
    async fn add_voter_local(&self, id: NodeId, addr: &str) -> Result<()> {
        if addr.is_empty() {
            return Err(Error::InvalidArgument("a node needs a peer address".into()));
        }
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(membership_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    async fn remove_node_local(&self, id: NodeId) -> Result<()> {
        let member = self.members().into_iter().find(|m| m.id == id);
        let Some(member) = member else {
            return Err(Error::InvalidArgument(format!(
                "node {id} is not a member of the cluster"
            )));
        };
        let change = if member.voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    /// Runs `request` on the leader: here, or forwarded with `ttl` to answer.
    pub(crate) async fn on_leader(
        &self,
        request: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse> {
        let deadline = Instant::now() + self.timeout;
        let (leader, addr) = self.wait_leader(deadline).await?;
        if leader == self.node_id() {
            return Ok(self.answer(request).await);
        }
        self.peer(leader, &addr)
            .call(request, ttl)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Adds node `id`, reachable at `addr`, to the cluster: first as a learner that
    /// receives the log (or a snapshot), then, once it has caught up, as a voter.
    pub async fn add_voter(&self, id: NodeId, addr: &str) -> Result<()> {
        match self
            .on_leader(
                PeerRequest::AddVoter {
                    id,
                    addr: addr.to_string(),
                },
                MEMBERSHIP_TTL,
            )
            .await?
        {
            PeerResponse::Done(r) => r,
            _ => Err(Error::Unavailable("leader gave another answer".into())),
        }
    }

    /// Removes node `id` from the cluster.
    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        match self
            .on_leader(PeerRequest::RemoveNode { id }, MEMBERSHIP_TTL)
            .await?
        {
            PeerResponse::Done(r) => r,
            _ => Err(Error::Unavailable("leader gave another answer".into())),
        }
    }

    async fn answer(&self, request: PeerRequest) -> PeerResponse {
        match request {
            PeerRequest::AppendEntries(rpc) => {
                PeerResponse::AppendEntries(self.raft.append_entries(rpc).await)
            }
            PeerRequest::Vote(rpc) => PeerResponse::Vote(self.raft.vote(rpc).await),
            PeerRequest::InstallSnapshot(rpc) => {
                PeerResponse::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            PeerRequest::Write(req) => PeerResponse::Write(self.propose_local(req).await),
            PeerRequest::ReadIndex => PeerResponse::ReadIndex(self.read_index_local().await),
            PeerRequest::KeepAlive(id) => PeerResponse::Lease(if self.is_leader() {
                self.keep_alive_local(id)
            } else {
                Err(Error::NotLeader {
                    leader: self.leader(),
                })
            }),
            PeerRequest::AddVoter { id, addr } => {
                PeerResponse::Done(self.add_voter_local(id, &addr).await)
            }
            PeerRequest::RemoveNode { id } => PeerResponse::Done(self.remove_node_local(id).await),
        }
    }

    /// Answers one message from a peer (the bytes a transport delivered); the answer is
    /// the bytes to send back. Messages for another cluster or node are refused.
    pub async fn handle_peer(&self, body: &[u8]) -> Vec<u8> {
        let response = match decode::<Envelope>(body) {
            Err(e) => PeerResponse::Refused(e.to_string()),
            Ok(env) if env.cluster_id != self.cluster_id() => PeerResponse::Refused(format!(
                "message for cluster {}, this is {}",
                env.cluster_id,
                self.cluster_id()
            )),
            Ok(env) if env.to != self.node_id() => PeerResponse::Refused(format!(
                "message for node {}, this is node {}",
                env.to,
                self.node_id()
            )),
            Ok(env) => self.answer(env.request).await,
        };
        encode(&response).unwrap_or_default()
    }
}
