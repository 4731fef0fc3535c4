//! Tests of the full and incremental command batches.

use std::net::Ipv4Addr;

use nftables::schema::{NfCmd, NfObject};

use super::*;
use crate::model::{EndpointInfo, NodeFacts, ServiceInfo, ServicePortInfo};
use crate::render::render;

fn node() -> NodeFacts {
    NodeFacts::new("n1", vec![Ipv4Addr::new(192, 0, 2, 1)])
}

fn svc(name: &str, last: u8, eps: &[u8]) -> ServiceInfo {
    ServiceInfo {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: Some(Ipv4Addr::new(10, 43, 0, last)),
        ports: vec![ServicePortInfo {
            name: String::new(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            endpoints: eps
                .iter()
                .map(|e| EndpointInfo::ready(Ipv4Addr::new(10, 42, 0, *e), 80, Some("n1")))
                .collect(),
        }],
        ..Default::default()
    }
}

/// `(command, kind, name)` of every command, e.g. `("flush", "chain", "svc-…")`.
fn summary(nft: &Nftables<'_>) -> Vec<(String, String, String)> {
    let v = serde_json::to_value(nft).expect("json");
    v["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .map(|o| {
            let (cmd, body) = o
                .as_object()
                .expect("object")
                .iter()
                .next()
                .expect("command");
            let (kind, obj) = body.as_object().expect("body").iter().next().expect("kind");
            let name = obj
                .get("name")
                .or(obj.get("chain"))
                .and_then(|n| n.as_str())
                .unwrap_or("");
            (cmd.clone(), kind.clone(), name.to_owned())
        })
        .collect()
}

fn has(s: &[(String, String, String)], cmd: &str, kind: &str, name: &str) -> bool {
    s.iter().any(|(c, k, n)| c == cmd && k == kind && n == name)
}

#[test]
fn full_replace_recreates_only_its_own_table() {
    let rs = render("t1", &node(), &[svc("a", 20, &[2])]);
    let nft = rs.full_replace();
    let s = summary(&nft);
    assert_eq!(
        &s[..3],
        &[
            ("add".into(), "table".into(), "t1".into()),
            ("delete".into(), "table".into(), "t1".into()),
            ("add".into(), "table".into(), "t1".into()),
        ]
    );
    let v = serde_json::to_value(&nft).expect("json");
    assert!(v["nftables"].as_array().expect("array").iter().all(|o| {
        let body = o
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|b| b.as_object())
            .and_then(|b| b.values().next());
        body.and_then(|b| b.get("table").or(b.get("name")))
            .is_some()
    }));
    assert!(!matches!(
        nft.objects[0],
        NfObject::CmdObject(NfCmd::Flush(_))
    ));
}

#[test]
fn verdict_maps_are_written_with_verdict_values() {
    let rs = render("t1", &node(), &[]);
    let json = to_json(&rs.full_replace()).expect("json");
    let doc: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    let maps: Vec<&serde_json::Value> = doc["nftables"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|o| o.pointer("/add/map"))
        .collect();
    assert_eq!(maps.len(), 4);
    assert!(maps.iter().all(|m| m["map"] == "verdict"));
}

#[test]
fn endpoint_change_touches_one_chain() {
    let old = render(
        "t1",
        &node(),
        &[svc("a", 20, &[2, 3]), svc("b", 21, &[4, 6])],
    );
    let new = render("t1", &node(), &[svc("a", 20, &[2]), svc("b", 21, &[4, 6])]);
    let nft = new.update_from(&old).expect("incremental");
    let s = summary(&nft);
    // Service a moves from the 2-endpoint chain to the 1-endpoint chain: its entry and
    // slot-1 elements change; no rule is rewritten except the new shared chain's.
    assert!(has(&s, "delete", "element", "service-ips"));
    assert!(has(&s, "delete", "element", "addr-1"));
    assert!(has(&s, "add", "element", "service-ips"));
    assert!(
        !s.iter().any(|(c, k, _)| c == "flush" && k == "chain"),
        "{s:?}"
    );
    assert!(!s.iter().any(|(_, k, _)| k == "table"));
    // Same endpoint count: only slot elements change, no chain and no verdict.
    let moved = render(
        "t1",
        &node(),
        &[svc("a", 20, &[2, 5]), svc("b", 21, &[4, 6])],
    );
    let s = summary(&moved.update_from(&old).expect("incremental"));
    assert!(
        s.iter().all(|(_, k, n)| k == "element"
            && (n.starts_with("addr-") || n.starts_with("port-") || n == "hairpin")),
        "{s:?}"
    );
    // The endpoint that went is no longer a hairpin pair.
    assert!(has(&s, "delete", "element", "hairpin"));
    assert_eq!(new.update_from(&new).map(|n| n.objects.len()), Some(0));
}

#[test]
fn removed_service_loses_element_then_chain() {
    let old = render("t1", &node(), &[svc("a", 20, &[2]), svc("b", 21, &[4, 5])]);
    let new = render("t1", &node(), &[svc("a", 20, &[2])]);
    let s = summary(&new.update_from(&old).expect("incremental"));
    let pos = |cmd: &str, kind: &str, name: &str| {
        s.iter()
            .position(|(c, k, n)| c == cmd && k == kind && n == name)
    };
    let elem = pos("delete", "element", "service-ips").expect("element deleted");
    let flush = pos("flush", "chain", "dnat-tcp-2").expect("unused chain emptied");
    let chain = pos("delete", "chain", "dnat-tcp-2").expect("unused chain deleted");
    let slot = pos("delete", "map", "addr-1").expect("unused slot map deleted");
    assert!(flush < elem && elem < chain && chain < slot, "{s:?}");
}

#[test]
fn changed_node_facts_need_a_full_replace() {
    let old = render("t1", &node(), &[svc("a", 20, &[2])]);
    let mut facts = node();
    facts.local_dns = None;
    let new = render("t1", &facts, &[svc("a", 20, &[2])]);
    // Base chains are plain chains too; only hooks or set definitions force a full
    // replace, so this one is incremental: the check chain is rewritten.
    let s = summary(&new.update_from(&old).expect("incremental"));
    assert!(has(&s, "flush", "chain", "cluster-ips-check"));
    let mut hooked = new.clone();
    if let Some(c) = hooked.chains.get_mut("nat-output") {
        c.hook = None;
    }
    assert!(hooked.update_from(&old).is_none());
    assert!(render("t2", &node(), &[]).update_from(&old).is_none());
}
