//! A pod's sandbox as CRI wants it: metadata and labels that find the pod again, hostname,
//! log directory, DNS settings by `dnsPolicy`, host ports, namespaces and the pod's cgroup.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use kube::ResourceExt;
use pikube_runtime::cri::v1 as cri;

/// Label on every sandbox and container: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label on every sandbox and container: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label on every sandbox and container: the pod's uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label on every container: its name in the pod spec.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Label on every sandbox and container: the node agent that made it, so agents sharing
/// one containerd leave each other's pods alone.
pub const LABEL_NODE: &str = "io.pikube.node";

/// What the agent knows about its node that sandboxes need.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    /// This node's name.
    pub node_name: String,
    /// Cluster DNS server address given to pods.
    pub cluster_dns: IpAddr,
    /// Cluster domain (`cluster.local`).
    pub cluster_domain: String,
    /// Nameservers, search domains and options of the node (its resolv.conf), for
    /// `dnsPolicy: Default` and host-network pods.
    pub host_dns: HostDns,
    /// Root of the pods' log directories.
    pub log_root: PathBuf,
    /// Parent cgroup of every pod's cgroup (`/kubepods` by default).
    pub cgroup_root: String,
}

/// The node's resolver settings, from a resolv.conf.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostDns {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// `search` (or `domain`) entries.
    pub searches: Vec<String>,
    /// `options` entries.
    pub options: Vec<String>,
}

impl HostDns {
    /// Parses resolv.conf text; unknown lines are ignored as the resolver does.
    pub fn parse(text: &str) -> HostDns {
        let mut dns = HostDns::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => dns.servers.extend(words.next().map(String::from)),
                Some("search") | Some("domain") => {
                    dns.searches = words.map(String::from).collect();
                }
                Some("options") => dns.options.extend(words.map(String::from)),
                _ => {}
            }
        }
        dns
    }
}

/// The directory of a pod's container logs (`<root>/<ns>_<name>_<uid>`, as kubelet).
pub fn log_dir(root: &Path, pod: &Pod) -> PathBuf {
    root.join(format!(
        "{}_{}_{}",
        pod.namespace().unwrap_or_default(),
        pod.name_any(),
        pod.uid().unwrap_or_default()
    ))
}

/// The cgroup of a pod under the agent's cgroup root.
pub fn cgroup_parent(root: &str, pod: &Pod) -> String {
    format!(
        "{}/pod{}",
        root.trim_end_matches('/'),
        pod.uid().unwrap_or_default()
    )
}

/// Labels that find a pod's sandbox and containers again.
pub fn pod_labels(node: &str, pod: &Pod) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .labels()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(LABEL_POD_NAME.into(), pod.name_any());
    labels.insert(
        LABEL_POD_NAMESPACE.into(),
        pod.namespace().unwrap_or_default(),
    );
    labels.insert(LABEL_POD_UID.into(), pod.uid().unwrap_or_default());
    labels.insert(LABEL_NODE.into(), node.to_string());
    labels
}

fn host_network(spec: &PodSpec) -> bool {
    spec.host_network == Some(true)
}

/// The DNS settings a pod gets, by its `dnsPolicy` and `dnsConfig` (kubelet's rules:
/// ClusterFirst → cluster DNS with the namespace's search path and `ndots:5`, falling back
/// to Default for host-network pods; ClusterFirstWithHostNet → cluster DNS; Default → the
/// node's; None → only `dnsConfig`).
pub fn dns_config(net: &NodeNetwork, pod: &Pod) -> Option<cri::DnsConfig> {
    let spec = pod.spec.as_ref()?;
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network(spec),
        _ => false,
    };
    let mut dns = if cluster {
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let domain = &net.cluster_domain;
        let mut searches = vec![
            format!("{ns}.svc.{domain}"),
            format!("svc.{domain}"),
            domain.clone(),
        ];
        searches.extend(net.host_dns.searches.iter().cloned());
        cri::DnsConfig {
            servers: vec![net.cluster_dns.to_string()],
            searches,
            options: vec!["ndots:5".into()],
        }
    } else if policy == "None" {
        cri::DnsConfig::default()
    } else {
        cri::DnsConfig {
            servers: net.host_dns.servers.clone(),
            searches: net.host_dns.searches.clone(),
            options: net.host_dns.options.clone(),
        }
    };
    if let Some(extra) = &spec.dns_config {
        for s in extra.nameservers.iter().flatten() {
            if !dns.servers.contains(s) {
                dns.servers.push(s.clone());
            }
        }
        for s in extra.searches.iter().flatten() {
            if !dns.searches.contains(s) {
                dns.searches.push(s.clone());
            }
        }
        for o in extra.options.iter().flatten() {
            let text = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            let key = text.split(':').next().unwrap_or_default().to_string();
            dns.options
                .retain(|x| x.split(':').next().unwrap_or_default() != key);
            dns.options.push(text);
        }
    }
    dns.searches.truncate(32);
    dns.servers.truncate(3);
    Some(dns)
}

fn protocol(p: Option<&str>) -> i32 {
    match p {
        Some("UDP") => cri::Protocol::Udp as i32,
        Some("SCTP") => cri::Protocol::Sctp as i32,
        _ => cri::Protocol::Tcp as i32,
    }
}

/// The namespaces a pod's sandbox and containers share with the node or each other
/// (hostNetwork, hostPID, hostIPC, shareProcessNamespace).
pub fn namespace_options(spec: &PodSpec) -> cri::NamespaceOption {
    let mode = |node: Option<bool>, otherwise: cri::NamespaceMode| {
        if node == Some(true) {
            cri::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    let pid = if spec.share_process_namespace == Some(true) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid),
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

/// The sandbox config of `pod`, attempt `attempt`.
pub fn config(net: &NodeNetwork, pod: &Pod, attempt: u32) -> cri::PodSandboxConfig {
    let spec = pod.spec.clone().unwrap_or_default();
    let hostnet = host_network(&spec);
    let hostname = if hostnet {
        String::new()
    } else {
        let mut h = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
        h.truncate(63);
        h.trim_end_matches(['-', '.']).to_string()
    };
    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let host_port = p.host_port.filter(|h| *h > 0)?;
            Some(cri::PortMapping {
                protocol: protocol(p.protocol.as_deref()),
                container_port: p.container_port,
                host_port,
                host_ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    let psc = spec.security_context.clone().unwrap_or_default();
    let privileged = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false)
        });
    let sysctls = psc
        .sysctls
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
            namespace: pod.namespace().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: log_dir(&net.log_root, pod).to_string_lossy().into_owned(),
        dns_config: dns_config(net, pod),
        port_mappings,
        labels: pod_labels(&net.node_name, pod),
        annotations: pod
            .annotations()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent(&net.cgroup_root, pod),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options(&spec)),
                run_as_user: psc.run_as_user.map(|value| cri::Int64Value { value }),
                run_as_group: psc.run_as_group.map(|value| cri::Int64Value { value }),
                supplemental_groups: psc.supplemental_groups.clone().unwrap_or_default(),
                privileged,
                ..Default::default()
            }),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> NodeNetwork {
        NodeNetwork {
            node_name: "n1".into(),
            cluster_dns: "10.43.0.10".parse().unwrap(),
            cluster_domain: "cluster.local".into(),
            host_dns: HostDns::parse(
                "# comment\nnameserver 192.0.2.53\nsearch lan example.org\noptions edns0\n",
            ),
            log_root: "/var/log/pods".into(),
            cgroup_root: "/kubepods".into(),
        }
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn cluster_first_dns_uses_the_namespace_search_path() {
        let dns = dns_config(&net(), &pod(json!({"containers": []}))).unwrap();
        assert_eq!(dns.servers, vec!["10.43.0.10"]);
        assert_eq!(
            dns.searches,
            vec![
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "lan",
                "example.org"
            ]
        );
        assert_eq!(dns.options, vec!["ndots:5"]);
    }

    #[test]
    fn host_network_and_default_policies_use_the_node_resolver() {
        let hostnet =
            dns_config(&net(), &pod(json!({"containers": [], "hostNetwork": true}))).unwrap();
        assert_eq!(hostnet.servers, vec!["192.0.2.53"]);
        let with_hostnet = dns_config(
            &net(),
            &pod(json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"})),
        )
        .unwrap();
        assert_eq!(with_hostnet.servers, vec!["10.43.0.10"]);
        let none = dns_config(
            &net(),
            &pod(json!({"containers": [], "dnsPolicy": "None",
                "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["a.b"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
        )
        .unwrap();
        assert_eq!(none.servers, vec!["1.2.3.4"]);
        assert_eq!(none.searches, vec!["a.b"]);
        assert_eq!(none.options, vec!["ndots:2", "edns0"]);
    }

    #[test]
    fn dns_config_options_override_the_defaults() {
        let dns = dns_config(
            &net(),
            &pod(json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}})),
        )
        .unwrap();
        assert_eq!(dns.options, vec!["ndots:1"]);
    }

    #[test]
    fn sandbox_config_carries_identity_ports_and_namespaces() {
        let p = pod(json!({
            "hostname": "db-0",
            "containers": [{"name": "c", "image": "x", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "protocol": "UDP"},
            ]}],
        }));
        let c = config(&net(), &p, 2);
        let m = c.metadata.unwrap();
        assert_eq!(
            (
                m.name.as_str(),
                m.namespace.as_str(),
                m.uid.as_str(),
                m.attempt
            ),
            ("web-1", "shop", "u-1", 2)
        );
        assert_eq!(c.hostname, "db-0");
        assert_eq!(c.log_directory, "/var/log/pods/shop_web-1_u-1");
        assert_eq!(c.port_mappings.len(), 1);
        assert_eq!(c.port_mappings[0].host_port, 8080);
        assert_eq!(c.labels[LABEL_POD_UID], "u-1");
        assert_eq!(c.labels["app"], "web");
        let linux = c.linux.unwrap();
        assert_eq!(linux.cgroup_parent, "/kubepods/podu-1");
        let ns = linux.security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.network, cri::NamespaceMode::Pod as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }
}
