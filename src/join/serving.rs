//! What a joining node's serving certificate may hold. A join token must not buy a
//! certificate the API server's clients would trust for the API server itself, or for
//! another node: as a kubelet serving certificate in Kubernetes, it names the node and its
//! own addresses only, never the API server's names and addresses, the service range or
//! another node's addresses.

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Endpoints, Node};
use pikube_netfilter::Ipv4Cidr;

/// The names and addresses no joining node may have in its serving certificate.
#[derive(Clone, Debug, Default)]
pub struct Reserved {
    /// Names of the API server (its serving certificate's DNS names), lower case.
    pub api_names: BTreeSet<String>,
    /// Addresses of the API server (its serving certificate's IPs and `default/kubernetes`
    /// endpoints).
    pub api_ips: BTreeSet<IpAddr>,
    /// The service range (ClusterIPs: `kubernetes` is one of them).
    pub service_cidr: Option<Ipv4Cidr>,
    /// Other nodes: name, and the addresses and host names they have.
    pub nodes: Vec<(String, Vec<String>)>,
}

impl Reserved {
    /// What this server's serving certificate holds (`sans`, names and IPs) and the
    /// service range `service_cidr`.
    pub fn of_api_server(sans: &[String], service_cidr: &str) -> Reserved {
        let mut r = Reserved {
            service_cidr: service_cidr.parse().ok(),
            ..Reserved::default()
        };
        for san in sans {
            match san.parse::<IpAddr>() {
                Ok(ip) => r.api_ips.insert(ip),
                Err(_) => r.api_names.insert(san.to_ascii_lowercase()),
            };
        }
        r
    }

    /// Adds the addresses in `default/kubernetes`'s Endpoints (other servers' too).
    pub fn add_endpoints(&mut self, endpoints: &Endpoints) {
        let ips = endpoints
            .subsets
            .iter()
            .flatten()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| a.ip.parse::<IpAddr>().ok());
        self.api_ips.extend(ips);
    }

    /// Adds the addresses of the servers of the store (peer addresses, `ip:port`): every
    /// server's API server listens there too.
    pub fn add_servers<'a>(&mut self, peers: impl IntoIterator<Item = &'a str>) {
        let ips = peers
            .into_iter()
            .filter_map(|p| p.parse::<std::net::SocketAddr>().ok())
            .map(|a| a.ip());
        self.api_ips.extend(ips);
    }

    /// Adds the nodes other than `joining`, with their addresses and host names.
    pub fn add_nodes(&mut self, nodes: &[Node], joining: &str) {
        for node in nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            if name == joining {
                continue;
            }
            let addresses = node
                .status
                .iter()
                .flat_map(|s| s.addresses.iter().flatten())
                .map(|a| a.address.to_ascii_lowercase())
                .collect();
            self.nodes.push((name, addresses));
        }
    }

    /// Why `ip` may not be in node `node`'s certificate, if it may not.
    fn refuse_ip(&self, ip: IpAddr) -> Option<String> {
        if ip.is_unspecified() || ip.is_multicast() {
            return Some(format!("{ip} is not a node address"));
        }
        if self.api_ips.contains(&ip) {
            return Some(format!("{ip} is an address of the API server"));
        }
        if let (Some(range), IpAddr::V4(v4)) = (&self.service_cidr, ip) {
            if range.contains(v4) {
                return Some(format!("{ip} is in the service range {range}"));
            }
        }
        self.other_node_with(&ip.to_string())
            .map(|other| format!("{ip} is an address of node {other}"))
    }

    /// Why the DNS name `name` may not be in a node's certificate, if it may not.
    fn refuse_name(&self, name: &str) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if self.api_names.contains(&lower)
            || lower == "localhost"
            || lower == "kubernetes"
            || lower.starts_with("kubernetes.default")
        {
            return Some(format!("{name} is a name of the API server"));
        }
        self.other_node_with(&lower)
            .map(|other| format!("{name} is a host name of node {other}"))
    }

    fn other_node_with(&self, address: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(_, addresses)| addresses.iter().any(|a| a == address))
            .map(|(name, _)| name.as_str())
    }
}

/// The SANs of node `name`'s serving certificate: its name and `ips`, sorted; or why
/// one of them is refused (one line).
pub fn node_sans(name: &str, ips: &[IpAddr], reserved: &Reserved) -> Result<Vec<String>, String> {
    // A node may be named by an address; the certificate then holds that address.
    let named_ip = name.parse::<IpAddr>().ok();
    let why = match named_ip {
        Some(ip) => reserved.refuse_ip(ip),
        None => reserved.refuse_name(name),
    };
    if let Some(why) = why {
        return Err(format!(
            "node name {name:?} cannot be certified: {why}; choose another --node-name"
        ));
    }
    for ip in ips {
        if let Some(why) = reserved.refuse_ip(*ip) {
            return Err(format!(
                "node {name:?} cannot be certified for {ip}: {why}; give this node its own address (--node-ip)"
            ));
        }
    }
    let mut sans: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    sans.push(name.to_string());
    sans.sort();
    sans.dedup();
    Ok(sans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved() -> Reserved {
        let sans = crate::pki::serving_sans(
            "pi1",
            &["192.0.2.10".parse().unwrap()],
            "cluster.local",
            "10.43.0.1".parse().unwrap(),
        );
        let mut r = Reserved::of_api_server(&sans, "10.43.0.0/16");
        let nodes: Vec<Node> = serde_json::from_value(serde_json::json!([
            {"metadata": {"name": "pi2"}, "status": {"addresses": [
                {"type": "InternalIP", "address": "192.0.2.11"},
                {"type": "Hostname", "address": "Pi2-Host"}]}},
            {"metadata": {"name": "pi3"}, "status": {"addresses": [
                {"type": "InternalIP", "address": "192.0.2.12"}]}},
        ]))
        .unwrap();
        r.add_nodes(&nodes, "pi3");
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "subsets": [{"addresses": [{"ip": "192.0.2.20"}]}]
        }))
        .unwrap();
        r.add_endpoints(&endpoints);
        r.add_servers(["192.0.2.30:6444", "not an address"]);
        r
    }

    #[test]
    fn a_node_gets_its_name_and_its_own_addresses() {
        let r = reserved();
        let ips = ["192.0.2.12".parse().unwrap(), "fd00::12".parse().unwrap()];
        assert_eq!(
            node_sans("pi3", &ips, &r).unwrap(),
            ["192.0.2.12", "fd00::12", "pi3"]
        );
        assert_eq!(node_sans("pi4", &[], &r).unwrap(), ["pi4"]);
    }

    #[test]
    fn api_server_names_and_addresses_are_refused() {
        let r = reserved();
        for name in [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "localhost",
            "pi1",
            "127.0.0.1",
            "10.43.0.1",
        ] {
            let err = node_sans(name, &[], &r).unwrap_err();
            assert!(
                err.contains("of the API server") || err.contains("service range"),
                "{name}: {err}"
            );
        }
        for ip in [
            "127.0.0.1",
            "192.0.2.10",
            "192.0.2.20",
            "192.0.2.30",
            "10.43.0.1",
            "::1",
        ] {
            let err = node_sans("pi4", &[ip.parse().unwrap()], &r);
            let refused = err.is_err();
            // ::1 is not in this server's certificate: only what the server holds is refused.
            assert_eq!(refused, ip != "::1", "{ip}: {err:?}");
        }
        let err = node_sans("pi4", &["10.43.200.7".parse().unwrap()], &r).unwrap_err();
        assert!(err.contains("service range 10.43.0.0/16"), "{err}");
        let err = node_sans("pi4", &["0.0.0.0".parse().unwrap()], &r).unwrap_err();
        assert!(err.contains("not a node address"), "{err}");
    }

    #[test]
    fn other_nodes_addresses_and_host_names_are_refused() {
        let r = reserved();
        let err = node_sans("pi4", &["192.0.2.11".parse().unwrap()], &r).unwrap_err();
        assert!(err.contains("address of node pi2"), "{err}");
        let err = node_sans("pi2-host", &[], &r).unwrap_err();
        assert!(err.contains("host name of node pi2"), "{err}");
        // The joining node's own Node does not count as another's.
        assert!(node_sans("pi3", &["192.0.2.12".parse().unwrap()], &r).is_ok());
    }
}
