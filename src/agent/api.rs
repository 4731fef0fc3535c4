//! The agent API (kubelet's port 10250): container logs, exec, attach and port-forward, for the API
//! server only. HTTPS with a serving certificate signed by the cluster CA; every client
//! must present a certificate signed by that CA, and only the API server's identity
//! ([`crate::pki::KUBELET_CLIENT_USER`]) is served.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{Api, Client};
use pikube_runtime::Cri;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use super::Error;
use crate::pki::CertKey;

/// What the agent API serves with: the cluster CA (to verify callers), its own serving
/// certificate, and the one client identity it accepts. Serialisable so that a remote
/// `pikube agent` can get the same from files.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentTls {
    /// The cluster CA certificate, PEM.
    pub ca_cert_pem: String,
    /// The agent's serving certificate and key (SANs: node IP, node name, hostname).
    pub serving: CertKey,
    /// The only client certificate CN served (the API server's).
    pub allowed_user: String,
}

/// Response bodies of the agent API (streamed for `follow`).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A failed request, answered as kubelet does: an HTTP status and a plain-text message
/// (the API server turns it into a `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// HTTP status.
    pub code: StatusCode,
    /// The message kubectl shows.
    pub message: String,
}

impl Failure {
    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure {
            code: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Failure {
            code: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    /// 500 with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Failure {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    /// The plain-text answer.
    pub fn response(&self) -> Response<Body> {
        text(self.code, self.message.clone())
    }
}

/// A plain-text response.
pub fn text(code: StatusCode, message: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(message.into()));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A complete body.
pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|e: Infallible| match e {}).boxed()
}

/// What the handlers need: the API (pods and their statuses) and the runtime.
#[derive(Clone)]
pub struct AgentApi {
    client: Client,
    cri: Cri,
}

/// A container found for a request: its pod and its runtime ID.
pub struct Found {
    /// The pod.
    pub pod: Pod,
    /// The container's CRI ID (without the `containerd://` prefix).
    pub id: String,
}

/// The status of container `name` among the pod's containers, init and ephemeral ones.
pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let s = pod.status.as_ref()?;
    [
        &s.container_statuses,
        &s.init_container_statuses,
        &s.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|c| c.name == name)
}

/// `containerd://abc` → `abc`.
pub fn runtime_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, i)| i)
}

impl AgentApi {
    /// Handlers over `client` and `cri`.
    pub fn new(client: Client, cri: Cri) -> Self {
        AgentApi { client, cri }
    }

    /// The runtime.
    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    /// Pod `ns/name` as the API has it.
    pub async fn pod(&self, ns: &str, name: &str) -> Result<Pod, Failure> {
        Api::<Pod>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .map_err(|e| Failure::internal(format!("cannot read pod {ns}/{name}: {e}")))?
            .ok_or_else(|| Failure::not_found(format!("pods \"{name}\" not found")))
    }

    /// The running container `container` of pod `ns/name` (exec and attach).
    pub async fn running(&self, ns: &str, name: &str, container: &str) -> Result<Found, Failure> {
        let pod = self.pod(ns, name).await?;
        let id = container_status(&pod, container)
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .and_then(|c| c.container_id.as_deref())
            .map(|id| runtime_id(id).to_string())
            .ok_or_else(|| Failure::not_found(format!("container not found ({container:?})")))?;
        Ok(Found { pod, id })
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let segs: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(|s| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        match segs.as_slice() {
            ["healthz"] => text(StatusCode::OK, "ok"),
            ["containerLogs", ns, pod, container] if req.method() == http::Method::GET => {
                let query = req.uri().query().unwrap_or("").to_string();
                super::logs::serve(self, ns, pod, container, &query)
                    .await
                    .unwrap_or_else(|f| f.response())
            }
            [kind @ ("exec" | "attach"), ns, pod, container]
                if matches!(*req.method(), http::Method::GET | http::Method::POST) =>
            {
                let kind = if *kind == "exec" {
                    super::stream::Kind::Exec
                } else {
                    super::stream::Kind::Attach
                };
                let (ns, pod, container) = (ns.to_string(), pod.to_string(), container.to_string());
                super::stream::serve(self, req, kind, &ns, &pod, &container)
                    .await
                    .unwrap_or_else(|f| f.response())
            }
            ["portForward", ns, pod]
                if matches!(*req.method(), http::Method::GET | http::Method::POST) =>
            {
                let (ns, pod) = (ns.to_string(), pod.to_string());
                super::portforward::serve(self, req, &ns, &pod)
                    .await
                    .unwrap_or_else(|f| f.response())
            }
            _ => text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }
}

/// Whether a verified peer certificate names the allowed user.
fn allowed(conn: &rustls::ServerConnection, user: &str) -> bool {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::api::http::identity_from_cert(c.as_ref()))
        .is_some_and(|id| id.user == user)
}

/// Binds the agent API on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr} for the agent API: {e}")))
}

/// Serves the agent API on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    tls: &AgentTls,
    api: AgentApi,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    let config = crate::pki::tls::mutual_server(&tls.ca_cert_pem, &tls.serving)
        .map_err(|e| Error::Config(format!("agent API TLS: {e:#}")))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let user: Arc<str> = tls.allowed_user.clone().into();
    let api = Arc::new(api);
    loop {
        let stopped = async {
            let _ = shutdown.wait_for(|s| *s).await;
        };
        let (tcp, peer) = tokio::select! {
            _ = stopped => return Ok(()),
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "agent API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, api, user) = (acceptor.clone(), api.clone(), user.clone());
        tokio::spawn(async move {
            let Some(stream) = crate::api::http::accept_tls(&acceptor, tcp, peer).await else {
                return;
            };
            let ok = allowed(stream.get_ref().1, &user);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                async move {
                    if !ok {
                        return Ok::<_, Infallible>(text(StatusCode::FORBIDDEN, "Forbidden"));
                    }
                    Ok(api.route(req).await)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "agent API: connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_ids_lose_their_scheme() {
        assert_eq!(runtime_id("containerd://abc"), "abc");
        assert_eq!(runtime_id("abc"), "abc");
    }
}
