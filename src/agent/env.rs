//! A container's environment as kubelet builds it: Service links, `envFrom`, `env` with
//! `valueFrom` (configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef), and `$(VAR)`
//! expansion in values, command and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::scheduler::quantity;

/// Why a container's config cannot be built (kubelet's CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<kube::Error> for ConfigError {
    fn from(e: kube::Error) -> Self {
        ConfigError(e.to_string())
    }
}

/// The values of the pod's own fields that `fieldRef` may name.
pub fn field_value(
    pod: &Pod,
    path: &str,
    host_ip: &str,
    pod_ip: &str,
) -> Result<String, ConfigError> {
    let spec = pod.spec.as_ref();
    let value = match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.hostIP" => host_ip.to_string(),
        "status.hostIPs" => host_ip.to_string(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        p => {
            let map = |m: &BTreeMap<String, String>, key: &str| m.get(key).cloned();
            if let Some(key) = p
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                map(pod.labels(), key).unwrap_or_default()
            } else if let Some(key) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                map(pod.annotations(), key).unwrap_or_default()
            } else if p == "metadata.labels" {
                format_map(pod.labels())
            } else if p == "metadata.annotations" {
                format_map(pod.annotations())
            } else {
                return Err(ConfigError(format!("unsupported fieldRef path {p:?}")));
            }
        }
    };
    Ok(value)
}

/// `key="value"` lines, as the downward API writes label and annotation maps.
pub fn format_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The value of a `resourceFieldRef` (`limits.cpu`, `requests.memory`, …) divided by its
/// divisor; limits fall back to the node's allocatable as kubelet does.
pub fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_cpu_millis: i64,
    node_memory: i64,
) -> Result<String, ConfigError> {
    let res = container.resources.clone().unwrap_or_default();
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| ConfigError(format!("unsupported resourceFieldRef {resource:?}")))?;
    let list = match kind {
        "limits" => res.limits.unwrap_or_default(),
        "requests" => res.requests.unwrap_or_default(),
        _ => {
            return Err(ConfigError(format!(
                "unsupported resourceFieldRef {resource:?}"
            )))
        }
    };
    let cpu = name == "cpu";
    let raw = list.get(name).map(|q| q.0.clone());
    // Values in milli-units for cpu, bytes otherwise.
    let value = match (raw, kind, cpu) {
        (Some(q), _, true) => quantity::cpu_millis(&q).unwrap_or(0),
        (Some(q), _, false) => quantity::bytes(&q).unwrap_or(0),
        (None, "limits", true) => node_cpu_millis,
        (None, "limits", false) if name == "memory" => node_memory,
        (None, _, _) => 0,
    };
    let divisor = match divisor.filter(|d| !d.is_empty()) {
        Some(d) if cpu => quantity::cpu_millis(d).unwrap_or(1000),
        Some(d) => quantity::bytes(d).unwrap_or(1),
        None if cpu => 1000,
        None => 1,
    }
    .max(1);
    // Rounded up, as kubelet's ExtractContainerResourceValue does.
    Ok(((value + divisor - 1) / divisor).to_string())
}

/// Replaces `$(VAR)` with values from `env` (`$$(VAR)` escapes; unknown names stay).
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Docker-link style variables of a Service (`FOO_SERVICE_HOST`, `FOO_PORT_80_TCP`, …).
fn service_link_vars(svc: &Service, out: &mut Vec<(String, String)>) {
    let Some(spec) = &svc.spec else { return };
    let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None" && !ip.is_empty())
    else {
        return;
    };
    let prefix = svc.name_any().to_uppercase().replace('-', "_");
    let ports = spec.ports.clone().unwrap_or_default();
    out.push((format!("{prefix}_SERVICE_HOST"), ip.to_string()));
    if let Some(first) = ports.first() {
        out.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
        let proto = first.protocol.clone().unwrap_or_else(|| "TCP".into());
        out.push((
            format!("{prefix}_PORT"),
            format!("{}://{ip}:{}", proto.to_lowercase(), first.port),
        ));
    }
    for p in &ports {
        if let Some(name) = &p.name {
            out.push((
                format!(
                    "{prefix}_SERVICE_PORT_{}",
                    name.to_uppercase().replace('-', "_")
                ),
                p.port.to_string(),
            ));
        }
        let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
        let base = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((
            base.clone(),
            format!("{}://{ip}:{}", proto.to_lowercase(), p.port),
        ));
        out.push((format!("{base}_PROTO"), proto.to_lowercase()));
        out.push((format!("{base}_PORT"), p.port.to_string()));
        out.push((format!("{base}_ADDR"), ip.to_string()));
    }
}

/// Facts about the node and pod that env values and volume contents may refer to.
pub struct EnvContext<'a> {
    /// API client for ConfigMaps, Secrets and Services.
    pub client: &'a Client,
    /// The node's IP.
    pub host_ip: &'a str,
    /// The pod's IP (empty before the sandbox has one).
    pub pod_ip: &'a str,
    /// Node allocatable CPU in millicores (for limits not set).
    pub node_cpu_millis: i64,
    /// Node allocatable memory in bytes (for limits not set).
    pub node_memory: i64,
    /// Service-account tokens of projected volumes.
    pub tokens: &'a super::tokens::ProjectedTokens,
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The ConfigMap `name`, or None when it does not exist.
pub async fn config_map(
    api: &Api<ConfigMap>,
    name: &str,
) -> Result<Option<ConfigMap>, ConfigError> {
    match api.get(name).await {
        Ok(cm) => Ok(Some(cm)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The Secret `name`, or None when it does not exist.
pub async fn secret(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, ConfigError> {
    match api.get(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if not_found(&e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn secret_string(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .or_else(|| s.string_data.as_ref().and_then(|d| d.get(key).cloned()))
}

/// The environment of `container` in `pod`, in kubelet's order: Service links first, then
/// `envFrom`, then `env` (later entries win; values expanded against earlier ones).
pub async fn resolve(
    ctx: &EnvContext<'_>,
    pod: &Pod,
    container: &Container,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.namespace().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut env: Vec<(String, String)> = Vec::new();

    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut services = Vec::new();
    if links {
        services.extend(
            Api::<Service>::namespaced(ctx.client.clone(), &ns)
                .list(&ListParams::default())
                .await?
                .items,
        );
    }
    if ns != "default" || !links {
        if let Ok(k) = Api::<Service>::namespaced(ctx.client.clone(), "default")
            .get("kubernetes")
            .await
        {
            services.retain(|s| s.name_any() != "kubernetes");
            services.push(k);
        }
    }
    for svc in &services {
        service_link_vars(svc, &mut env);
    }

    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match config_map(&cms, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        env.push((format!("{prefix}{k}"), v.clone()));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secret(&secrets, &r.name).await? {
                Some(s) => {
                    for k in s.data.iter().flatten().map(|(k, _)| k.clone()) {
                        if let Some(v) = secret_string(&s, &k) {
                            env.push((format!("{prefix}{k}"), v));
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }

    for var in container.env.iter().flatten() {
        let value = match &var.value_from {
            None => Some(expand(var.value.as_deref().unwrap_or(""), &env)),
            Some(src) => {
                if let Some(r) = &src.config_map_key_ref {
                    match config_map(&cms, &r.name).await? {
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => Some(v.clone()),
                            None if r.optional == Some(true) => None,
                            None => {
                                return Err(ConfigError(format!(
                                    "couldn't find key {} in ConfigMap {ns}/{}",
                                    r.key, r.name
                                )))
                            }
                        },
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!("configmap \"{}\" not found", r.name)))
                        }
                    }
                } else if let Some(r) = &src.secret_key_ref {
                    match secret(&secrets, &r.name).await? {
                        Some(s) => match secret_string(&s, &r.key) {
                            Some(v) => Some(v),
                            None if r.optional == Some(true) => None,
                            None => {
                                return Err(ConfigError(format!(
                                    "couldn't find key {} in Secret {ns}/{}",
                                    r.key, r.name
                                )))
                            }
                        },
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!("secret \"{}\" not found", r.name)))
                        }
                    }
                } else if let Some(f) = &src.field_ref {
                    Some(field_value(pod, &f.field_path, ctx.host_ip, ctx.pod_ip)?)
                } else if let Some(r) = &src.resource_field_ref {
                    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(name) => pod
                            .spec
                            .iter()
                            .flat_map(|s| s.containers.iter())
                            .find(|c| c.name == name)
                            .ok_or_else(|| ConfigError(format!("container {name:?} not found")))?,
                        None => container,
                    };
                    Some(resource_value(
                        target,
                        &r.resource,
                        r.divisor.as_ref().map(|d| d.0.as_str()),
                        ctx.node_cpu_millis,
                        ctx.node_memory,
                    )?)
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            env.push((var.name.clone(), v));
        }
    }
    // Later definitions win; keep the last of each name in first-seen order.
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expands_references() {
        let env = vec![
            ("A".to_string(), "1".to_string()),
            ("B".into(), "two".into()),
        ];
        assert_eq!(expand("x$(A)y$(B)", &env), "x1ytwo");
        assert_eq!(expand("$$(A) $(C) $(", &env), "$(A) $(C) $(");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn field_refs_read_the_pod() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": []},
        }))
        .unwrap();
        assert_eq!(field_value(&pod, "metadata.name", "h", "i").unwrap(), "p");
        assert_eq!(field_value(&pod, "spec.nodeName", "h", "i").unwrap(), "n1");
        assert_eq!(
            field_value(&pod, "status.podIP", "h", "1.2.3.4").unwrap(),
            "1.2.3.4"
        );
        assert_eq!(
            field_value(&pod, "metadata.labels['app']", "h", "i").unwrap(),
            "web"
        );
        assert_eq!(
            field_value(&pod, "metadata.labels", "h", "i").unwrap(),
            "app=\"web\""
        );
        assert!(field_value(&pod, "spec.nope", "h", "i").is_err());
    }

    #[test]
    fn resource_fields_round_up_by_divisor() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}, "requests": {"cpu": "100m"}},
        }))
        .unwrap();
        assert_eq!(
            resource_value(&c, "limits.cpu", None, 4000, 1 << 30).unwrap(),
            "1"
        );
        assert_eq!(
            resource_value(&c, "limits.cpu", Some("1m"), 4000, 1 << 30).unwrap(),
            "250"
        );
        assert_eq!(
            resource_value(&c, "limits.memory", Some("1Mi"), 4000, 1 << 30).unwrap(),
            "64"
        );
        assert_eq!(
            resource_value(&c, "requests.cpu", Some("1m"), 4000, 1 << 30).unwrap(),
            "100"
        );
        let none: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        assert_eq!(
            resource_value(&none, "limits.cpu", None, 4000, 1 << 30).unwrap(),
            "4"
        );
        assert!(resource_value(&none, "cpu", None, 4000, 0).is_err());
    }

    #[test]
    fn service_links_follow_docker_conventions() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "redis-main"},
            "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "db", "port": 6379, "protocol": "TCP"}]},
        }))
        .unwrap();
        let mut env = Vec::new();
        service_link_vars(&svc, &mut env);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_MAIN_SERVICE_HOST"), Some("10.43.0.20"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_MAIN_SERVICE_PORT_DB"), Some("6379"));
        assert_eq!(get("REDIS_MAIN_PORT_6379_TCP_ADDR"), Some("10.43.0.20"));
        assert_eq!(get("REDIS_MAIN_PORT"), Some("tcp://10.43.0.20:6379"));
    }
}
