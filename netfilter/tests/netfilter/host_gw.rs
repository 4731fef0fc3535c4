//! Two namespaces as two nodes: each routes the other's pod CIDR via its node IP.

use std::net::Ipv4Addr;

use pikube_netfilter::{render, NodeFacts, NodeNetwork, NodeNetworkConfig, PeerNode, Proxier};

use crate::netns::{pod, veth, EchoServer, TestNs};
use crate::{fetch_many, ip};

struct Node {
    proxier: Proxier,
    net: NodeNetwork,
    ns: TestNs,
}

fn node(ns: TestNs, name: &str, node_ip: Ipv4Addr, pod_cidr: &str) -> Node {
    let gw = format!("{}/24", pod_cidr.replace(".0/24", ".1"));
    ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    ns.ip(&["addr", "add", &gw, "dev", "cni0"]);
    ns.ip(&["link", "set", "cni0", "up"]);
    let mut net = NodeNetwork::new(ns.netns(), NodeNetworkConfig::new());
    net.install().expect("install");
    let mut proxier = Proxier::new(ns.netns(), "pikube");
    let mut facts = NodeFacts::new(name, vec![node_ip]);
    facts.pod_cidr = Some(pod_cidr.parse().expect("cidr"));
    proxier
        .sync(render("pikube", &facts, &[]))
        .expect("ruleset");
    Node { proxier, net, ns }
}

#[test]
fn two_nodes_reach_each_others_pod_cidr() {
    let a = TestNs::new("gwa");
    let b = TestNs::new("gwb");
    veth(&a, "eth0", "198.19.0.1/24", &b, "eth0", "198.19.0.2/24");
    let mut na = node(a, "a", ip("198.19.0.1"), "10.42.1.0/24");
    let mut nb = node(b, "b", ip("198.19.0.2"), "10.42.2.0/24");
    let (pod_a, _) = pod(&na.ns, "cni0", "gwpa", ip("10.42.1.10"), ip("10.42.1.1"));
    let (pod_b, _) = pod(&nb.ns, "cni0", "gwpb", ip("10.42.2.10"), ip("10.42.2.1"));
    let _server = EchoServer::start(&pod_b, ip("10.42.2.10"), 8080, "b");

    // Before peers are known the other node's range is unreachable, not default-routed.
    assert!(
        na.ns
            .ip_out(&["route", "get", "10.42.2.10"])
            .contains("unreachable")
            || na
                .ns
                .ip_out(&["route", "get", "10.42.2.10"])
                .contains("No route")
    );
    let peer = |cidr: &str, via: &str| PeerNode {
        pod_cidr: cidr.parse().expect("cidr"),
        node_ip: ip(via),
    };
    na.net
        .set_peers(&[peer("10.42.2.0/24", "198.19.0.2")])
        .expect("peers a");
    nb.net
        .set_peers(&[peer("10.42.1.0/24", "198.19.0.1")])
        .expect("peers b");
    let answers = fetch_many(&pod_a, ip("10.42.2.10"), 8080, 3);
    // Pod to pod keeps the source address (no masquerade inside the cluster CIDR).
    assert!(answers.iter().all(|a| a == "b 10.42.1.10"), "{answers:?}");

    // A node leaving the list takes its route with it.
    na.net.set_peers(&[]).expect("no peers");
    let route = na.ns.ip_out(&["route", "get", "10.42.2.10"]);
    assert!(
        route.contains("unreachable") || route.contains("No route"),
        "{route}"
    );
    na.proxier.uninstall().expect("uninstall a");
    nb.proxier.uninstall().expect("uninstall b");
    drop(pod_a);
}
