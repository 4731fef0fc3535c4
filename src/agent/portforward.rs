//! `/portForward/{ns}/{pod}`: CRI PortForward for the pod's sandbox, then the caller's
//! upgrade passed on to containerd's streaming server, which speaks what kubectl sends
//! (SPDY/3.1 `portforward.k8s.io`, ports in stream headers) and what client libraries
//! send (WebSocket `v4.channel.k8s.io` with `?ports=`). kubectl 1.31+ first tries SPDY
//! tunnelled in WebSocket (`SPDY/3.1+portforward.k8s.io`), which containerd does not
//! speak: that attempt is refused and kubectl falls back to plain SPDY by itself.

use std::collections::HashMap;

use http::{header, Request, Response};
use hyper::body::Incoming;
use pikube_runtime::cri::v1 as cri;

use super::api::{AgentApi, Body, Failure};
use super::sandbox::LABEL_POD_UID;
use super::stream::{header_str, relay_raw};

/// The ports of a `ports=` query (comma-separated or repeated).
pub fn ports(query: &str) -> Result<Vec<i32>, Failure> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| Failure::bad_request(format!("invalid query: {e}")))?;
    let mut out = Vec::new();
    for (_, v) in pairs.iter().filter(|(k, _)| k == "ports") {
        for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => out.push(i32::from(n)),
                _ => return Err(Failure::bad_request(format!("invalid port {p:?}"))),
            }
        }
    }
    Ok(out)
}

/// Whether the upgrade is one containerd answers for port forwarding.
pub fn supported(upgrade: &str, offered: &str) -> bool {
    upgrade.eq_ignore_ascii_case("SPDY/3.1")
        || (upgrade.eq_ignore_ascii_case("websocket")
            && offered
                .split(',')
                .map(str::trim)
                .any(|o| o.ends_with("channel.k8s.io")))
}

/// Serves one port-forward request.
pub async fn serve(
    api: &AgentApi,
    req: Request<Incoming>,
    ns: &str,
    pod: &str,
) -> Result<Response<Body>, Failure> {
    let query = req.uri().query().unwrap_or("").to_string();
    let ports = ports(&query)?;
    if !supported(
        header_str(&req, header::UPGRADE),
        header_str(&req, header::SEC_WEBSOCKET_PROTOCOL),
    ) {
        return Err(Failure::bad_request(
            "port forwarding needs SPDY/3.1 or WebSocket v4.channel.k8s.io",
        ));
    }
    let p = api.pod(ns, pod).await?;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    let sandboxes = api
        .cri()
        .runtime()
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                label_selector: HashMap::from([(LABEL_POD_UID.to_string(), uid)]),
                ..Default::default()
            }),
        })
        .await
        .map_err(|e| Failure::internal(format!("runtime: {}", e.message())))?
        .into_inner()
        .items;
    let sandbox = sandboxes
        .into_iter()
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| Failure::not_found(format!("pod {pod:?} has no running sandbox")))?;
    let url = api
        .cri()
        .runtime()
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: sandbox.id,
            port: ports,
        })
        .await
        .map_err(|e| Failure::internal(format!("runtime: {}", e.message())))?
        .into_inner()
        .url;
    // WebSocket callers name their ports in the query; containerd reads them there too.
    let url = if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    };
    relay_raw(req, &url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols() {
        assert_eq!(ports("ports=80,8080&ports=9090").unwrap(), [80, 8080, 9090]);
        assert_eq!(ports("").unwrap(), Vec::<i32>::new());
        assert!(ports("ports=0").is_err());
        assert!(ports("ports=http").is_err());
        assert!(supported("SPDY/3.1", ""));
        assert!(supported("websocket", "v4.channel.k8s.io"));
        assert!(!supported("websocket", "SPDY/3.1+portforward.k8s.io"));
    }
}
