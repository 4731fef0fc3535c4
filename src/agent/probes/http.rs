//! httpGet probes and hooks as kubelet's prober runs them: HTTP or HTTPS (TLS without
//! certificate verification), the pod's httpHeaders (a `Host` header names the virtual
//! host), redirects followed only to the same host (one to another host ends the probe
//! with a warning that counts as success), 200–399 succeeds, at most 10 KiB of the body
//! is read, and the whole exchange is bounded by the probe's timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONNECTION, HOST, LOCATION};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::HTTPGetAction;

/// The most of a response body kubelet reads (its `maxRespBodyLength`).
pub const MAX_BODY: usize = 10 * 1024;
/// Redirects followed before the probe fails (Go's client's limit).
const MAX_REDIRECTS: usize = 10;
/// What kubelet's prober calls itself.
pub const USER_AGENT: &str = "kube-probe/1.33";

/// A probe that did not fail: plain success, or success with a warning to report as a
/// `ProbeWarning` event (a redirect that was not followed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200–299, or a followed redirect ending there.
    Success,
    /// 300–399 that was not followed; the text of the warning.
    Warning(String),
}

/// Where one request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// HTTPS rather than HTTP.
    pub https: bool,
    /// Host name or address (no brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves a `Location` header against this URL (absolute, scheme-relative,
    /// absolute-path or relative); None for one that is no http(s) URL.
    pub fn join(&self, location: &str) -> Option<Url> {
        let location = location.trim();
        let absolute = |https: bool, rest: &str| -> Option<Url> {
            let (authority, path) = match rest.find(['/', '?']) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let uri: http::uri::Authority = authority.parse().ok()?;
            let host = uri.host().trim_start_matches('[').trim_end_matches(']');
            Some(Url {
                https,
                host: host.to_string(),
                port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
                path: with_slash(path),
            })
        };
        let lower = location.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("https://") {
            absolute(true, &location[location.len() - rest.len()..])
        } else if let Some(rest) = lower.strip_prefix("http://") {
            absolute(false, &location[location.len() - rest.len()..])
        } else if let Some(rest) = location.strip_prefix("//") {
            absolute(self.https, rest)
        } else if location.contains("://") {
            None
        } else if location.starts_with('/') {
            Some(Url {
                path: location.to_string(),
                ..self.clone()
            })
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            Some(Url {
                path: with_slash(&format!("{dir}{location}")),
                ..self.clone()
            })
        }
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

fn with_slash(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// One httpGet probe: where it goes and the headers it sends.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The first request's URL.
    pub url: Url,
    /// The pod's httpHeaders (a `Host` one included).
    pub headers: Vec<(String, String)>,
}

impl Probe {
    /// The probe of an httpGet action aimed at `host:port` (the pod IP unless the action
    /// names a host).
    pub fn new(h: &HTTPGetAction, host: String, port: u16) -> Probe {
        Probe {
            url: Url {
                https: h
                    .scheme
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS")),
                host,
                port,
                path: with_slash(h.path.as_deref().unwrap_or("")),
            },
            headers: h
                .http_headers
                .iter()
                .flatten()
                .map(|hd| (hd.name.clone(), hd.value.clone()))
                .collect(),
        }
    }

    /// The headers of every request: kubelet's defaults (User-Agent, `Accept: */*`, an
    /// empty Accept meaning none) under the pod's own.
    fn header_map(&self) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))?;
            let v = HeaderValue::from_str(value)
                .map_err(|_| format!("invalid value of header {name:?}"))?;
            map.append(n, v);
        }
        if !map.contains_key(http::header::USER_AGENT) {
            map.insert(
                http::header::USER_AGENT,
                HeaderValue::from_static(USER_AGENT),
            );
        }
        match map.get(ACCEPT) {
            None => {
                map.insert(ACCEPT, HeaderValue::from_static("*/*"));
            }
            Some(v) if v.is_empty() => {
                map.remove(ACCEPT);
            }
            Some(_) => {}
        }
        map.insert(CONNECTION, HeaderValue::from_static("close"));
        Ok(map)
    }

    /// Runs the probe within `timeout`; Err is a failure with kubelet's message.
    pub async fn run(&self, timeout: Duration) -> Result<Outcome, String> {
        tokio::time::timeout(timeout, self.follow())
            .await
            .map_err(|_| {
                format!(
                    "Get \"{}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)",
                    self.url
                )
            })?
    }

    async fn follow(&self) -> Result<Outcome, String> {
        let mut headers = self.header_map()?;
        let mut url = self.url.clone();
        let mut redirects = 0;
        loop {
            let answer = exchange(&url, &headers)
                .await
                .map_err(|e| format!("Get \"{url}\": {e}"))?;
            let code = answer.status.as_u16();
            let next = matches!(code, 301 | 302 | 303 | 307 | 308)
                .then(|| answer.location.as_deref().and_then(|l| url.join(l)))
                .flatten();
            match next {
                Some(next) if next.host == self.url.host => {
                    if redirects == MAX_REDIRECTS {
                        return Err(format!("Get \"{next}\": stopped after 10 redirects"));
                    }
                    redirects += 1;
                    // A custom Host header survives only relative redirects (Go's rule).
                    let relative = answer
                        .location
                        .as_deref()
                        .is_some_and(|l| !l.contains("://") && !l.starts_with("//"));
                    if !relative {
                        headers.remove(HOST);
                    }
                    url = next;
                }
                _ => return classify(code, &answer.body),
            }
        }
    }
}

/// kubelet's verdict on a final response.
fn classify(code: u16, body: &[u8]) -> Result<Outcome, String> {
    match code {
        200..=299 => Ok(Outcome::Success),
        300..=399 => Ok(Outcome::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            String::from_utf8_lossy(body)
        ))),
        _ => Err(format!("HTTP probe failed with statuscode: {code}")),
    }
}

/// What one request answered.
struct Answer {
    status: http::StatusCode,
    location: Option<String>,
    body: Vec<u8>,
}

/// The TLS client of HTTPS probes: any certificate, as kubelet's `InsecureSkipVerify`.
fn tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| crate::pki::tls::unverified_client().map_err(|e| format!("{e:#}")))
        .clone()
}

/// One GET on a fresh connection.
async fn exchange(url: &Url, headers: &HeaderMap) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("dial tcp {}: {e}", url.authority()))?;
    if url.https {
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("bad server name {:?}: {e}", url.host))?;
        let stream = tokio_rustls::TlsConnector::from(tls()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        request(TokioIo::new(stream), url, headers).await
    } else {
        request(TokioIo::new(tcp), url, headers).await
    }
}

async fn request<T>(io: T, url: &Url, headers: &HeaderMap) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| e.to_string())?;
    let mut req = http::Request::get(url.path.as_str())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = headers.clone();
    if !req.headers().contains_key(HOST) {
        let host = HeaderValue::from_str(&url.authority()).map_err(|e| e.to_string())?;
        req.headers_mut().insert(HOST, host);
    }
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(String::from);
        let mut body = resp.into_body();
        let mut bytes = Vec::new();
        while bytes.len() < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        bytes.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        // More than the limit is cut, not an error (kubelet's "non fatal truncation").
        bytes.truncate(MAX_BODY);
        Ok(Answer {
            status,
            location,
            body: bytes,
        })
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        r = &mut exchange => r,
        c = &mut conn => {
            c.map_err(|e| e.to_string())?;
            exchange.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(https: bool, host: &str, port: u16, path: &str) -> Url {
        Url {
            https,
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn locations_resolve_like_a_browser() {
        let base = url(false, "10.0.0.1", 8080, "/a/b?x=1");
        assert_eq!(
            base.join("https://other:9443/p?q").unwrap(),
            url(true, "other", 9443, "/p?q")
        );
        assert_eq!(
            base.join("HTTP://Other").unwrap(),
            url(false, "Other", 80, "/")
        );
        assert_eq!(
            base.join("//[::1]:81/z").unwrap(),
            url(false, "::1", 81, "/z")
        );
        assert_eq!(base.join("/c").unwrap(), url(false, "10.0.0.1", 8080, "/c"));
        assert_eq!(
            base.join("c?d").unwrap(),
            url(false, "10.0.0.1", 8080, "/a/c?d")
        );
        assert!(base.join("ftp://x/").is_none());
        assert_eq!(url(true, "::1", 443, "/").to_string(), "https://[::1]:443/");
    }

    #[test]
    fn final_answers_are_judged_as_kubelet_does() {
        assert_eq!(classify(204, b""), Ok(Outcome::Success));
        assert_eq!(
            classify(302, b"moved"),
            Ok(Outcome::Warning(
                "Probe terminated redirects, Response body: moved".into()
            ))
        );
        assert_eq!(
            classify(503, b"down"),
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }

    #[test]
    fn default_headers_yield_to_the_pods() {
        let probe = |headers: &[(&str, &str)]| Probe {
            url: url(false, "h", 1, "/"),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        };
        let map = probe(&[]).header_map().unwrap();
        assert_eq!(map[http::header::USER_AGENT], USER_AGENT);
        assert_eq!(map[ACCEPT], "*/*");
        let map = probe(&[
            ("accept", ""),
            ("User-Agent", "me"),
            ("X-A", "1"),
            ("x-a", "2"),
        ])
        .header_map()
        .unwrap();
        assert!(!map.contains_key(ACCEPT));
        assert_eq!(map[http::header::USER_AGENT], "me");
        assert_eq!(map.get_all("x-a").iter().count(), 2);
        assert!(probe(&[("bad name", "x")]).header_map().is_err());
    }

    use crate::agent::probes::test_servers::{Answer, HttpsTarget};

    fn probe_of(port: u16, path: &str, headers: &[(&str, &str)]) -> Probe {
        Probe {
            url: url(true, "127.0.0.1", port, path),
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn https_probes_send_headers_and_follow_only_same_host_redirects() {
        let t = Duration::from_secs(5);
        let server = HttpsTarget::start(|path| match path {
            "/start" => Answer::redirect("/next?x=1"),
            "/next?x=1" => Answer::new(200, "ok"),
            "/away" => Answer::redirect("https://elsewhere.invalid:8443/"),
            "/loop" => Answer::redirect("/loop"),
            "/big" => Answer::new(200, &"x".repeat(100 * 1024)),
            _ => Answer::new(503, "down"),
        })
        .await;
        let p = probe_of(
            server.port,
            "/start",
            &[("Host", "web.example"), ("X-Probe", "1")],
        );
        assert_eq!(p.run(t).await, Ok(Outcome::Success));
        let seen = server.seen();
        assert_eq!(
            seen.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
            ["/start", "/next?x=1"]
        );
        for s in &seen {
            // A custom Host header survives a relative redirect.
            assert_eq!(s.headers[HOST], "web.example");
            assert_eq!(s.headers["x-probe"], "1");
            assert_eq!(s.headers[http::header::USER_AGENT], USER_AGENT);
            assert_eq!(s.headers[ACCEPT], "*/*");
        }
        // Without one, Host is the address probed.
        probe_of(server.port, "/big", &[]).run(t).await.unwrap();
        let host = format!("127.0.0.1:{}", server.port);
        assert_eq!(server.seen().last().unwrap().headers[HOST], host.as_str());
        // A redirect to another host is not followed: success with a warning.
        assert_eq!(
            probe_of(server.port, "/away", &[]).run(t).await,
            Ok(Outcome::Warning(
                "Probe terminated redirects, Response body: moved".into()
            ))
        );
        assert!(!server.seen().iter().any(|s| s.path == "/"));
        let err = probe_of(server.port, "/loop", &[])
            .run(t)
            .await
            .unwrap_err();
        assert!(err.ends_with("stopped after 10 redirects"), "{err}");
        assert_eq!(
            probe_of(server.port, "/other", &[]).run(t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        // The same server over plain HTTP fails (it speaks TLS only).
        let mut plain = probe_of(server.port, "/next?x=1", &[]);
        plain.url.https = false;
        assert!(plain.run(t).await.is_err());
    }

    #[tokio::test]
    async fn a_silent_server_fails_the_probe_at_its_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let started = std::time::Instant::now();
        let err = probe_of(port, "/", &[])
            .run(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(err.contains("context deadline exceeded"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
        // Nobody listening: connection refused.
        let err = probe_of(port, "/", &[])
            .run(Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.contains("dial tcp"), "{err}");
    }
}
