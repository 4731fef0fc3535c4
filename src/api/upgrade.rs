//! Relaying upgraded HTTP/1.1 connections (WebSocket, SPDY) to a backend: the request's
//! upgrade headers go to the backend, its 101 answer comes back, and then the two
//! connections are spliced byte for byte. Used by the API server towards node agents and
//! by the agent towards containerd's streaming server.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Request headers that make an upgrade (WebSocket or SPDY), passed on to the backend
/// (`x-stream-protocol-version`: the SPDY streaming protocols offered).
pub const REQUEST_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Response headers of an accepted upgrade, passed back to the client.
pub const RESPONSE_HEADERS: &[&str] = &[
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Copies every value of `names` from `from` to `to`.
pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, names: &[&'static str]) {
    for name in names {
        for v in from.get_all(*name) {
            to.append(HeaderName::from_static(name), v.clone());
        }
    }
}

/// A bodiless request for `path` on `host`, with the upgrade headers of `from`.
pub fn request(
    method: http::Method,
    path: &str,
    host: &str,
    from: &HeaderMap,
) -> Result<Request<Empty<Bytes>>, http::Error> {
    let mut r = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .body(Empty::new())?;
    copy_headers(from, r.headers_mut(), REQUEST_HEADERS);
    Ok(r)
}

/// Largest error body read from a backend.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A backend's non-success answer: its status and (the start of) its text.
pub async fn error_text(resp: Response<Incoming>) -> (http::StatusCode, String) {
    use http_body_util::BodyExt;
    let code = resp.status();
    let text = http_body_util::Limited::new(resp.into_body(), MAX_ERROR_BODY)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    (code, text)
}

/// Sends `request` over a new HTTP/1.1 connection on `io` (upgrades allowed).
pub async fn send<IO>(
    io: IO,
    request: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "relayed connection ended with an error");
        }
    });
    sender.send_request(request).await
}

/// The client's 101 answer for a backend that switched protocols (its upgrade headers
/// passed back, with `body`), and the two connections spliced once upgraded.
pub fn switch<B, C>(
    client: &mut Request<C>,
    mut backend: Response<Incoming>,
    body: B,
) -> Response<B> {
    let mut answer = Response::new(body);
    *answer.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    copy_headers(backend.headers(), answer.headers_mut(), RESPONSE_HEADERS);
    splice(hyper::upgrade::on(client), hyper::upgrade::on(&mut backend));
    answer
}

/// Once both sides are upgraded, copies bytes between them until either ends.
pub fn splice(client: OnUpgrade, backend: OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, backend) {
            Ok((c, b)) => {
                let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}
