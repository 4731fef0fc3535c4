//! Traffic from outside the node: NodePort, externalTrafficPolicy, LoadBalancer.

use pikube_netfilter::TrafficPolicy;

use crate::fixture::{service, Cluster, CLIENT_IP, NODE_IP};
use crate::{count, fetch_many, ip};

#[test]
fn node_port_answers_an_outside_client() {
    let mut c = Cluster::new("np");
    let mut s = service("web", ip("10.43.0.30"), c.endpoints(&[1, 2, 3]));
    s.ports[0].node_port = Some(30080);
    c.sync(&[s]);
    let answers = fetch_many(&c.client, NODE_IP, 30080, 30);
    // Cluster policy: the client is masqueraded to the node's pod-bridge address.
    assert!(
        answers.iter().all(|a| a.ends_with(" 10.42.0.1")),
        "{answers:?}"
    );
    assert!(count(&answers, "p1") + count(&answers, "p2") + count(&answers, "p3") == 30);
    // The node itself reaches its own node port too.
    assert_eq!(fetch_many(&c.node, NODE_IP, 30080, 3).len(), 3);
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address() {
    let mut c = Cluster::new("etp");
    let mut eps = c.endpoints(&[2]);
    // An endpoint on another node is never used for external traffic here.
    eps.push(pikube_netfilter::EndpointInfo::ready(
        ip("10.42.7.7"),
        8080,
        Some("n2"),
    ));
    let mut s = service("web", ip("10.43.0.31"), eps);
    s.ports[0].node_port = Some(30081);
    s.external_traffic_policy = TrafficPolicy::Local;
    c.sync(&[s]);
    let answers = fetch_many(&c.client, NODE_IP, 30081, 20);
    let want = format!("p2 {CLIENT_IP}");
    assert!(answers.iter().all(|a| *a == want), "{answers:?}");
}

#[test]
fn load_balancer_ip_answers_on_the_service_port() {
    let mut c = Cluster::new("lb");
    let mut s = service("lb", ip("10.43.0.32"), c.endpoints(&[3]));
    s.load_balancer_ips = vec![NODE_IP];
    c.sync(&[s]);
    let answers = fetch_many(&c.client, NODE_IP, 80, 5);
    assert!(answers.iter().all(|a| a.starts_with("p3 ")), "{answers:?}");
}

#[test]
fn node_port_answers_on_localhost_with_route_localnet() {
    let mut c = Cluster::with_localhost_nodeports("lonp");
    let mut s = service("web", ip("10.43.0.33"), c.endpoints(&[1]));
    s.ports[0].node_port = Some(30082);
    c.sync(&[s]);
    let answers = fetch_many(&c.node, ip("127.0.0.1"), 30082, 3);
    // The 127.0.0.1 source is masqueraded so the pod's reply can come back.
    assert!(answers.iter().all(|a| a == "p1 10.42.0.1"), "{answers:?}");
    let localnet = c
        .node
        .netns()
        .read_sysctl("net.ipv4.conf.all.route_localnet");
    assert_eq!(localnet.as_deref(), Some("1"));
    c.net.uninstall().expect("uninstall");
    let localnet = c
        .node
        .netns()
        .read_sysctl("net.ipv4.conf.all.route_localnet");
    assert_eq!(localnet.as_deref(), Some("0"), "restored");
}
