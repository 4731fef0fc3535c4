//! The peer transport between machines: HTTPS with mutual TLS (both sides present a
//! certificate of the cluster's CA, which the caller configures), one HTTP/2 connection per
//! peer kept open and shared by all messages, each message one `POST /raft`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use crate::consensus::NodeId;
use crate::network::{Transport, TransportError, TransportFuture};
use crate::store::Store;

/// Largest message accepted (a snapshot chunk or a batch of log entries).
const MAX_MESSAGE: usize = 64 << 20;
/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The path every message is posted to.
const PATH: &str = "/raft";

/// Sends peer messages over HTTPS with the client side of mutual TLS.
pub struct HttpTransport {
    tls: tokio_rustls::TlsConnector,
    connections: Arc<Mutex<HashMap<String, SendRequest<Full<Bytes>>>>>,
}

impl HttpTransport {
    /// A transport presenting the client certificate in `tls` and trusting the servers it
    /// trusts. HTTP/2 is spoken with prior knowledge.
    pub fn new(tls: Arc<rustls::ClientConfig>) -> HttpTransport {
        HttpTransport {
            tls: tokio_rustls::TlsConnector::from(tls),
            connections: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("bad peer address {addr}: {e}"))
}

async fn connect(
    tls: &tokio_rustls::TlsConnector,
    addr: &str,
) -> Result<SendRequest<Full<Bytes>>, String> {
    let name = server_name(addr)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

impl Transport for HttpTransport {
    fn send(&self, to: NodeId, addr: &str, body: Vec<u8>) -> TransportFuture {
        let tls = self.tls.clone();
        let connections = self.connections.clone();
        let addr = addr.to_string();
        Box::pin(async move {
            let cached = connections
                .lock()
                .ok()
                .and_then(|c| c.get(&addr).cloned())
                .filter(|s| !s.is_closed());
            let mut sender = match cached {
                Some(s) => s,
                None => {
                    let s = connect(&tls, &addr).await.map_err(|reason| {
                        TransportError::Unreachable {
                            node: to,
                            addr: addr.clone(),
                            reason,
                        }
                    })?;
                    if let Ok(mut c) = connections.lock() {
                        c.insert(addr.clone(), s.clone());
                    }
                    s
                }
            };
            let no_answer = |reason: String| TransportError::NoAnswer {
                node: to,
                addr: addr.clone(),
                reason,
            };
            let request = Request::post(format!("https://{addr}{PATH}"))
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| no_answer(e.to_string()))?;
            let response = match sender.send_request(request).await {
                Ok(r) => r,
                Err(e) => {
                    if let Ok(mut c) = connections.lock() {
                        c.remove(&addr);
                    }
                    return Err(no_answer(e.to_string()));
                }
            };
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_MESSAGE)
                .collect()
                .await
                .map_err(|e| no_answer(e.to_string()))?
                .to_bytes();
            if status != StatusCode::OK {
                return Err(no_answer(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )));
            }
            Ok(bytes.to_vec())
        })
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}

async fn answer(
    store: Store,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    if req.method() != hyper::Method::POST || req.uri().path() != PATH {
        return Ok(plain(StatusCode::NOT_FOUND, "not a peer endpoint"));
    }
    let body = match Limited::new(req.into_body(), MAX_MESSAGE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let reply = store.handle_peer(&body).await;
    Ok(Response::new(Full::new(Bytes::from(reply))))
}

/// Serves peer messages for `store` on `listener`, requiring the client certificates
/// `tls` verifies, until the task is dropped or the store shuts down.
pub async fn serve_peers(listener: TcpListener, tls: Arc<rustls::ServerConfig>, store: Store) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if store.is_shut_down() {
            return;
        }
        let acceptor = acceptor.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "peer TLS handshake refused");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| answer(store.clone(), req));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
