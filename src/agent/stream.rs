//! `/exec/{ns}/{pod}/{container}` and `/attach/{ns}/{pod}/{container}`: the caller's
//! WebSocket (`v5.channel.k8s.io` or `v4.channel.k8s.io`) relayed to containerd's
//! streaming server, which CRI Exec/Attach hand out as a single-use URL and which speaks
//! `v4.channel.k8s.io`.
//!
//! SPDY/3.1 (kubectl up to 1.29, and every kubectl's fallback) and WebSocket v4
//! (client libraries) are what containerd speaks itself: the upgrade is passed on and
//! the connections are spliced. WebSocket v5 (kubectl 1.30+) is relayed frame by frame
//! to a v4 connection: the channel bytes (0 stdin, 1 stdout, 2 stderr, 3 status,
//! 4 resize) are the same. v5's one addition, channel 255 (`[255, 0]`: stdin ended),
//! cannot be expressed in v4 (containerd's v4 server ends stdin only by closing the
//! whole stream, losing output and exit status), so a v5-only request WITH stdin is
//! refused before anything runs: kubectl then falls back to SPDY by itself, where
//! stdin can be half-closed and the exit status still arrives.

use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pikube_runtime::cri::v1 as cri;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::api::{full, AgentApi, Body, Failure};
use crate::api::upgrade;

/// The WebSocket protocol relayed frame by frame.
const V5: &str = "v5.channel.k8s.io";
/// The WebSocket protocol spoken with containerd.
const V4: &str = "v4.channel.k8s.io";
/// Channel of v5's close messages.
const CLOSE_CHANNEL: u8 = 255;
/// Which stream a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new process in the container (CRI Exec).
    Exec,
    /// The container's main process (CRI Attach).
    Attach,
}

/// Exec/attach options from the query (kubelet's names).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// The command (exec only), one `command=` per word.
    pub command: Vec<String>,
    /// Attach stdin.
    pub stdin: bool,
    /// Attach stdout.
    pub stdout: bool,
    /// Attach stderr.
    pub stderr: bool,
    /// Allocate a TTY.
    pub tty: bool,
}

impl StreamOptions {
    /// Parses the query string.
    pub fn parse(query: &str) -> Result<StreamOptions, Failure> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| Failure::bad_request(format!("invalid query: {e}")))?;
        let mut o = StreamOptions::default();
        for (k, v) in pairs {
            let on = matches!(v.as_str(), "true" | "1" | "True");
            match k.as_str() {
                "command" => o.command.push(v),
                "input" | "stdin" => o.stdin = on,
                "output" | "stdout" => o.stdout = on,
                "error" | "stderr" => o.stderr = on,
                "tty" => o.tty = on,
                _ => {}
            }
        }
        if o.tty {
            // With a TTY stderr is merged into stdout, as kubelet does.
            o.stderr = false;
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err(Failure::bad_request(
                "you must specify at least 1 of stdin, stdout, stderr",
            ));
        }
        Ok(o)
    }
}

/// How a WebSocket or SPDY request is carried to containerd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    /// Upgrade passed on, connections spliced (SPDY, WebSocket v4 and older).
    Raw,
    /// WebSocket v5 to the caller, v4 to containerd, frame by frame.
    V5ToV4,
}

/// The relay for a request upgrading to `upgrade` and offering WebSocket `offered`
/// subprotocols; an error for what cannot work (see the module doc).
pub fn choose_relay(upgrade: &str, offered: &str, stdin: bool) -> Result<Relay, Failure> {
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        return Ok(Relay::Raw);
    }
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(Failure::bad_request(
            "exec and attach need an upgrade to WebSocket or SPDY/3.1",
        ));
    }
    let offers: Vec<&str> = offered.split(',').map(str::trim).collect();
    match (offers.contains(&V5), stdin) {
        (true, false) => Ok(Relay::V5ToV4),
        _ if offers
            .iter()
            .any(|o| *o != V5 && o.ends_with("channel.k8s.io")) =>
        {
            Ok(Relay::Raw)
        }
        (true, true) => Err(Failure::bad_request(
            "stdin over v5.channel.k8s.io cannot be ended through the container runtime's \
             v4 stream: use SPDY/3.1 (kubectl falls back to it) or v4.channel.k8s.io",
        )),
        (false, _) => Err(Failure::bad_request(format!(
            "no supported WebSocket subprotocol offered (supported: {V5}, {V4}, channel.k8s.io)"
        ))),
    }
}

/// A request header as text ("" when absent or not text).
pub fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> &str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Asks the runtime for the streaming URL.
async fn runtime_url(
    api: &AgentApi,
    kind: Kind,
    id: String,
    o: &StreamOptions,
) -> Result<String, Failure> {
    let mut rt = api.cri().runtime();
    let result = match kind {
        Kind::Exec => {
            if o.command.is_empty() {
                return Err(Failure::bad_request("you must specify a command"));
            }
            rt.exec(cri::ExecRequest {
                container_id: id,
                cmd: o.command.clone(),
                tty: o.tty,
                stdin: o.stdin,
                stdout: o.stdout,
                stderr: o.stderr,
            })
            .await
            .map(|r| r.into_inner().url)
        }
        Kind::Attach => rt
            .attach(cri::AttachRequest {
                container_id: id,
                stdin: o.stdin,
                tty: o.tty,
                stdout: o.stdout,
                stderr: o.stderr,
            })
            .await
            .map(|r| r.into_inner().url),
    };
    result.map_err(|e| Failure::internal(format!("runtime: {}", e.message())))
}

type RuntimeSocket = WebSocketStream<tokio::net::TcpStream>;

/// Opens containerd's streaming URL with the v4 protocol.
async fn connect_runtime(url: &str) -> Result<RuntimeSocket, Failure> {
    let fail = |e: String| Failure::internal(format!("cannot reach the runtime's stream: {e}"));
    // containerd hands out `http://…`; the WebSocket client wants `ws://…`.
    let ws_url = match url.strip_prefix("http") {
        Some(rest) => format!("ws{rest}"),
        None => url.to_string(),
    };
    let mut request = ws_url
        .into_client_request()
        .map_err(|e| fail(e.to_string()))?;
    request
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(V4));
    let host = request.uri().host().unwrap_or("127.0.0.1").to_string();
    let port = request.uri().port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let (ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| fail(e.to_string()))?;
    Ok(ws)
}

/// Serves one exec or attach request: checks, CRI call, then the upgrade and relay.
pub async fn serve(
    api: &AgentApi,
    mut req: Request<Incoming>,
    kind: Kind,
    ns: &str,
    pod: &str,
    container: &str,
) -> Result<Response<Body>, Failure> {
    let opts = StreamOptions::parse(req.uri().query().unwrap_or(""))?;
    let relay_kind = choose_relay(
        header_str(&req, header::UPGRADE),
        header_str(&req, header::SEC_WEBSOCKET_PROTOCOL),
        opts.stdin,
    )?;
    let key = header_str(&req, header::SEC_WEBSOCKET_KEY).to_string();
    if relay_kind == Relay::V5ToV4 && key.is_empty() {
        return Err(Failure::bad_request(
            "a WebSocket upgrade needs Sec-WebSocket-Key",
        ));
    }
    let found = api.running(ns, pod, container).await?;
    let url = runtime_url(api, kind, found.id, &opts).await?;
    if relay_kind == Relay::Raw {
        return relay_raw(req, &url).await;
    }
    let runtime = connect_runtime(&url).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "agent API: upgrade failed");
                return;
            }
        };
        let caller = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(WebSocketConfig::default()),
        )
        .await;
        relay(caller, runtime).await;
    });
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(V5));
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| Failure::internal(e.to_string()))?,
    );
    Ok(r)
}

/// Passes the caller's upgrade request on to containerd's streaming `url` and, once
/// containerd switched protocols, splices the two connections (SPDY/3.1 and WebSocket
/// v4 need no translation).
pub async fn relay_raw(mut req: Request<Incoming>, url: &str) -> Result<Response<Body>, Failure> {
    let fail = |e: String| Failure::internal(format!("cannot reach the runtime's stream: {e}"));
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| fail(e.to_string()))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| fail(format!("no address in {url}")))?;
    let tcp = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .map_err(|e| fail(e.to_string()))?;
    let forward = upgrade::request(
        req.method().clone(),
        uri.path_and_query().map_or("/", |p| p.as_str()),
        &authority,
        req.headers(),
    )
    .map_err(|e| fail(e.to_string()))?;
    let resp = upgrade::send(tcp, forward)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (code, message) = upgrade::error_text(resp).await;
        return Err(Failure { code, message });
    }
    Ok(upgrade::switch(&mut req, resp, full(bytes::Bytes::new())))
}

/// Relays frames both ways until either side ends.
async fn relay<C>(caller: WebSocketStream<C>, runtime: RuntimeSocket)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut caller_tx, mut caller_rx) = caller.split();
    let (mut rt_tx, mut rt_rx) = runtime.split();
    loop {
        tokio::select! {
            m = caller_rx.next() => match m {
                // v5's close channel has no v4 form (and without stdin nothing to close).
                Some(Ok(Message::Binary(b))) if b.first() == Some(&CLOSE_CHANNEL) => {}
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    if rt_tx.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = rt_tx.close().await;
                    break;
                }
                Some(Ok(_)) => {}
            },
            m = rt_rx.next() => match m {
                Some(Ok(m @ (Message::Binary(_) | Message::Text(_)))) => {
                    if caller_tx.send(m).await.is_err() {
                        let _ = rt_tx.close().await;
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // A normal close code: kubectl reads it as the end of the streams.
                    let normal = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    };
                    let _ = caller_tx.send(Message::Close(Some(normal))).await;
                    let _ = caller_tx.close().await;
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_protocols_parse_like_kubelet() {
        let o = StreamOptions::parse(
            "command=sh&command=-c&command=echo+a&stdin=true&stdout=true&stderr=true",
        )
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo a"]);
        assert!(o.stdin && o.stdout && o.stderr && !o.tty);
        let t = StreamOptions::parse("command=sh&stdout=true&stderr=true&tty=true").unwrap();
        assert!(t.tty && !t.stderr);
        assert!(StreamOptions::parse("command=sh").is_err());
        let v5 = "v5.channel.k8s.io";
        assert_eq!(choose_relay("SPDY/3.1", "", true), Ok(Relay::Raw));
        assert_eq!(choose_relay("websocket", v5, false), Ok(Relay::V5ToV4));
        assert_eq!(
            choose_relay("websocket", "v5.channel.k8s.io, v4.channel.k8s.io", true),
            Ok(Relay::Raw)
        );
        assert_eq!(
            choose_relay("websocket", "channel.k8s.io", true),
            Ok(Relay::Raw)
        );
        // kubectl 1.30+ offers v5 only: with stdin it must fall back to SPDY.
        assert_eq!(choose_relay("websocket", v5, true).unwrap_err().code, 400);
        assert!(choose_relay("websocket", "SPDY/3.1+portforward.k8s.io", false).is_err());
        assert!(choose_relay("h2c", v5, false).is_err());
    }
}
