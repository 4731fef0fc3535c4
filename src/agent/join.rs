//! The agent's side of joining a server: download the cluster CA and check it against
//! the token's hash, then ask for the node's certificates and the cluster's settings,
//! and keep them under `<data-dir>/agent/` so a restarted agent needs no server to
//! start its pods' bookkeeping.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::join::{NodeRequest, NodeResponse, Token, CACERTS_PATH, NODE_PATH};

/// Why joining failed (one line each).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The server URL is not `https://host[:port]`.
    #[error("--server {0:?} is not an https://host:port URL")]
    Url(String),
    /// The token is malformed.
    #[error("--token: {0}")]
    Token(String),
    /// The server could not be reached or answered oddly.
    #[error("cannot reach the server at {url}: {why}")]
    Unreachable {
        /// The server URL.
        url: String,
        /// What failed.
        why: String,
    },
    /// The downloaded CA is not the one the token names.
    #[error("the server's CA does not match the token's hash: wrong server or token")]
    WrongCa,
    /// The server refused the token or the request.
    #[error("the server refused to join this node ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// Local files could not be written or read.
    #[error("{0}")]
    Local(String),
}

/// Host and port of an `https://host[:port]` URL (default port 6443).
fn host_port(url: &str) -> Result<(String, u16), JoinError> {
    let bad = || JoinError::Url(url.to_string());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(bad());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority.to_string(), 6443),
    };
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// One HTTPS request; the status and body.
async fn request(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    req: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Bytes), JoinError> {
    let unreachable = |why: String| JoinError::Unreachable {
        url: url.to_string(),
        why,
    };
    let (host, port) = host_port(url)?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| unreachable(e.to_string()))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), exchange)
        .await
        .map_err(|_| unreachable("timed out".into()))?
}

fn local(e: impl std::fmt::Display) -> JoinError {
    JoinError::Local(e.to_string())
}

/// Downloads the cluster CA from the server at `url` and checks it against the token's
/// hash (trusted on first use when the token carries none).
pub async fn trusted_ca(url: &str, token: &Token) -> Result<String, JoinError> {
    let (host, _) = host_port(url)?;
    let get = hyper::Request::get(CACERTS_PATH)
        .header(hyper::header::HOST, host.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(local)?;
    let (status, ca) = request(
        url,
        crate::pki::tls::unverified_client().map_err(local)?,
        get,
    )
    .await?;
    if status != 200 {
        return Err(JoinError::Refused {
            status,
            message: String::from_utf8_lossy(&ca).into_owned(),
        });
    }
    let ca = String::from_utf8(ca.to_vec()).map_err(|_| JoinError::WrongCa)?;
    match &token.ca_hash {
        Some(hash) if *hash != crate::join::ca_hash(&ca) => return Err(JoinError::WrongCa),
        Some(_) => {}
        None => tracing::warn!(
            "the token carries no CA hash: trusting the server's CA on first use (use the K10… token from the server's data dir)"
        ),
    }
    Ok(ca)
}

/// POSTs `body` (JSON) to `path` on the server at `url`, trusting only `ca` and
/// authenticating with the token's secret; the answer's body, or why it was refused.
pub async fn post_with_token<T: serde::Serialize>(
    url: &str,
    ca: &str,
    token: &Token,
    path: &str,
    body: &T,
) -> Result<Bytes, JoinError> {
    let (host, _) = host_port(url)?;
    let body = serde_json::to_vec(body).map_err(local)?;
    let post = hyper::Request::post(path)
        .header(hyper::header::HOST, host.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", token.secret),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(local)?;
    let (status, answer) = request(url, crate::pki::tls::client(ca).map_err(local)?, post).await?;
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&answer).into_owned());
        return Err(JoinError::Refused { status, message });
    }
    Ok(answer)
}

/// Joins the server at `url` with `token`: the certificates and settings of the node.
pub async fn join(url: &str, token: &str, node: &NodeRequest) -> Result<NodeResponse, JoinError> {
    let token = Token::parse(token).map_err(JoinError::Token)?;
    let ca = trusted_ca(url, &token).await?;
    let answer = post_with_token(url, &ca, &token, NODE_PATH, node).await?;
    serde_json::from_slice(&answer).map_err(|e| JoinError::Unreachable {
        url: url.to_string(),
        why: format!("unreadable answer: {e}"),
    })
}

/// Where a joined node keeps what it got (mode 0600).
pub fn state_file(agent_dir: &Path) -> PathBuf {
    agent_dir.join("join.json")
}

/// Joins (or reuses what an earlier join of the same node to the same server kept), and
/// writes the node's kubeconfig for `url`. Returns the settings and the kubeconfig path.
pub async fn join_or_reuse(
    agent_dir: &Path,
    url: &str,
    token: &str,
    node: &NodeRequest,
) -> Result<(NodeResponse, PathBuf), JoinError> {
    let file = state_file(agent_dir);
    let kept: Option<(String, String, NodeResponse)> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let joined = match kept {
        Some((server, name, r)) if server == url && name == node.node_name => r,
        _ => {
            let r = join(url, token, node).await?;
            let text = serde_json::to_string(&(url, &node.node_name, &r)).map_err(local)?;
            crate::pki::write_secret(&file, &text).map_err(local)?;
            r
        }
    };
    let kubeconfig = agent_dir.join("kubeconfig");
    let text = crate::pki::kubeconfig(url, &joined.ca, &joined.client);
    crate::pki::write_secret(&kubeconfig, &text).map_err(local)?;
    Ok((joined, kubeconfig))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert_eq!(
            host_port("https://10.0.0.1:6443").unwrap(),
            ("10.0.0.1".into(), 6443)
        );
        assert_eq!(
            host_port("https://pi.lan").unwrap(),
            ("pi.lan".into(), 6443)
        );
        assert_eq!(
            host_port("https://[::1]:7443/").unwrap(),
            ("::1".into(), 7443)
        );
        assert!(host_port("http://pi:6443").is_err());
        assert!(host_port("https://").is_err());
        assert!(host_port("https://pi:port").is_err());
    }
}
