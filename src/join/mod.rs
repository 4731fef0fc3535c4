//! Joining nodes to a server, the k3s way: a token (`K10<sha256 of the CA>::<user>:
//! <secret>`) lets an agent check the cluster CA it downloads from `/cacerts` and then get
//! its node certificates and the cluster's settings from `/v1-pikube/node`, both on the
//! API server's HTTPS port. A server has two tokens: the agent token
//! (`<data-dir>/server/agent-token`, `::node:`), good for agent joins only, and the server
//! token (`<data-dir>/server/token`, `::server:`), which also lets servers join (and fetch
//! the CA key), so agents never need it.

pub mod password;
pub mod serving;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::api::status::ApiError;
use crate::pki::{CertKey, Pki};

/// Path of the CA download (no authentication: the token carries its hash).
pub const CACERTS_PATH: &str = "/cacerts";
/// Path of the node certificate request (bearer token = the join secret).
pub const NODE_PATH: &str = "/v1-pikube/node";

/// A join token: the CA hash (when given in the full form) and the shared secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// sha256 of the cluster CA certificate (PEM), hex; None for a bare secret.
    pub ca_hash: Option<String>,
    /// The shared secret.
    pub secret: String,
}

impl Token {
    /// Parses `K10<hash>::server:<secret>` or a bare secret.
    pub fn parse(text: &str) -> Result<Token, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the token is empty".into());
        }
        if let Some(rest) = text.strip_prefix("K10") {
            let (hash, creds) = rest
                .split_once("::")
                .ok_or("a K10 token has the form K10<ca-hash>::server:<secret>")?;
            let secret = creds.split_once(':').map_or(creds, |(_, s)| s);
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || secret.is_empty()
            {
                return Err("a K10 token has the form K10<ca-hash>::server:<secret>".into());
            }
            return Ok(Token {
                ca_hash: Some(hash.to_ascii_lowercase()),
                secret: secret.to_string(),
            });
        }
        if text.contains(char::is_whitespace) {
            return Err("the token contains white space".into());
        }
        Ok(Token {
            ca_hash: None,
            secret: text.to_string(),
        })
    }

    /// The full form for `ca_pem`, as `role`'s token.
    pub fn full(&self, ca_pem: &str, role: Role) -> String {
        format!("K10{}::{}:{}", ca_hash(ca_pem), role.user(), self.secret)
    }
}

/// Which of a server's two tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Joins servers and agents (`--token`, `<data-dir>/server/token`).
    Server,
    /// Joins agents only (`--agent-token`, `<data-dir>/server/agent-token`).
    Agent,
}

impl Role {
    /// The token's file in `<data-dir>/server`.
    pub fn file(self) -> &'static str {
        match self {
            Role::Server => "token",
            Role::Agent => "agent-token",
        }
    }

    /// The user part of the full form (k3s's).
    fn user(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "node",
        }
    }

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Role::Server => "--token",
            Role::Agent => "--agent-token",
        }
    }
}

/// sha256 of a CA certificate's PEM text, hex (what a K10 token carries).
pub fn ca_hash(ca_pem: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(ca_pem.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The server's `role` token: `given` (from its flag), else the one kept in its file in
/// `dir`, else a new random one. The full form is written to that file (mode 0600).
pub fn load_or_create(dir: &Path, role: Role, given: Option<&str>, ca_pem: &str) -> Result<Token> {
    let path = dir.join(role.file());
    let token = match given {
        Some(t) => Token::parse(t)
            .map_err(anyhow::Error::msg)
            .context(role.flag())?,
        None => match std::fs::read_to_string(&path) {
            Ok(text) => Token::parse(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{} is damaged", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Token {
                ca_hash: None,
                secret: uuid::Uuid::new_v4().simple().to_string(),
            },
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        },
    };
    if let Some(hash) = &token.ca_hash {
        anyhow::ensure!(
            *hash == ca_hash(ca_pem),
            "the token names another cluster's CA (its hash does not match this server's)"
        );
    }
    store(dir, role, &token, ca_pem)?;
    Ok(token)
}

/// Writes `token`'s full form to `role`'s file in `dir` (mode 0600).
pub fn store(dir: &Path, role: Role, token: &Token, ca_pem: &str) -> Result<()> {
    let path = dir.join(role.file());
    crate::pki::write_secret(&path, &format!("{}\n", token.full(ca_pem, role)))
}

/// What a joining node sends.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRequest {
    /// The node's name.
    pub node_name: String,
    /// Its IP addresses (for its agent API's serving certificate).
    pub node_ips: Vec<IpAddr>,
    /// The node's password (see [`password`]): only the machine that first joined with
    /// this name may join with it again.
    #[serde(default)]
    pub node_password: String,
}

impl std::fmt::Debug for NodeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        f.debug_struct("NodeRequest")
            .field("node_name", &self.node_name)
            .field("node_ips", &self.node_ips)
            .finish_non_exhaustive()
    }
}

/// What a joining node gets: certificates and the cluster settings agents need.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResponse {
    /// Cluster CA, PEM.
    pub ca: String,
    /// Client certificate of the node (`system:node:<name>`).
    pub client: CertKey,
    /// Serving certificate of the node's agent API.
    pub serving: CertKey,
    /// The CN of the API server's client certificate, the only caller of agent APIs.
    pub api_server_user: String,
    /// Cluster (pod) CIDR.
    pub cluster_cidr: String,
    /// Service CIDR.
    pub service_cidr: String,
    /// Cluster DNS address.
    pub cluster_dns: IpAddr,
    /// Cluster domain.
    pub cluster_domain: String,
}

/// The cluster settings a server hands to joining nodes.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    /// Cluster (pod) CIDR.
    pub cluster_cidr: String,
    /// Service CIDR.
    pub service_cidr: String,
    /// Cluster DNS address.
    pub cluster_dns: IpAddr,
    /// Cluster domain.
    pub cluster_domain: String,
    /// The names and IPs of the API server's serving certificate, which no node's
    /// certificate may hold.
    pub api_server_sans: Vec<String>,
}

struct Joiner {
    pki: Arc<Pki>,
    /// The store, whose members are the cluster's servers.
    store: pikube_raft::Store,
    /// The secrets of the server and agent tokens.
    secrets: [String; 2],
    settings: ClusterSettings,
    /// Reads bootstrap tokens (`pikube token create`) from kube-system.
    client: kube::Client,
}

/// The join endpoints, merged into the API server's HTTPS router. Nodes join with the
/// server's `token`, its `agent_token`, or a bootstrap token that `client` finds in
/// kube-system.
pub fn router(
    pki: Arc<Pki>,
    store: pikube_raft::Store,
    token: &Token,
    agent_token: &Token,
    settings: ClusterSettings,
    client: kube::Client,
) -> Router {
    let state = Arc::new(Joiner {
        pki,
        store,
        secrets: [token.secret.clone(), agent_token.secret.clone()],
        settings,
        client,
    });
    Router::new()
        .route(CACERTS_PATH, get(cacerts))
        .route(NODE_PATH, post(node))
        .with_state(state)
}

async fn cacerts(State(j): State<Arc<Joiner>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        j.pki.ca.cert_pem.clone(),
    )
        .into_response()
}

/// Whether the request carries `Authorization: Bearer <token>` with `secret` as its
/// secret (full K10 form or bare).
pub(crate) fn bearer_is(headers: &HeaderMap, secret: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| Token::parse(t).ok())
        .is_some_and(|t| same(t.secret.as_bytes(), secret.as_bytes()))
}

/// Constant-time comparison, so the secret cannot be guessed byte by byte.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_node_name(name: &str) -> bool {
    crate::api::objects::is_dns1123_subdomain(name)
}

/// The server's or agent token's secret, or a bootstrap token that is known, right and
/// not expired.
async fn accepted(j: &Joiner, presented: Option<&Token>) -> Result<(), ApiError> {
    let Some(token) = presented else {
        return Err(ApiError::unauthorized());
    };
    let mut known = false;
    for secret in &j.secrets {
        // Both compared, so the time taken does not tell which one matched.
        known |= same(token.secret.as_bytes(), secret.as_bytes());
    }
    if known {
        return Ok(());
    }
    let Some(bootstrap) = crate::token::BootstrapToken::parse(&token.secret) else {
        return Err(ApiError::unauthorized());
    };
    match crate::token::check(&j.client, &bootstrap, chrono::Utc::now()).await {
        Ok(()) => Ok(()),
        Err(crate::token::Refusal::Invalid(why)) => {
            tracing::info!(token = %bootstrap.id, reason = %why, "join refused");
            Err(ApiError::unauthorized().with_message(why))
        }
        Err(crate::token::Refusal::Unavailable(why)) => Err(ApiError::unavailable(format!(
            "cannot check the bootstrap token: {why}"
        ))),
    }
}

/// What node `joining`'s certificate may not hold: the API servers' names and addresses,
/// the service range, and the addresses of the other nodes.
async fn reserved(j: &Joiner, joining: &str) -> Result<serving::Reserved, ApiError> {
    use k8s_openapi::api::core::v1::{Endpoints, Node};
    let unavailable =
        |e: kube::Error| ApiError::unavailable(format!("cannot check the cluster's nodes: {e}"));
    let mut reserved =
        serving::Reserved::of_api_server(&j.settings.api_server_sans, &j.settings.service_cidr);
    let nodes = kube::Api::<Node>::all(j.client.clone())
        .list(&Default::default())
        .await
        .map_err(unavailable)?;
    reserved.add_nodes(&nodes.items, joining);
    let members = j.store.members();
    reserved.add_servers(members.iter().map(|m| m.addr.as_str()));
    let endpoints = kube::Api::<Endpoints>::namespaced(j.client.clone(), "default")
        .get_opt("kubernetes")
        .await
        .map_err(unavailable)?;
    if let Some(e) = endpoints {
        reserved.add_endpoints(&e);
    }
    Ok(reserved)
}

async fn node(
    State(j): State<Arc<Joiner>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| Token::parse(t).ok());
    if let Err(refused) = accepted(&j, presented.as_ref()).await {
        return refused.into_response();
    }
    let req: NodeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::bad_request(format!("invalid node request: {e}")).into_response()
        }
    };
    if !valid_node_name(&req.node_name) {
        return ApiError::bad_request(format!(
            "node name {:?} is not a valid DNS subdomain (lower case letters, digits, '-' and '.')",
            req.node_name
        ))
        .into_response();
    }
    let reserved = match reserved(&j, &req.node_name).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let sans = match serving::node_sans(&req.node_name, &req.node_ips, &reserved) {
        Ok(sans) => sans,
        Err(why) => {
            tracing::info!(node = %req.node_name, reason = %why, "join refused");
            return ApiError::forbidden(why).into_response();
        }
    };
    if let Err(refused) = password::ensure(&j.client, &req.node_name, &req.node_password).await {
        tracing::info!(node = %req.node_name, reason = %refused, "join refused");
        let message = refused.to_string();
        return match refused {
            password::Refusal::Taken(_) => ApiError {
                code: 409,
                reason: "Conflict",
                message,
                details: None,
            },
            password::Refusal::Invalid(_) => ApiError::bad_request(message),
            password::Refusal::Unavailable(_) => ApiError::unavailable(message),
        }
        .into_response();
    }
    let (client, serving) = match j.pki.node_certs(&req.node_name, &sans) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(node = %req.node_name, error = %format!("{e:#}"), "cannot issue node certificates");
            return ApiError::bad_request(format!("cannot issue certificates: {e:#}"))
                .into_response();
        }
    };
    tracing::info!(node = %req.node_name, "issued node certificates");
    let s = &j.settings;
    (
        StatusCode::OK,
        Json(NodeResponse {
            ca: j.pki.ca.cert_pem.clone(),
            client,
            serving,
            api_server_user: crate::pki::KUBELET_CLIENT_USER.to_string(),
            cluster_cidr: s.cluster_cidr.clone(),
            service_cidr: s.service_cidr.clone(),
            cluster_dns: s.cluster_dns,
            cluster_domain: s.cluster_domain.clone(),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_in_both_forms() {
        let hash = "a".repeat(64);
        let t = Token::parse(&format!("K10{hash}::server:s3cret")).unwrap();
        assert_eq!(
            (t.ca_hash.as_deref(), t.secret.as_str()),
            (Some(hash.as_str()), "s3cret")
        );
        let bare = Token::parse("s3cret\n").unwrap();
        assert_eq!(
            (bare.ca_hash.as_deref(), bare.secret.as_str()),
            (None, "s3cret")
        );
        assert!(Token::parse("").is_err());
        assert!(Token::parse("K10abc::server:x").is_err());
        assert!(Token::parse(&format!("K10{hash}::server:")).is_err());
        assert!(Token::parse("two words").is_err());
        assert_eq!(
            bare.full("pem", Role::Server).len(),
            3 + 64 + "::server:s3cret".len()
        );
        let agent = bare.full("pem", Role::Agent);
        assert!(agent.ends_with("::node:s3cret"), "{agent}");
        assert_eq!(Token::parse(&agent).unwrap().secret, "s3cret");
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        assert!(valid_node_name("pi-4.lan"));
        assert!(!valid_node_name("Pi"));
        assert!(!valid_node_name("-a"));
        assert!(!valid_node_name(""));
        assert!(!valid_node_name("a..b"));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
