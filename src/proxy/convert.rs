//! Kubernetes objects → the service proxy's plain input types (`pikube_netfilter`).
//! IPv4 only: IPv6 addresses, slices and services are skipped.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use pikube_netfilter::{
    EndpointInfo, Ipv4Cidr, PeerNode, Protocol, ServiceInfo, ServicePortInfo, TrafficPolicy,
};

/// Label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds`.
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

fn policy(p: Option<&str>) -> TrafficPolicy {
    match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

fn ipv4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// The services the proxy serves: every Service with an IPv4 ClusterIP (not headless, not
/// ExternalName), with the endpoints of its IPv4 EndpointSlices. `node_ips` are the load
/// balancer addresses of `LoadBalancer` services (k3s servicelb: every node answers).
pub fn services(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    node_ips: &[Ipv4Addr],
) -> Vec<ServiceInfo> {
    let mut by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices.iter().map(Arc::as_ref) {
        let labels = slice.metadata.labels.as_ref();
        let Some(name) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        if slice.address_type != "IPv4" {
            continue;
        }
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        by_service
            .entry((ns, name.as_str()))
            .or_default()
            .push(slice);
    }
    services
        .iter()
        .filter_map(|s| {
            let ns = s.metadata.namespace.as_deref().unwrap_or("");
            let name = s.metadata.name.as_deref().unwrap_or("");
            let slices = by_service
                .get(&(ns, name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            service(s, slices, node_ips)
        })
        .collect()
}

fn service(s: &Service, slices: &[&EndpointSlice], node_ips: &[Ipv4Addr]) -> Option<ServiceInfo> {
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ip = ipv4(spec.cluster_ip.as_deref()?)?;
    let mut load_balancer_ips: Vec<Ipv4Addr> = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(ipv4))
        .collect();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        load_balancer_ips.extend_from_slice(node_ips);
    }
    load_balancer_ips.sort();
    load_balancer_ips.dedup();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol: Protocol = p.protocol.as_deref().unwrap_or("TCP").parse().ok()?;
            let name = p.name.clone().unwrap_or_default();
            Some(ServicePortInfo {
                endpoints: endpoints(slices, &name, protocol),
                name,
                protocol,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect();
    Some(ServiceInfo {
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        name: s.metadata.name.clone().unwrap_or_default(),
        cluster_ip: Some(cluster_ip),
        external_ips: spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|i| ipv4(i))
            .collect(),
        load_balancer_ips,
        external_traffic_policy: policy(spec.external_traffic_policy.as_deref()),
        internal_traffic_policy: policy(spec.internal_traffic_policy.as_deref()),
        session_affinity_seconds: affinity,
        ports,
    })
}

/// The endpoints of the slice port named `name` with `protocol` (EndpointSlice ports are
/// matched to Service ports by name, as kube-proxy does).
fn endpoints(slices: &[&EndpointSlice], name: &str, protocol: Protocol) -> Vec<EndpointInfo> {
    let mut out = Vec::new();
    for slice in slices {
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == name
                && p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .parse::<Protocol>()
                    .ok()
                    == Some(protocol)
        });
        let Some(port) = port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(addr) = ep.addresses.first().and_then(|a| ipv4(a)) else {
                continue;
            };
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            out.push(EndpointInfo {
                addr,
                port,
                ready,
                serving: c.and_then(|c| c.serving).unwrap_or(ready),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
            });
        }
    }
    out
}

/// The first IPv4 InternalIP of a node.
pub fn node_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| ipv4(&a.address))
}

/// The IPv4 pod CIDR of a node.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    node.spec.as_ref()?.pod_cidr.as_deref()?.parse().ok()
}

/// Fingerprint of what the proxy reads of a Node: its address and pod CIDR (the node's
/// own facts, or a peer's host-gw route). Heartbeats and conditions do not count.
pub fn routing(node: &Node) -> u64 {
    crate::watch_filter::fingerprint(&(
        node_ip(node),
        node.spec.as_ref().and_then(|s| s.pod_cidr.as_deref()),
    ))
}

/// The other nodes with a pod CIDR and an address: host-gw routes go to them.
pub fn peers(nodes: &[Arc<Node>], me: &str) -> Vec<PeerNode> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| {
            Some(PeerNode {
                pod_cidr: pod_cidr(n)?,
                node_ip: node_ip(n)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_json(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("service")
    }

    fn slice_json(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).expect("slice")
    }

    #[test]
    fn service_and_slices_become_service_info() {
        let svc = service_json(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.43.0.20",
                "externalTrafficPolicy": "Local", "sessionAffinity": "ClientIP",
                "externalIPs": ["198.51.100.7"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}
        }));
        let slice = slice_json(serde_json::json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "nodeName": "n1", "conditions": {"ready": true}},
                {"addresses": ["10.42.1.6"], "nodeName": "n2",
                 "conditions": {"ready": false, "serving": true, "terminating": true}}
            ]
        }));
        let other = slice_json(serde_json::json!({
            "metadata": {"namespace": "other", "name": "web-x",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 1}],
            "endpoints": [{"addresses": ["10.42.9.9"]}]
        }));
        let out = services(
            &[Arc::new(svc)],
            &[Arc::new(slice), Arc::new(other)],
            &[Ipv4Addr::new(192, 0, 2, 1)],
        );
        assert_eq!(out.len(), 1);
        let s = &out[0];
        assert_eq!(s.cluster_ip, Some(Ipv4Addr::new(10, 43, 0, 20)));
        assert_eq!(
            s.load_balancer_ips,
            vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 9)]
        );
        assert_eq!(s.external_ips, vec![Ipv4Addr::new(198, 51, 100, 7)]);
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.session_affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        let http = &s.ports[0];
        assert_eq!(
            (http.port, http.node_port, http.protocol),
            (80, Some(30080), Protocol::Tcp)
        );
        assert_eq!(http.endpoints.len(), 2);
        assert_eq!(http.endpoints[0].port, 8080);
        assert!(
            http.endpoints[1].terminating && http.endpoints[1].serving && !http.endpoints[1].ready
        );
        let dns = &s.ports[1];
        assert_eq!((dns.protocol, dns.endpoints[0].port), (Protocol::Udp, 5353));
    }

    #[test]
    fn headless_and_external_name_services_are_skipped() {
        let headless = service_json(serde_json::json!({
            "metadata": {"namespace": "d", "name": "h"}, "spec": {"clusterIP": "None"}}));
        let external = service_json(serde_json::json!({
            "metadata": {"namespace": "d", "name": "e"},
            "spec": {"type": "ExternalName", "externalName": "example.org"}}));
        assert!(services(&[Arc::new(headless), Arc::new(external)], &[], &[]).is_empty());
    }

    #[test]
    fn peers_are_other_nodes_with_cidr_and_address() {
        let node = |name: &str, cidr: &str, ip: &str| -> Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name}, "spec": {"podCIDR": cidr},
                "status": {"addresses": [{"type": "Hostname", "address": name},
                                         {"type": "InternalIP", "address": ip}]}
            }))
            .expect("node")
        };
        let nodes = [
            Arc::new(node("a", "10.42.0.0/24", "192.0.2.1")),
            Arc::new(node("b", "10.42.1.0/24", "192.0.2.2")),
        ];
        let p = peers(&nodes, "a");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].node_ip, Ipv4Addr::new(192, 0, 2, 2));
        assert_eq!(p[0].pod_cidr.to_string(), "10.42.1.0/24");
    }
}
