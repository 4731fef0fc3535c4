//! ClusterIP traffic: spread, endpoint changes, affinity, rejects, pods and hairpin.

use std::io::ErrorKind;
use std::time::Duration;

use pikube_netfilter::{Protocol, SyncKind};

use crate::netns::{fetch_udp, UdpEcho};

use crate::fixture::{service, Cluster};
use crate::{count, fetch_many, ip, try_fetch};

#[test]
fn cluster_ip_spreads_over_three_backends() {
    let mut c = Cluster::new("spread");
    let cip = ip("10.43.0.20");
    c.sync(&[service("web", cip, c.endpoints(&[1, 2, 3]))]);
    let answers = fetch_many(&c.node, cip, 80, 300);
    for name in ["p1", "p2", "p3"] {
        let n = count(&answers, name);
        // Expected 100 each (σ ≈ 8): 60..=140 fails only if the spread is broken.
        assert!(
            (60..=140).contains(&n),
            "{name} answered {n} of 300: {answers:?}"
        );
    }
}

#[test]
fn endpoint_removal_takes_effect() {
    let mut c = Cluster::new("remove");
    let cip = ip("10.43.0.21");
    c.sync(&[service("web", cip, c.endpoints(&[1, 2, 3]))]);
    assert!(count(&fetch_many(&c.node, cip, 80, 60), "p3") > 0);
    let kind = c.sync(&[service("web", cip, c.endpoints(&[1, 2]))]);
    assert_eq!(kind, SyncKind::Incremental);
    let answers = fetch_many(&c.node, cip, 80, 100);
    assert_eq!(count(&answers, "p3"), 0, "{answers:?}");
    assert!(count(&answers, "p1") > 0 && count(&answers, "p2") > 0);
}

#[test]
fn session_affinity_sticks_to_one_backend() {
    let mut c = Cluster::new("sticky");
    let cip = ip("10.43.0.22");
    let mut s = service("sticky", cip, c.endpoints(&[1, 2, 3]));
    s.session_affinity_seconds = Some(300);
    c.sync(&[s]);
    let answers = fetch_many(&c.node, cip, 80, 40);
    let first = answers[0].split(' ').next().unwrap_or_default().to_owned();
    assert_eq!(count(&answers, &first), 40, "{answers:?}");
}

#[test]
fn service_without_endpoints_rejects_at_once() {
    let mut c = Cluster::new("noep");
    let cip = ip("10.43.0.23");
    c.sync(&[service("empty", cip, vec![])]);
    let (r, took) = try_fetch(&c.node, cip, 80);
    let err = r.expect_err("no endpoints must not answer");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(took < Duration::from_millis(500), "took {took:?}");
    // From a pod (forwarded path) as well.
    let (r, took) = try_fetch(&c.backends[0].ns, cip, 80);
    assert_eq!(
        r.expect_err("rejected").kind(),
        ErrorKind::ConnectionRefused
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn pods_reach_services_and_themselves() {
    let mut c = Cluster::new("hairpin");
    let cip = ip("10.43.0.24");
    c.sync(&[service("one", cip, c.endpoints(&[1]))]);
    // Another pod keeps its own address (no masquerade inside the cluster).
    let answers = fetch_many(&c.backends[1].ns, cip, 80, 5);
    assert!(answers.iter().all(|a| a == "p1 10.42.0.12"), "{answers:?}");
    // The endpoint itself reaches its service: hairpin traffic is masqueraded to the
    // node so the reply comes back through it.
    let p1_if = c.backends[0].host_if.clone();
    c.node.ip(&[
        "link",
        "set",
        "dev",
        &p1_if,
        "type",
        "bridge_slave",
        "hairpin",
        "on",
    ]);
    let answers = fetch_many(&c.backends[0].ns, cip, 80, 5);
    assert!(answers.iter().all(|a| a == "p1 10.42.0.1"), "{answers:?}");
}

#[test]
fn udp_cluster_ip_reaches_its_backend() {
    let mut c = Cluster::new("udp");
    let backend = &c.backends[1];
    let _udp = UdpEcho::start(&backend.ns, backend.ip, 5353, "u2");
    let mut s = service("dns", ip("10.43.0.25"), c.endpoints(&[2]));
    s.ports[0].protocol = Protocol::Udp;
    s.ports[0].port = 53;
    s.ports[0].endpoints[0].port = 5353;
    c.sync(&[s]);
    let answer = c.node.run(|| fetch_udp(ip("10.43.0.25"), 53));
    assert_eq!(answer.expect("udp answer"), "u2 10.42.0.1");
    // A pod keeps its address on UDP too.
    let answer = c.backends[0].ns.run(|| fetch_udp(ip("10.43.0.25"), 53));
    assert_eq!(answer.expect("udp answer"), "u2 10.42.0.11");
}
