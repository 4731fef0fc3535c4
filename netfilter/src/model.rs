//! The renderer's input: plain data about services, endpoints and the node. The caller
//! converts Kubernetes objects into these types, so this crate needs no Kubernetes crates.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::Error;

/// An IPv4 network in CIDR notation (`10.43.0.0/16`); the address is stored masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// A network from an address and a prefix length (0..=32); host bits are cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, Error> {
        if prefix > 32 {
            return Err(Error::Invalid(format!("prefix length {prefix} above 32")));
        }
        let mask = Self::mask(prefix);
        Ok(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    /// The `n`-th address of the network (wrapping inside it), e.g. `nth(1)` is the gateway.
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        let host = n & !Self::mask(self.prefix);
        Ipv4Addr::from(u32::from(self.addr) | host)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::Invalid(format!("not an IPv4 CIDR: {s:?}"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Self::new(addr, prefix)
    }
}

/// Transport protocol of a service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lowercase name nftables uses (`tcp`, `udp`, `sctp`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(Error::Invalid(format!("unknown protocol {s:?}"))),
        }
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`: all endpoints, or this node's only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster (the default).
    #[default]
    Cluster,
    /// Only endpoints on this node; the client address is kept for external traffic.
    Local,
}

/// One endpoint of one service port, with the conditions of its EndpointSlice entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The endpoint (pod) address.
    pub addr: Ipv4Addr,
    /// The port on the endpoint for this service port (the resolved targetPort).
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving` (ready, or terminating but still able to serve).
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `nodeName` of the endpoint, used for the `Local` traffic policies.
    pub node_name: Option<String>,
    /// `zone` of the endpoint (carried for topology hints; not used for routing yet).
    pub zone: Option<String>,
}

impl EndpointInfo {
    /// A ready, serving, non-terminating endpoint on `node`.
    pub fn ready(addr: Ipv4Addr, port: u16, node: Option<&str>) -> Self {
        Self {
            addr,
            port,
            ready: true,
            serving: true,
            terminating: false,
            node_name: node.map(str::to_owned),
            zone: None,
        }
    }
}

/// One port of a service and the endpoints that back it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// The port name (may be empty for a single-port service).
    pub name: String,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The service port (on the ClusterIP, external IPs and load-balancer IPs).
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// The endpoints of this port (from the service's EndpointSlices).
    pub endpoints: Vec<EndpointInfo>,
}

/// A service as the proxy needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace of the service.
    pub namespace: String,
    /// Name of the service.
    pub name: String,
    /// The ClusterIP; `None` for headless and ExternalName services.
    pub cluster_ip: Option<Ipv4Addr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress` IPs (the node IPs, in the k3s servicelb way).
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.externalTrafficPolicy` (for node ports, external and load-balancer IPs).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy` (for the ClusterIP).
    pub internal_traffic_policy: TrafficPolicy,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` for no affinity.
    pub session_affinity_seconds: Option<u32>,
    /// The ports.
    pub ports: Vec<ServicePortInfo>,
}

/// Facts about the node the ruleset is rendered for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    /// This node's name (matched against endpoints' `nodeName`).
    pub node_name: String,
    /// This node's addresses.
    pub node_ips: Vec<Ipv4Addr>,
    /// The cluster (pod) CIDR of the whole cluster.
    pub cluster_cidr: Ipv4Cidr,
    /// The service CIDR.
    pub service_cidr: Ipv4Cidr,
    /// This node's pod CIDR, if assigned.
    pub pod_cidr: Option<Ipv4Cidr>,
    /// An address in the service CIDR answered locally (the cluster DNS on `lo`): the
    /// ruleset neither DNATs nor rejects it.
    pub local_dns: Option<Ipv4Addr>,
    /// Addresses node ports answer on; empty means `node_ips`.
    pub nodeport_addresses: Vec<Ipv4Addr>,
    /// Whether node ports also answer on 127.0.0.1 (needs `route_localnet`, as in
    /// kube-proxy's iptables mode).
    pub localhost_nodeports: bool,
}

impl NodeFacts {
    /// Node facts with pikube's default ranges (10.42.0.0/16 pods, 10.43.0.0/16
    /// services, DNS 10.43.0.10).
    pub fn new(node_name: &str, node_ips: Vec<Ipv4Addr>) -> Self {
        Self {
            node_name: node_name.to_owned(),
            node_ips,
            cluster_cidr: Ipv4Cidr {
                addr: Ipv4Addr::new(10, 42, 0, 0),
                prefix: 16,
            },
            service_cidr: Ipv4Cidr {
                addr: Ipv4Addr::new(10, 43, 0, 0),
                prefix: 16,
            },
            pod_cidr: None,
            local_dns: Some(Ipv4Addr::new(10, 43, 0, 10)),
            nodeport_addresses: Vec::new(),
            localhost_nodeports: false,
        }
    }

    /// The addresses node ports answer on.
    pub fn nodeport_ips(&self) -> Vec<Ipv4Addr> {
        let mut ips = if self.nodeport_addresses.is_empty() {
            self.node_ips.clone()
        } else {
            self.nodeport_addresses.clone()
        };
        if self.localhost_nodeports {
            ips.push(Ipv4Addr::LOCALHOST);
        }
        ips.sort();
        ips.dedup();
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parses_masks_and_contains() {
        let c: Ipv4Cidr = "10.42.3.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.42.0.0/16");
        assert!(c.contains(Ipv4Addr::new(10, 42, 255, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 43, 0, 1)));
        assert_eq!(c.nth(1), Ipv4Addr::new(10, 42, 0, 1));
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.0.0.0".parse::<Ipv4Cidr>().is_err());
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn nodeport_ips_default_to_node_ips_plus_localhost() {
        let mut n = NodeFacts::new("n1", vec![Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(n.nodeport_ips(), vec![Ipv4Addr::new(192, 0, 2, 1)]);
        n.localhost_nodeports = true;
        assert_eq!(
            n.nodeport_ips(),
            vec![Ipv4Addr::LOCALHOST, Ipv4Addr::new(192, 0, 2, 1)]
        );
    }
}
