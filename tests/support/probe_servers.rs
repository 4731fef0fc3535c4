//! Probe targets for tests, shared by the agent's unit tests and the e2e suite: an
//! HTTPS server (self-signed certificate) whose answers the test chooses, and a
//! `grpc.health.v1.Health` server whose serving status the test sets. Both listen on a
//! free port of 127.0.0.1 and stop when dropped.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the HTTPS server answers: status, headers, body.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Extra headers (e.g. Location).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Answer {
    /// `status` with `body` and no extra header.
    pub fn new(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// A redirect to `location`.
    pub fn redirect(location: &str) -> Answer {
        Answer {
            status: 302,
            headers: vec![("Location".into(), location.into())],
            body: b"moved".to_vec(),
        }
    }
}

/// One request the server got.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Path and query.
    pub path: String,
    /// Its headers.
    pub headers: http::HeaderMap,
}

type Handler = Arc<dyn Fn(&str) -> Answer + Send + Sync>;

/// An HTTPS server on 127.0.0.1 that answers each path as the test says.
pub struct HttpsTarget {
    /// Its port.
    pub port: u16,
    handler: Arc<Mutex<Handler>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpsTarget {
    /// Starts serving; every path gets `handler(path)`.
    pub async fn start(handler: impl Fn(&str) -> Answer + Send + Sync + 'static) -> HttpsTarget {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der.into())
        .expect("TLS server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let handler: Arc<Mutex<Handler>> = Arc::new(Mutex::new(Arc::new(handler)));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (handler.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, h, s) = (acceptor.clone(), h.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: http::Request<Incoming>| {
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            s.lock().unwrap().push(Seen {
                                path: path.clone(),
                                headers: req.headers().clone(),
                            });
                            let handler = h.lock().unwrap().clone();
                            let answer = handler(&path);
                            let mut resp = http::Response::new(Full::new(Bytes::from(answer.body)));
                            *resp.status_mut() =
                                http::StatusCode::from_u16(answer.status).expect("status code");
                            for (k, v) in answer.headers {
                                resp.headers_mut().insert(
                                    http::HeaderName::from_bytes(k.as_bytes())
                                        .expect("header name"),
                                    http::HeaderValue::from_str(&v).expect("header value"),
                                );
                            }
                            async move { Ok::<_, Infallible>(resp) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsTarget {
            port,
            handler,
            seen,
            task,
        }
    }

    /// Answers every path with `handler(path)` from now on.
    pub fn set(&self, handler: impl Fn(&str) -> Answer + Send + Sync + 'static) {
        *self.handler.lock().unwrap() = Arc::new(handler);
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpsTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gRPC health server on 127.0.0.1 (plaintext HTTP/2).
pub struct GrpcHealth {
    /// Its port.
    pub port: u16,
    status: Arc<AtomicI32>,
    services: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The service name of an encoded `HealthCheckRequest` (field 1, short string).
fn service_of(message: &[u8]) -> String {
    match message {
        [0x0a, len, rest @ ..] if rest.len() >= *len as usize => {
            String::from_utf8_lossy(&rest[..*len as usize]).into_owned()
        }
        _ => String::new(),
    }
}

type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn grpc_answer(frames: Vec<Frame<Bytes>>) -> http::Response<GrpcBody> {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = frames.into_iter().map(Ok).collect();
    let mut resp = http::Response::new(StreamBody::new(futures::stream::iter(frames)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    resp
}

fn trailers(code: u8) -> Frame<Bytes> {
    let mut t = http::HeaderMap::new();
    t.insert("grpc-status", http::HeaderValue::from(u16::from(code)));
    Frame::trailers(t)
}

impl GrpcHealth {
    /// Starts serving with status `status` (1 SERVING, 2 NOT_SERVING).
    pub async fn start(status: i32) -> GrpcHealth {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let status = Arc::new(AtomicI32::new(status));
        let services = Arc::new(Mutex::new(Vec::new()));
        let (st, sv) = (status.clone(), services.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Headers, message and trailers go out as separate writes.
                let _ = tcp.set_nodelay(true);
                let (st, sv) = (st.clone(), sv.clone());
                let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                    let (st, sv) = (st.clone(), sv.clone());
                    async move {
                        let check = req.uri().path() == "/grpc.health.v1.Health/Check";
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if !check {
                            return Ok::<_, Infallible>(grpc_answer(vec![trailers(12)]));
                        }
                        let message = body.as_deref().unwrap_or_default();
                        sv.lock()
                            .unwrap()
                            .push(service_of(message.get(5..).unwrap_or_default()));
                        let status = st.load(Ordering::SeqCst) as u8;
                        let data = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
                        Ok(grpc_answer(vec![Frame::data(data), trailers(0)]))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        GrpcHealth {
            port,
            status,
            services,
            task,
        }
    }

    /// Answers with `status` from now on.
    pub fn set(&self, status: i32) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The service names asked about so far.
    pub fn services(&self) -> Vec<String> {
        self.services.lock().unwrap().clone()
    }
}

impl Drop for GrpcHealth {
    fn drop(&mut self) {
        self.task.abort();
    }
}
