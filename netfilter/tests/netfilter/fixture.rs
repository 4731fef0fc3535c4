//! A one-node cluster in namespaces: node `N` with a pod bridge `cni0` (10.42.0.1/24)
//! and the proxy table, three backend pods answering on :8080, and an outside client
//! `C` on 198.18.0.0/24. `N`'s default route points at `C`, so anything pikube failed to
//! keep local would visibly go there. All of it lives in namespaces this test created.

use std::net::Ipv4Addr;

use pikube_netfilter::{
    render, EndpointInfo, NodeFacts, NodeNetwork, NodeNetworkConfig, Proxier, ServiceInfo, SyncKind,
};

pub use crate::netns::service;
use crate::netns::{pod, veth, EchoServer, TestNs};

/// The proxy's table name inside the node namespace.
pub const TABLE: &str = "pikube";
/// The node's address towards the outside client.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The outside client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The node's name.
pub const NODE: &str = "n1";

/// A backend pod and its server.
pub struct Backend {
    /// The server (dropped first; held only to keep it answering).
    pub _server: EchoServer,
    /// The pod namespace.
    pub ns: TestNs,
    /// The pod address.
    pub ip: Ipv4Addr,
    /// The node-side veth of the pod.
    pub host_if: String,
}

/// The one-node cluster (fields drop in order: servers, pods, then the node).
pub struct Cluster {
    /// Backend pods `p1`..`p3` at 10.42.0.11..13.
    pub backends: Vec<Backend>,
    /// The outside client.
    pub client: TestNs,
    /// The proxy of the node.
    pub proxier: Proxier,
    /// The node network setup.
    pub net: NodeNetwork,
    /// The node.
    pub node: TestNs,
    /// Whether node ports answer on 127.0.0.1.
    pub localhost_nodeports: bool,
}

impl Cluster {
    /// Builds the namespaces, installs the node network and an empty ruleset.
    pub fn new(tag: &str) -> Self {
        Self::build(tag, false)
    }

    /// Like [`new`](Self::new), with node ports on 127.0.0.1 too (`route_localnet`).
    pub fn with_localhost_nodeports(tag: &str) -> Self {
        Self::build(tag, true)
    }

    fn build(tag: &str, localhost_nodeports: bool) -> Self {
        let node = TestNs::new(&format!("{tag}n"));
        node.ip(&["link", "add", "cni0", "type", "bridge"]);
        node.ip(&["addr", "add", "10.42.0.1/24", "dev", "cni0"]);
        node.ip(&["link", "set", "cni0", "up"]);
        let client = TestNs::new(&format!("{tag}c"));
        veth(
            &node,
            "up0",
            &format!("{NODE_IP}/24"),
            &client,
            "eth0",
            &format!("{CLIENT_IP}/24"),
        );
        client.ip(&["route", "add", "default", "via", &NODE_IP.to_string()]);
        node.ip(&["route", "add", "default", "via", &CLIENT_IP.to_string()]);
        let backends = (1..=3u8)
            .map(|i| {
                let ip = Ipv4Addr::new(10, 42, 0, 10 + i);
                let (ns, host_if) = pod(
                    &node,
                    "cni0",
                    &format!("{tag}p{i}"),
                    ip,
                    Ipv4Addr::new(10, 42, 0, 1),
                );
                let server = EchoServer::start(&ns, ip, 8080, &format!("p{i}"));
                Backend {
                    _server: server,
                    ns,
                    ip,
                    host_if,
                }
            })
            .collect();
        let net_cfg = NodeNetworkConfig {
            localhost_nodeports,
            ..NodeNetworkConfig::new()
        };
        // A new namespace starts with the host's IPv4 `all` settings; the tests start
        // from the kernel default whatever the host has.
        node.netns()
            .sysctl("net.ipv4.conf.all.route_localnet", "0")
            .expect("route_localnet");
        let mut net = NodeNetwork::new(node.netns(), net_cfg);
        net.install().expect("install node network");
        let proxier = Proxier::new(node.netns(), TABLE);
        let mut c = Self {
            backends,
            client,
            proxier,
            net,
            node,
            localhost_nodeports,
        };
        c.sync(&[]);
        c
    }

    /// The facts of node `n1`.
    pub fn facts(&self) -> NodeFacts {
        let mut facts = NodeFacts::new(NODE, vec![NODE_IP]);
        facts.localhost_nodeports = self.localhost_nodeports;
        facts
    }

    /// Renders `services` and applies them.
    pub fn sync(&mut self, services: &[ServiceInfo]) -> SyncKind {
        let rs = render(TABLE, &self.facts(), services);
        self.proxier.sync(rs).expect("sync ruleset")
    }

    /// Endpoint entries for backends `which` (1-based), on this node.
    pub fn endpoints(&self, which: &[usize]) -> Vec<EndpointInfo> {
        which
            .iter()
            .map(|i| EndpointInfo::ready(self.backends[i - 1].ip, 8080, Some(NODE)))
            .collect()
    }
}
