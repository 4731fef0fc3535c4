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
