//! The server's store and the servers of one cluster. A server started with neither
//! `--cluster-init` nor `--server` runs a one-node store with no peer port. With
//! `--cluster-init` it starts a cluster that other servers can join: its store listens for
//! peers on the peer port (mutual TLS with certificates of the cluster CA). With
//! `--server URL --token T` a server joins one: it gets the cluster CA and the store's
//! cluster id from that server, opens an empty store, asks to become a voting member, and
//! serves only once it has caught up. Control loops run on the store's leader only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use pikube_raft::{HttpTransport, PeerTls, Store};
use serde::{Deserialize, Serialize};

use crate::agent::join::{post_with_token, trusted_ca};
use crate::api::status::ApiError;
use crate::config::ServerConfig;
use crate::join::{Role, Token};
use crate::pki::{CertKey, Pki};

/// Where a joining server gets the cluster CA and the store's cluster id.
pub const BOOTSTRAP_PATH: &str = "/v1-pikube/server/bootstrap";
/// Where a joining server asks to become a member of the store's cluster.
pub const MEMBER_PATH: &str = "/v1-pikube/server/member";
/// Marks a server data directory whose store takes part in a cluster (peer port on).
const CLUSTERED_MARK: &str = "clustered";
/// How long a joining server waits until it is a caught-up voting member.
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);

/// What a joining server gets first.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bootstrap {
    /// The cluster CA with its key: every server issues certificates.
    pub ca: CertKey,
    /// The store's cluster id.
    pub cluster_id: String,
    /// The secret of the cluster's agent token, which every server accepts.
    #[serde(default)]
    pub agent_token: String,
    /// The service-account token signing key (PEM): tokens any server issues are accepted
    /// by every other.
    #[serde(default)]
    pub service_account_key: String,
}

/// A joining server's membership request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRequest {
    /// Its store node id.
    pub id: u64,
    /// Where its peer port is reached (`ip:port`).
    pub peer_address: String,
}

/// What was decided before the PKI and the store are opened.
pub struct Prepared {
    node_id: u64,
    cluster_id: Option<String>,
    clustered: bool,
    /// Set while this server still has to become a member of the cluster at that URL.
    join: Option<(String, Token)>,
}

impl Prepared {
    /// Whether the store takes part in a cluster (peer port open).
    pub fn clustered(&self) -> bool {
        self.clustered
    }
}

fn db_dir(config: &ServerConfig) -> PathBuf {
    config.data_dir.join("server").join("db")
}

/// Decides this server's part in the cluster; a server joining for the first time gets
/// the cluster CA (put into `tls_dir`) and the cluster id from the server it joins.
pub async fn prepare(config: &ServerConfig, tls_dir: &Path) -> Result<Prepared> {
    let server_dir = config.data_dir.join("server");
    let mark = server_dir.join(CLUSTERED_MARK);
    let identity = pikube_raft::read_identity(&db_dir(config))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot read the store in {}", db_dir(config).display()))?;
    let clustered = config.cluster_init || config.server.is_some() || mark.exists();
    anyhow::ensure!(
        !(config.cluster_init && config.server.is_some()),
        "--cluster-init starts a new cluster and --server joins one: give only one of them"
    );
    let mut prepared = Prepared {
        node_id: 1,
        cluster_id: None,
        clustered,
        join: None,
    };
    if let Some((cluster_id, node_id)) = identity {
        prepared.node_id = node_id;
        prepared.cluster_id = Some(cluster_id);
    }
    if let Some(url) = &config.server {
        let text = config
            .token
            .as_deref()
            .context("--server needs --token: the token of the cluster to join")?;
        let token = Token::parse(text)
            .map_err(anyhow::Error::msg)
            .context("--token")?;
        if prepared.cluster_id.is_none() {
            let ca = trusted_ca(url, &token).await?;
            let answer =
                post_with_token(url, &ca, &token, BOOTSTRAP_PATH, &serde_json::json!({})).await?;
            let b: Bootstrap =
                serde_json::from_slice(&answer).context("unreadable answer from the server")?;
            anyhow::ensure!(
                b.ca.cert_pem == ca,
                "the server handed out another CA than it serves with"
            );
            crate::pki::adopt_ca(tls_dir, &b.ca)?;
            adopt_agent_token(config, &server_dir, &b)?;
            if !b.service_account_key.is_empty() {
                crate::api::service_account_tokens::SigningKey::from_pem(&b.service_account_key)
                    .context("the cluster's service-account key")?
                    .store(tls_dir)?;
            }
            prepared.cluster_id = Some(b.cluster_id);
            // Random, so servers joining at the same time never pick the same id.
            prepared.node_id = (rand::random::<u64>() >> 12).max(2);
        }
        prepared.join = Some((url.clone(), token));
    }
    if clustered {
        std::fs::create_dir_all(&server_dir)
            .and_then(|_| std::fs::write(&mark, b"peer port on\n"))
            .with_context(|| format!("cannot write {}", mark.display()))?;
    }
    Ok(prepared)
}

/// Keeps the agent token of the cluster a server joins (`b`), so agents may join through
/// any server with the same token; a different `--agent-token` is refused.
fn adopt_agent_token(config: &ServerConfig, server_dir: &Path, b: &Bootstrap) -> Result<()> {
    if b.agent_token.is_empty() {
        return Ok(());
    }
    let cluster = Token {
        ca_hash: None,
        secret: b.agent_token.clone(),
    };
    if let Some(given) = &config.agent_token {
        let given = Token::parse(given)
            .map_err(anyhow::Error::msg)
            .context("--agent-token")?;
        anyhow::ensure!(
            crate::join::same(given.secret.as_bytes(), cluster.secret.as_bytes()),
            "--agent-token differs from the agent token of the cluster this server joins: leave it out (it comes from the cluster) or give the cluster's"
        );
    }
    crate::join::store(server_dir, Role::Agent, &cluster, &b.ca.cert_pem)
}

/// The address peers reach this server's store at.
fn peer_address(config: &ServerConfig) -> SocketAddr {
    // A server bound to one address is reached there; else at the node's address.
    let ip = config
        .advertise_address
        .or_else(|| (!config.bind_address.is_unspecified()).then_some(config.bind_address))
        .or_else(|| config.agent().node_ip.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, config.peer_port)
}

/// Opens the store as `prepared` says; a clustered store gets its peer listener, and a
/// joining server becomes a caught-up voting member before this returns.
pub async fn open_store(
    config: &ServerConfig,
    prepared: &Prepared,
    pki: &Pki,
) -> Result<(Store, Option<tokio::task::JoinHandle<()>>)> {
    let advertise = peer_address(config);
    let mut sc = pikube_raft::Config::single_node(db_dir(config));
    sc.node_id = prepared.node_id;
    sc.cluster_id = prepared.cluster_id.clone();
    sc.advertise_addr = advertise.to_string();
    sc.bootstrap = prepared.join.is_none();
    let mut tls = None;
    if prepared.clustered {
        let mut names = vec![advertise.ip().to_string(), "127.0.0.1".to_string()];
        if !config.bind_address.is_unspecified() {
            names.push(config.bind_address.to_string());
        }
        names.sort();
        names.dedup();
        let peer_tls = PeerTls::issue(&pki.ca.cert_pem, &pki.ca.key_pem, &names)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("peer certificate")?;
        sc.transport = Arc::new(HttpTransport::new(peer_tls.client.clone()));
        tls = Some(peer_tls);
    }
    let store = Store::open(sc)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot open the store in {}", db_dir(config).display()))?;
    let Some(tls) = tls else {
        return Ok((store, None));
    };
    let listen = SocketAddr::new(config.bind_address, config.peer_port);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for store peers on {listen}"))?;
    let peers = tokio::spawn(pikube_raft::serve_peers(
        listener,
        tls.server.clone(),
        store.clone(),
    ));
    tracing::info!(%listen, node = store.node_id(), "store peer port open");
    if let Some((url, token)) = &prepared.join {
        if let Err(e) = become_voter(&store, url, token, &pki.ca.cert_pem, advertise).await {
            peers.abort();
            let _ = store.shutdown().await;
            return Err(e);
        }
    }
    Ok((store, Some(peers)))
}

fn is_voter(store: &Store) -> bool {
    let me = store.node_id();
    store.members().iter().any(|m| m.id == me && m.voter)
}

async fn become_voter(
    store: &Store,
    url: &str,
    token: &Token,
    ca: &str,
    advertise: SocketAddr,
) -> Result<()> {
    if is_voter(store) {
        return Ok(());
    }
    let req = MemberRequest {
        id: store.node_id(),
        peer_address: advertise.to_string(),
    };
    post_with_token(url, ca, token, MEMBER_PATH, &req).await?;
    tracing::info!(node = req.id, %url, "joining the cluster; catching up");
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while !is_voter(store) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "not made a member of the cluster within {JOIN_TIMEOUT:?}: is this server's peer address {advertise} reachable from the others (--advertise-address, --peer-port)?"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(node = req.id, "voting member of the cluster");
    Ok(())
}

struct Joiners {
    store: Store,
    ca: CertKey,
    secret: String,
    agent_secret: String,
    service_account_key: String,
    clustered: bool,
}

/// The server-join endpoints, merged into the API server's HTTPS router. Only the server
/// `token` opens them (never the agent token or a bootstrap token): they hand out the CA
/// key. Joining servers get `agent_token`'s secret and the service-account key (PEM) too.
pub fn router(
    store: Store,
    pki: &Pki,
    token: &Token,
    agent_token: &Token,
    service_account_key: &str,
    clustered: bool,
) -> Router {
    Router::new()
        .route(BOOTSTRAP_PATH, post(bootstrap))
        .route(MEMBER_PATH, post(member))
        .with_state(Arc::new(Joiners {
            store,
            ca: pki.ca.clone(),
            secret: token.secret.clone(),
            agent_secret: agent_token.secret.clone(),
            service_account_key: service_account_key.to_string(),
            clustered,
        }))
}

/// Why a join request is refused, if it is.
fn check(j: &Joiners, headers: &HeaderMap) -> Option<ApiError> {
    if !crate::join::bearer_is(headers, &j.secret) {
        return Some(ApiError::unauthorized());
    }
    if !j.clustered {
        return Some(ApiError::bad_request(
            "this server runs a one-node store: start it with --cluster-init so other servers can join",
        ));
    }
    None
}

async fn bootstrap(
    State(j): State<Arc<Joiners>>,
    headers: HeaderMap,
    // Read before answering: an HTTP/2 answer sent while the client still sends its body
    // resets the stream, which some clients (curl) report as a failure.
    _body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = check(&j, &headers) {
        return refused.into_response();
    }
    Json(Bootstrap {
        ca: j.ca.clone(),
        cluster_id: j.store.cluster_id().to_string(),
        agent_token: j.agent_secret.clone(),
        service_account_key: j.service_account_key.clone(),
    })
    .into_response()
}

async fn member(
    State(j): State<Arc<Joiners>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(refused) = check(&j, &headers) {
        return refused.into_response();
    }
    let req: MemberRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(format!("invalid member request: {e}")).into_response()
        }
    };
    if req.id == 0 || req.peer_address.parse::<SocketAddr>().is_err() {
        return ApiError::bad_request(format!(
            "a member needs a node id above 0 and an ip:port peer address, got {} and {:?}",
            req.id, req.peer_address
        ))
        .into_response();
    }
    // Catching up may take long (a snapshot); the new server watches its own store.
    let store = j.store.clone();
    tokio::spawn(async move {
        match store.add_voter(req.id, &req.peer_address).await {
            Ok(()) => tracing::info!(node = req.id, peer = %req.peer_address, "store member added"),
            Err(e) => tracing::warn!(node = req.id, error = %e, "cannot add store member"),
        }
    });
    StatusCode::ACCEPTED.into_response()
}

/// Runs the loops `start` starts while this server's store leads the cluster, and stops
/// them when it no longer does or `shutdown` fires. A one-node store always leads.
pub async fn while_leader<F>(
    store: Store,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    start: F,
) where
    F: Fn(tokio::sync::watch::Receiver<bool>) -> tokio::task::JoinSet<()>,
{
    loop {
        while !store.is_leader() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        tracing::info!(node = store.node_id(), "store leader: control loops start");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut set = start(rx);
        let stop_all = loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if !store.is_leader() { break false; }
                }
                _ = shutdown.wait_for(|s| *s) => break true,
            }
        };
        let _ = tx.send(true);
        while set.join_next().await.is_some() {}
        if stop_all {
            return;
        }
        tracing::info!(
            node = store.node_id(),
            "no longer the store leader: control loops stopped"
        );
    }
}
