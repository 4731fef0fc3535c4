//! How store nodes talk to each other. A [`Transport`] carries opaque request bytes to a
//! peer and brings its answer back; the HTTPS transport is used between machines and an
//! in-process one ([`crate::memnet`]) in tests. On top of it sit openraft's RPCs and the
//! store's own: writes forwarded to the leader, read-index requests, lease keep-alives and
//! membership changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};

use crate::consensus::{NodeId, TypeConfig};
use crate::error::Error;
use crate::mvcc::{WriteRequest, WriteResponse};
use crate::types::{Lease, LeaseId};

/// Why a message did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached; the message was not delivered.
    #[error("peer {node} at {addr} unreachable: {reason}")]
    Unreachable {
        node: NodeId,
        addr: String,
        reason: String,
    },
    /// The message may or may not have been delivered (timeout, broken connection).
    #[error("no answer from peer {node} at {addr}: {reason}")]
    NoAnswer {
        node: NodeId,
        addr: String,
        reason: String,
    },
}

/// The future a transport returns.
pub type TransportFuture =
    Pin<Box<dyn Future<Output = Result<Vec<u8>, TransportError>> + Send + 'static>>;

/// Carries one encoded request to a peer and returns its encoded answer.
pub trait Transport: Send + Sync + 'static {
    /// Sends `body` to node `to`, reachable at `addr`.
    fn send(&self, to: NodeId, addr: &str, body: Vec<u8>) -> TransportFuture;
}

/// A transport for a node that has no peers; every send fails as unreachable.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&self, to: NodeId, addr: &str, _body: Vec<u8>) -> TransportFuture {
        let err = TransportError::Unreachable {
            node: to,
            addr: addr.to_string(),
            reason: "this store has no peer transport".into(),
        };
        Box::pin(async move { Err(err) })
    }
}

/// A request from one store node to another.
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub cluster_id: String,
    pub to: NodeId,
    pub request: PeerRequest,
}

/// What a node asks a peer.
#[derive(Serialize, Deserialize)]
pub(crate) enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write proposed on a follower, for the leader to run.
    Write(WriteRequest),
    /// The leader's commit index, confirmed by a quorum (linearizable reads on followers).
    ReadIndex,
    /// Renew a lease (lease deadlines live on the leader).
    KeepAlive(LeaseId),
    /// Add a node as learner, wait until it caught up, make it a voter.
    AddVoter {
        id: NodeId,
        addr: String,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        id: NodeId,
    },
}

/// A peer's answer.
#[derive(Serialize, Deserialize)]
pub(crate) enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<WriteResponse, Error>),
    ReadIndex(Result<u64, Error>),
    Lease(Result<Lease, Error>),
    Done(Result<(), Error>),
    /// The message was not for this node or cluster.
    Refused(String),
}

/// Encodes a peer message.
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Error> {
    bincode::serialize(v).map_err(|e| Error::Storage(format!("encode peer message: {e}")))
}

/// Decodes a peer message; garbage from the network is an error, never a panic.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Error> {
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(256 << 20)
        .deserialize(b)
        .map_err(|e| Error::InvalidArgument(format!("undecodable peer message: {e}")))
}

use bincode::Options as _;

/// A connection to one peer, as openraft's replication and election use it.
#[derive(Clone)]
pub(crate) struct Peer {
    pub transport: Arc<dyn Transport>,
    pub cluster_id: String,
    pub to: NodeId,
    pub addr: String,
}

impl Peer {
    /// Sends `request` and waits at most `ttl` for the answer.
    pub async fn call(
        &self,
        request: PeerRequest,
        ttl: Duration,
    ) -> Result<PeerResponse, TransportError> {
        let envelope = Envelope {
            cluster_id: self.cluster_id.clone(),
            to: self.to,
            request,
        };
        let no_answer = |reason: String| TransportError::NoAnswer {
            node: self.to,
            addr: self.addr.clone(),
            reason,
        };
        let body = encode(&envelope).map_err(|e| no_answer(e.to_string()))?;
        let reply = tokio::time::timeout(ttl, self.transport.send(self.to, &self.addr, body))
            .await
            .map_err(|_| no_answer(format!("timed out after {ttl:?}")))??;
        let response: PeerResponse = decode(&reply).map_err(|e| no_answer(e.to_string()))?;
        if let PeerResponse::Refused(why) = &response {
            return Err(TransportError::Unreachable {
                node: self.to,
                addr: self.addr.clone(),
                reason: why.clone(),
            });
        }
        Ok(response)
    }
}

fn rpc_error<E: std::error::Error>(e: TransportError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        TransportError::NoAnswer { .. } => RPCError::Network(NetworkError::new(&e)),
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<NodeId, BasicNode, E> {
    let e = Error::Storage("peer answered another request".into());
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(PeerRequest::AppendEntries(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            PeerResponse::AppendEntries(r) => r.map_err(|e| RemoteError::new(self.to, e).into()),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(PeerRequest::InstallSnapshot(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            PeerResponse::InstallSnapshot(r) => r.map_err(|e| RemoteError::new(self.to, e).into()),
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(PeerRequest::Vote(rpc), option.hard_ttl())
            .await
            .map_err(rpc_error)?
        {
            PeerResponse::Vote(r) => r.map_err(|e| RemoteError::new(self.to, e).into()),
            _ => Err(unexpected()),
        }
    }
}

/// Makes [`Peer`]s for openraft.
pub(crate) struct Network {
    pub transport: Arc<dyn Transport>,
    pub cluster_id: String,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            transport: self.transport.clone(),
            cluster_id: self.cluster_id.clone(),
            to: target,
            addr: node.addr.clone(),
        }
    }
}
