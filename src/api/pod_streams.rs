//! The pods' streaming subresources `log`, `exec`, `attach` and `portforward`: checked
//! here with kube-apiserver's messages, then proxied to the agent of the pod's node (its
//! InternalIP and `daemonEndpoints.kubeletEndpoint.Port`) over mutual TLS. Logs stream
//! back as the agent writes them (chunked when following); the others are upgraded
//! connections (WebSocket, SPDY) relayed byte for byte once the agent answered 101.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::rest::{self, Target};
use super::status::ApiError;
use super::{resources, upgrade, ApiServer};

/// Longest time connecting to a node agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whether `t` addresses a pod's log, exec or attach.
pub fn is_stream(t: &Target) -> bool {
    t.def.kind == "Pod"
        && matches!(
            t.subresource.as_deref(),
            Some("log" | "exec" | "attach" | "portforward")
        )
}

fn names(v: &Value, pointer: &str) -> Vec<String> {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The container a request is for, by kube-apiserver's rules (validateContainer).
pub fn pick_container(
    pod: &Value,
    pod_name: &str,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let main = names(pod, "/spec/containers");
    let all: Vec<String> = names(pod, "/spec/initContainers")
        .into_iter()
        .chain(main.iter().cloned())
        .chain(names(pod, "/spec/ephemeralContainers"))
        .collect();
    match asked.filter(|c| !c.is_empty()) {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None => match main.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ApiError::bad_request(format!(
                "pod {pod_name} does not have a container"
            ))),
            _ => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                all.join(" ")
            ))),
        },
    }
}

/// The agent address of node `name`: InternalIP and the kubelet endpoint port.
async fn node_address(api: &ApiServer, name: &str) -> Result<(IpAddr, u16), ApiError> {
    let def = resources::lookup("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let target = Target {
        def,
        namespace: None,
        name: None,
        subresource: None,
    };
    let node = rest::get(api.store(), &target, name).await?;
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
        .and_then(|x| x["address"].as_str())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .ok_or_else(|| ApiError::internal(format!("node {name:?} has no InternalIP")))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::internal(format!("node {name:?} has no agent port")))?;
    Ok((ip, port))
}

/// A mutual-TLS connection to the agent at `ip:port`.
async fn connect(
    tls: &Arc<rustls::ClientConfig>,
    ip: IpAddr,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ApiError> {
    let fail =
        |e: String| ApiError::internal(format!("cannot reach the node agent at {ip}:{port}: {e}"));
    let connecting = async {
        let tcp = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| fail(e.to_string()))?;
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(e.to_string()))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| fail("timed out".into()))?
}

/// The agent's non-success answer as a Status error.
async fn agent_error(resp: hyper::Response<hyper::body::Incoming>) -> ApiError {
    let (code, text) = upgrade::error_text(resp).await;
    ApiError::from_node(code.as_u16(), text)
}

fn plain(body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// Serves `pods/{log,exec,attach}` of the pod `target` names.
pub async fn handle(
    api: &ApiServer,
    target: Target,
    mut req: Request,
) -> Result<Response, ApiError> {
    let sub = target.subresource.clone().unwrap_or_default();
    let method = req.method().clone();
    let allowed = if sub == "log" {
        method == Method::GET
    } else {
        method == Method::GET || method == Method::POST
    };
    if !allowed {
        return Err(ApiError::method_not_allowed(&format!(
            "{method} {}",
            req.uri().path()
        )));
    }
    let name = target.name.clone().unwrap_or_default();
    let ns = target.namespace.clone().unwrap_or_default();
    let pod_target = Target {
        subresource: None,
        ..target
    };
    let pod = rest::get(api.store(), &pod_target, &name).await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let asked = pairs
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.as_str());
    let container = if sub == "portforward" {
        String::new()
    } else {
        pick_container(&pod, &name, asked)?
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if node.is_empty() {
        if sub == "log" {
            // kube-apiserver answers an empty log for a pod not yet bound.
            return Ok(plain(Body::empty()));
        }
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    if sub == "exec" || sub == "attach" {
        let phase = pod
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if matches!(phase, "Succeeded" | "Failed") {
            return Err(ApiError::bad_request(format!(
                "cannot exec into or attach to a container in a completed pod; current phase is {phase}"
            )));
        }
    }
    let tls = api
        .node_tls()
        .ok_or_else(|| ApiError::unavailable("no client certificate for node agents"))?;
    let (ip, port) = node_address(api, &node).await?;
    let rest_query = serde_urlencoded::to_string(
        pairs
            .iter()
            .filter(|(k, _)| k != "container")
            .collect::<Vec<_>>(),
    )
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let path = match sub.as_str() {
        "log" => format!(
            "/containerLogs/{}/{}/{}",
            enc(&ns),
            enc(&name),
            enc(&container)
        ),
        "portforward" => format!("/portForward/{}/{}", enc(&ns), enc(&name)),
        _ => format!("/{sub}/{}/{}/{}", enc(&ns), enc(&name), enc(&container)),
    } + "?"
        + &rest_query;
    let stream = connect(tls, ip, port).await?;
    let forward = upgrade::request(method, &path, &format!("{ip}:{port}"), req.headers())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let resp = upgrade::send(stream, forward)
        .await
        .map_err(|e| ApiError::internal(format!("node agent request failed: {e}")))?;
    if sub == "log" {
        if resp.status() != StatusCode::OK {
            return Err(agent_error(resp).await);
        }
        return Ok(plain(Body::new(resp.into_body())));
    }
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(agent_error(resp).await);
    }
    Ok(upgrade::switch(&mut req, resp, Body::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_with_kube_apiservers_messages() {
        let pod = json!({"spec": {"initContainers": [{"name": "init"}],
            "containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(pick_container(&pod, "p", Some("b")).unwrap(), "b");
        assert_eq!(pick_container(&pod, "p", Some("init")).unwrap(), "init");
        assert_eq!(
            pick_container(&pod, "p", Some("x")).unwrap_err().message,
            "container x is not valid for pod p"
        );
        assert_eq!(
            pick_container(&pod, "p", None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [init a b]"
        );
        let one = json!({"spec": {"containers": [{"name": "only"}]}});
        assert_eq!(pick_container(&one, "p", Some("")).unwrap(), "only");
    }
}
