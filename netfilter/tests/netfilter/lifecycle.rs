//! Routes of the cluster ranges, drift repair and uninstall.

use std::time::Duration;

use pikube_netfilter::{DriftCheck, SyncKind};

use crate::fixture::{service, Cluster, TABLE};
use crate::{fetch_many, ip, try_fetch};

#[test]
fn unallocated_addresses_never_take_the_default_route() {
    let mut c = Cluster::new("route");
    c.sync(&[service("web", ip("10.43.0.40"), c.endpoints(&[1]))]);
    let svc_route = c.node.ip_out(&["route", "get", "10.43.99.99"]);
    assert!(svc_route.contains("dev pikube0"), "{svc_route}");
    assert!(!svc_route.contains("via"), "{svc_route}");
    let pod_route = c.node.ip_out(&["route", "get", "10.42.200.5"]);
    assert!(
        pod_route.contains("unreachable") || pod_route.contains("No route to host"),
        "{pod_route}"
    );
    // Without pikube's routes the same lookup follows the default route (to the client).
    let outside = c.node.ip_out(&["route", "get", "10.44.0.1"]);
    assert!(outside.contains("via 198.18.0.2"), "{outside}");

    let (r, took) = try_fetch(&c.node, ip("10.43.99.99"), 80);
    assert_eq!(
        r.expect_err("unallocated").kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(took < Duration::from_millis(500), "took {took:?}");
    let (r, took) = try_fetch(&c.node, ip("10.42.200.5"), 80);
    assert!(r.is_err());
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[test]
fn flushed_table_is_detected_and_rebuilt() {
    let mut c = Cluster::new("drift");
    let cip = ip("10.43.0.41");
    let services = [service("web", cip, c.endpoints(&[1]))];
    c.sync(&services);
    assert!(!c.proxier.check_drift(DriftCheck::Chains).expect("check"));
    assert!(!c.proxier.check_drift(DriftCheck::Rules).expect("check"));

    // Someone flushes the table: its rules are gone, its chains stay.
    c.node
        .netns()
        .run("nft", &["flush", "table", "inet", TABLE], None)
        .expect("flush");
    assert!(
        try_fetch(&c.node, cip, 80).0.is_err(),
        "flushed table cannot DNAT"
    );
    assert!(!c.proxier.check_drift(DriftCheck::Chains).expect("check"));
    assert!(c.proxier.check_drift(DriftCheck::Rules).expect("check"));
    assert_eq!(c.sync(&services), SyncKind::Full);
    assert_eq!(fetch_many(&c.node, cip, 80, 3).len(), 3);

    // Someone flushes the whole ruleset: the cheap check sees it.
    c.node
        .netns()
        .run("nft", &["flush", "ruleset"], None)
        .expect("flush ruleset");
    assert!(c.proxier.check_drift(DriftCheck::Chains).expect("check"));
    assert_eq!(c.sync(&services), SyncKind::Full);
    assert_eq!(fetch_many(&c.node, cip, 80, 3).len(), 3);
}

#[test]
fn uninstall_removes_table_bridge_and_routes() {
    let mut c = Cluster::new("uninst");
    c.sync(&[service("web", ip("10.43.0.42"), c.endpoints(&[1]))]);
    c.proxier.uninstall().expect("uninstall table");
    c.net.uninstall().expect("uninstall network");
    let tables = c
        .node
        .netns()
        .run("nft", &["list", "tables"], None)
        .expect("list");
    assert!(!tables.contains(TABLE), "{tables}");
    assert!(c
        .node
        .ip_out(&["link", "show", "pikube0"])
        .contains("does not exist"));
    assert!(c
        .node
        .ip_out(&["route", "show", "proto", "152"])
        .trim()
        .is_empty());
    // Uninstalling twice is harmless.
    c.proxier.uninstall().expect("second uninstall");
    c.net.uninstall().expect("second network uninstall");
}
