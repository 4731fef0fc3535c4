//! `/exec/{ns}/{pod}/{container}` and `/attach/{ns}/{pod}/{container}`: the caller's
//! WebSocket (`v5.channel.k8s.io` or `v4.channel.k8s.io`) relayed to containerd's
//! streaming server, which CRI Exec/Attach hand out as a single-use URL and which speaks
//! `v4.channel.k8s.io`.
//!
//! Frames carry a channel byte (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize) that
//! v4 and v5 share, so they pass unchanged. v5 adds channel 255 (`[255, 0]`: stdin
//! ended), which v4 cannot express: containerd's v4 server only ends stdin by closing
//! the whole connection. The relay therefore waits until the process has been silent
//! for [`STDIN_CLOSE_QUIET`], then closes containerd's side (the process sees EOF);
//! should the process exit status not have arrived by then, the caller gets a Failure
//! status saying the exit status is unknown rather than a made-up success.

use std::time::Duration;

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

/// Protocols offered to callers, best first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];
/// The protocol spoken with containerd.
const RUNTIME_PROTOCOL: &str = "v4.channel.k8s.io";
/// Channel of the final status.
const STATUS_CHANNEL: u8 = 3;
/// Channel of v5's close messages.
const CLOSE_CHANNEL: u8 = 255;
/// Silence after stdin ended before containerd's connection is closed.
pub const STDIN_CLOSE_QUIET: Duration = Duration::from_millis(500);

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

/// The protocol picked from the caller's `Sec-WebSocket-Protocol` offers.
pub fn pick_protocol(offered: &str) -> Option<&'static str> {
    let offers: Vec<&str> = offered.split(',').map(str::trim).collect();
    PROTOCOLS.iter().copied().find(|p| offers.contains(p))
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> &str {
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
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(RUNTIME_PROTOCOL),
    );
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
    let websocket = header_str(&req, header::UPGRADE).eq_ignore_ascii_case("websocket");
    let key = header_str(&req, header::SEC_WEBSOCKET_KEY).to_string();
    if !websocket || key.is_empty() {
        return Err(Failure::bad_request(
            "pikube's node agent streams exec and attach over WebSocket only \
             (v5.channel.k8s.io, v4.channel.k8s.io); SPDY is not supported",
        ));
    }
    let protocol =
        pick_protocol(header_str(&req, header::SEC_WEBSOCKET_PROTOCOL)).ok_or_else(|| {
            Failure::bad_request(format!(
                "no supported WebSocket subprotocol offered (supported: {})",
                PROTOCOLS.join(", ")
            ))
        })?;
    let found = api.running(ns, pod, container).await?;
    let url = runtime_url(api, kind, found.id, &opts).await?;
    let runtime = connect_runtime(&url).await?;
    let upgrade = hyper::upgrade::on(&mut req);
    let v5 = protocol == PROTOCOLS[0];
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
        relay(caller, runtime, v5).await;
    });
    let mut r = Response::new(full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).map_err(|e| Failure::internal(e.to_string()))?,
    );
    Ok(r)
}

/// The status sent when stdin had to be ended by closing containerd's connection and the
/// process's exit status was lost with it.
fn unknown_exit_status() -> Vec<u8> {
    let status = serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "reason": "InternalError",
        "message": "stdin was closed: the command's exit status is unknown \
                    (containerd's v4 stream cannot end stdin without closing the stream)",
    });
    let mut frame = vec![STATUS_CHANNEL];
    frame.extend_from_slice(status.to_string().as_bytes());
    frame
}

/// Relays frames both ways until either side ends.
async fn relay<C>(caller: WebSocketStream<C>, runtime: RuntimeSocket, v5: bool)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut caller_tx, mut caller_rx) = caller.split();
    let (mut rt_tx, mut rt_rx) = runtime.split();
    let mut stdin_closed_at: Option<tokio::time::Instant> = None;
    let mut last_output = tokio::time::Instant::now();
    let mut got_status = false;
    let mut closed_runtime = false;
    loop {
        let deadline =
            (stdin_closed_at.is_some() && !closed_runtime).then(|| last_output + STDIN_CLOSE_QUIET);
        let quiet = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = caller_rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if v5 && b.first() == Some(&CLOSE_CHANNEL) {
                        if b.get(1) == Some(&0) && stdin_closed_at.is_none() {
                            stdin_closed_at = Some(tokio::time::Instant::now());
                            last_output = tokio::time::Instant::now();
                        }
                        continue;
                    }
                    if stdin_closed_at.is_none() && rt_tx.send(Message::Binary(b)).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if rt_tx.send(Message::Text(t)).await.is_err() {
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
                    let data = m.clone().into_data();
                    if data.first() == Some(&STATUS_CHANNEL) {
                        got_status = true;
                    }
                    last_output = tokio::time::Instant::now();
                    if caller_tx.send(m).await.is_err() {
                        let _ = rt_tx.close().await;
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    if closed_runtime && !got_status {
                        let _ = caller_tx.send(Message::Binary(unknown_exit_status().into())).await;
                    }
                    // A normal close code: kubectl reads it as the end of the streams.
                    let _ = caller_tx.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "".into(),
                    }))).await;
                    let _ = caller_tx.close().await;
                    break;
                }
                Some(Ok(_)) => {}
            },
            _ = quiet => {
                // v4 cannot end stdin alone: closing the connection is the only way.
                closed_runtime = true;
                let _ = rt_tx.close().await;
            }
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
        assert_eq!(
            pick_protocol("v4.channel.k8s.io, v5.channel.k8s.io"),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            pick_protocol("channel.k8s.io,v4.channel.k8s.io"),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(pick_protocol("SPDY/3.1+portforward.k8s.io"), None);
    }
}
