//! Structural tests of the rendered ruleset: one per service type and policy.

use std::net::Ipv4Addr;

use nftables::expr::Expression;
use nftables::stmt::Statement;
use nftables::types::NfHook;

use super::*;
use crate::model::Protocol;
use crate::ruleset::{ElemValue, Key, Ruleset};

const TABLE: &str = "pikube-test";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

fn node() -> NodeFacts {
    NodeFacts::new("n1", vec![ip("192.0.2.1")])
}

fn ep(addr: &str, node: &str) -> EndpointInfo {
    EndpointInfo::ready(ip(addr), 8080, Some(node))
}

fn svc(name: &str, cluster_ip: &str, eps: Vec<EndpointInfo>) -> ServiceInfo {
    ServiceInfo {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: Some(ip(cluster_ip)),
        ports: vec![ServicePortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            endpoints: eps,
        }],
        ..Default::default()
    }
}

fn with_node_port(mut s: ServiceInfo, np: u16) -> ServiceInfo {
    s.ports[0].node_port = Some(np);
    s
}

fn addr_key(addr: &str, proto: Protocol, port: u16) -> Key {
    Key::Entry(ip(addr), proto, port)
}

fn np_key(port: u16) -> Key {
    Key::ProtoPort(Protocol::Tcp, port)
}

fn elem(rs: &Ruleset, set: &str, key: &Key) -> Option<ElemValue> {
    rs.sets[set].elements.get(key).cloned().flatten()
}

fn goto(chain: &str) -> Option<ElemValue> {
    Some(ElemValue::Goto(chain.to_owned()))
}

fn chain_rules<'a>(rs: &'a Ruleset, name: &str) -> &'a [Rule] {
    &rs.chains
        .get(name)
        .unwrap_or_else(|| panic!("no chain {name}"))
        .rules
}

/// The `(address, port)` of every DNAT in `rules`, in order.
fn dnat_targets(rules: &[Rule]) -> Vec<(Ipv4Addr, u16)> {
    rules
        .iter()
        .flat_map(|r| r.iter())
        .filter_map(|s| match s {
            Statement::DNAT(Some(nat)) => match (&nat.addr, &nat.port) {
                (Some(Expression::String(a)), Some(Expression::Number(p))) => {
                    Some((a.parse().ok()?, *p as u16))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The endpoints in the slot maps under `key`, in slot order.
fn slots(rs: &Ruleset, key: &Key) -> Vec<(Ipv4Addr, u16)> {
    (0..)
        .map_while(|i| {
            let addr = rs.sets.get(&addr_map(i))?.elements.get(key)?.clone()?;
            let port = rs.sets.get(&port_map(i))?.elements.get(key)?.clone()?;
            match (addr, port) {
                (ElemValue::Addr(a), ElemValue::Port(p)) => Some((a, p)),
                _ => None,
            }
        })
        .collect()
}

/// The `numgen random mod k` moduli of `rules`, `None` for rules without one.
fn numgen_mods(rules: &[Rule]) -> Vec<Option<u32>> {
    rules
        .iter()
        .filter(|r| r.iter().any(|s| matches!(s, Statement::DNAT(_))))
        .map(|r| {
            r.iter().find_map(|s| match s {
                Statement::Match(m) => match &m.left {
                    Expression::Named(nftables::expr::NamedExpression::Numgen(n)) => Some(n.ng_mod),
                    _ => None,
                },
                _ => None,
            })
        })
        .collect()
}

fn jumps_to(rule: &Rule, chain: &str) -> bool {
    rule.iter().any(|s| match s {
        Statement::Jump(t) | Statement::Goto(t) => t.target == chain,
        _ => false,
    })
}

fn mentions(rule: &Rule, text: &str) -> bool {
    serde_json::to_string(rule)
        .expect("rule json")
        .contains(text)
}

#[test]
fn cluster_ip_spreads_evenly_over_ready_endpoints() {
    let eps = vec![
        ep("10.42.0.3", "n1"),
        ep("10.42.1.4", "n2"),
        ep("10.42.0.2", "n1"),
    ];
    let rs = render(TABLE, &node(), &[svc("web", "10.43.0.20", eps)]);
    let key = addr_key("10.43.0.20", Protocol::Tcp, 80);
    assert_eq!(elem(&rs, SERVICE_IPS, &key), goto("dnat-tcp-3"));
    assert_eq!(
        slots(&rs, &key),
        vec![
            (ip("10.42.0.2"), 8080),
            (ip("10.42.0.3"), 8080),
            (ip("10.42.1.4"), 8080)
        ]
    );
    // 1/3, then 1/2 of the rest, then the last: each slot gets a third.
    let rules = chain_rules(&rs, "dnat-tcp-3");
    assert_eq!(numgen_mods(rules), vec![Some(3), Some(2), None]);
    for (i, rule) in rules.iter().enumerate() {
        assert!(mentions(rule, &format!("@addr-{i}")) && mentions(rule, &format!("@port-{i}")));
        assert!(mentions(rule, "\"l4proto\""));
    }
    for a in ["10.42.0.2", "10.42.0.3", "10.42.1.4"] {
        assert!(rs.sets[HAIRPIN]
            .elements
            .contains_key(&Key::AddrPair(ip(a), ip(a))));
    }
    assert!(rs.sets[NO_ENDPOINT_SERVICES].elements.is_empty());
}

#[test]
fn rule_count_does_not_grow_with_services() {
    let many: Vec<ServiceInfo> = (0..200u32)
        .map(|i| {
            let cip = format!("10.43.1.{}", i + 1);
            let eps = (0..3)
                .map(|e| ep(&format!("10.42.{}.{}", e + 1, i + 1), "n2"))
                .collect();
            svc(&format!("s{i}"), &cip, eps)
        })
        .collect();
    let one = render(TABLE, &node(), &many[..1]);
    let all = render(TABLE, &node(), &many);
    let rules = |rs: &Ruleset| rs.chains.values().map(|c| c.rules.len()).sum::<usize>();
    assert_eq!(rules(&one), rules(&all));
    assert_eq!(all.sets[SERVICE_IPS].elements.len(), 200);
    assert_eq!(all.sets["addr-2"].elements.len(), 200);
}
#[test]
fn only_ready_endpoints_unless_all_are_terminating() {
    let mut not_ready = ep("10.42.0.9", "n1");
    not_ready.ready = false;
    let mut s = svc(
        "web",
        "10.43.0.20",
        vec![ep("10.42.0.2", "n1"), not_ready.clone()],
    );
    let key = addr_key("10.43.0.20", Protocol::Tcp, 80);
    let rs = render(TABLE, &node(), std::slice::from_ref(&s));
    assert_eq!(slots(&rs, &key), vec![(ip("10.42.0.2"), 8080)]);

    // Only a terminating-but-serving endpoint left: traffic drains to it.
    let mut draining = not_ready;
    draining.serving = true;
    draining.terminating = true;
    s.ports[0].endpoints = vec![draining];
    let rs = render(TABLE, &node(), &[s]);
    assert_eq!(slots(&rs, &key), vec![(ip("10.42.0.9"), 8080)]);
}
#[test]
fn service_without_endpoints_rejects() {
    let s = with_node_port(svc("empty", "10.43.0.30", vec![]), 30030);
    let rs = render(TABLE, &node(), &[s]);
    let reject = goto(REJECT_CHAIN);
    assert_eq!(
        elem(
            &rs,
            NO_ENDPOINT_SERVICES,
            &addr_key("10.43.0.30", Protocol::Tcp, 80)
        ),
        reject
    );
    assert_eq!(elem(&rs, NO_ENDPOINT_NODEPORTS, &np_key(30030)), reject);
    assert!(rs.sets[SERVICE_IPS].elements.is_empty());
    assert!(!rs
        .chains
        .keys()
        .any(|c| c.starts_with("svc-") || c.starts_with("ext-")));
    let reject_rules = chain_rules(&rs, REJECT_CHAIN);
    assert!(mentions(&reject_rules[0], "tcp reset"));
    assert!(mentions(&reject_rules[1], "port-unreachable"));
}

#[test]
fn node_port_answers_on_node_addresses_and_masquerades() {
    let s = with_node_port(svc("web", "10.43.0.20", vec![ep("10.42.1.4", "n2")]), 30080);
    let rs = render(TABLE, &node(), std::slice::from_ref(&s));
    assert_eq!(
        elem(&rs, SERVICE_NODEPORTS, &np_key(30080)),
        goto("ext-tcp-1")
    );
    let rules = chain_rules(&rs, "ext-tcp-1");
    assert!(
        jumps_to(&rules[0], MARK_FOR_MASQUERADE),
        "Cluster policy masquerades"
    );
    assert!(jumps_to(&rules[1], "dnat-tcp-1"));
    // The DNAT looks up the node address the client used.
    assert_eq!(
        slots(&rs, &addr_key("192.0.2.1", Protocol::Tcp, 30080)),
        vec![(ip("10.42.1.4"), 8080)]
    );
    let ips: Vec<_> = rs.sets[NODEPORT_IPS].elements.keys().cloned().collect();
    assert_eq!(ips, vec![Key::Addr(ip("192.0.2.1"))]);
    let services = chain_rules(&rs, SERVICES);
    assert!(services
        .iter()
        .any(|r| mentions(r, NODEPORT_IPS) && mentions(r, SERVICE_NODEPORTS)));

    let mut lo = node();
    lo.localhost_nodeports = true;
    let rs = render(TABLE, &lo, &[s]);
    assert!(rs.sets[NODEPORT_IPS]
        .elements
        .contains_key(&Key::Addr(Ipv4Addr::LOCALHOST)));
    assert_eq!(
        slots(&rs, &addr_key("127.0.0.1", Protocol::Tcp, 30080)).len(),
        1
    );
}
#[test]
fn external_traffic_policy_local_uses_local_endpoints_and_keeps_client() {
    let mut s = with_node_port(
        svc(
            "web",
            "10.43.0.20",
            vec![ep("10.42.0.2", "n1"), ep("10.42.1.4", "n2")],
        ),
        30080,
    );
    s.external_traffic_policy = TrafficPolicy::Local;
    let rs = render(TABLE, &node(), std::slice::from_ref(&s));
    assert_eq!(
        elem(&rs, SERVICE_NODEPORTS, &np_key(30080)),
        goto("ext-local-tcp-1")
    );
    assert_eq!(
        slots(&rs, &addr_key("192.0.2.1", Protocol::Tcp, 30080)),
        vec![(ip("10.42.0.2"), 8080)]
    );
    let ext = chain_rules(&rs, "ext-local-tcp-1");
    assert!(
        !ext.iter().any(|r| jumps_to(r, MARK_FOR_MASQUERADE)),
        "no masquerade of outside clients"
    );
    // The ClusterIP still spreads over all endpoints.
    assert_eq!(
        slots(&rs, &addr_key("10.43.0.20", Protocol::Tcp, 80)).len(),
        2
    );

    // On a node without local endpoints the node port drops (other nodes serve it).
    let other = NodeFacts::new("n3", vec![ip("192.0.2.3")]);
    let rs = render(TABLE, &other, &[s]);
    assert_eq!(
        elem(&rs, NO_ENDPOINT_NODEPORTS, &np_key(30080)),
        Some(ElemValue::Drop)
    );
    assert!(elem(&rs, SERVICE_IPS, &addr_key("10.43.0.20", Protocol::Tcp, 80)).is_some());
}
#[test]
fn internal_traffic_policy_local_limits_cluster_ip_to_this_node() {
    let mut s = svc(
        "web",
        "10.43.0.20",
        vec![ep("10.42.0.2", "n1"), ep("10.42.1.4", "n2")],
    );
    s.internal_traffic_policy = TrafficPolicy::Local;
    let key = addr_key("10.43.0.20", Protocol::Tcp, 80);
    let rs = render(TABLE, &node(), std::slice::from_ref(&s));
    assert_eq!(slots(&rs, &key), vec![(ip("10.42.0.2"), 8080)]);
    let rs = render(TABLE, &NodeFacts::new("n3", vec![]), &[s]);
    assert_eq!(elem(&rs, NO_ENDPOINT_SERVICES, &key), Some(ElemValue::Drop));
}
#[test]
fn load_balancer_and_external_ips_go_to_the_external_chain() {
    let mut s = svc("lb", "10.43.0.40", vec![ep("10.42.0.2", "n1")]);
    s.load_balancer_ips = vec![ip("192.0.2.1")];
    s.external_ips = vec![ip("198.51.100.7")];
    let rs = render(TABLE, &node(), &[s]);
    for addr in ["192.0.2.1", "198.51.100.7"] {
        let key = addr_key(addr, Protocol::Tcp, 80);
        assert_eq!(elem(&rs, SERVICE_IPS, &key), goto("ext-tcp-1"));
        assert_eq!(slots(&rs, &key), vec![(ip("10.42.0.2"), 8080)]);
    }
    assert_eq!(
        elem(&rs, SERVICE_IPS, &addr_key("10.43.0.40", Protocol::Tcp, 80)),
        goto("dnat-tcp-1")
    );
}
#[test]
fn session_affinity_remembers_clients_per_endpoint() {
    let mut s = svc(
        "sticky",
        "10.43.0.50",
        vec![ep("10.42.0.2", "n1"), ep("10.42.0.3", "n1")],
    );
    s.session_affinity_seconds = Some(600);
    let rs = render(TABLE, &node(), &[s]);
    let chain = "svc-default/sticky/tcp/80";
    let sets: Vec<&String> = rs.sets.keys().filter(|k| k.starts_with("aff-")).collect();
    assert_eq!(sets.len(), 2);
    for name in &sets {
        assert_eq!(rs.sets[*name].timeout, Some(600));
        assert!(name.ends_with(chain));
    }
    let rules = chain_rules(&rs, chain);
    // Two sticky rules (client known → same endpoint), then the random cascade; every
    // DNAT refreshes the client's entry.
    assert_eq!(rules.len(), 4);
    assert!(mentions(&rules[0], &format!("@{}", sets[0])) && mentions(&rules[0], "\"update\""));
    assert!(rules.iter().all(|r| mentions(r, "\"update\"")));
    assert_eq!(numgen_mods(rules), vec![None, None, Some(2), None]);
    let targets = dnat_targets(rules);
    assert_eq!(targets[..2], targets[2..]);
    assert_eq!(
        targets[..2],
        [(ip("10.42.0.2"), 8080), (ip("10.42.0.3"), 8080)]
    );
}

#[test]
fn udp_and_sctp_ports_are_keyed_by_protocol() {
    let mut s = svc("dns", "10.43.0.60", vec![ep("10.42.0.2", "n1")]);
    s.ports[0].protocol = Protocol::Udp;
    s.ports[0].port = 53;
    let mut sctp = s.ports[0].clone();
    sctp.protocol = Protocol::Sctp;
    s.ports.push(sctp);
    let rs = render(TABLE, &node(), &[s]);
    assert_eq!(
        elem(&rs, SERVICE_IPS, &addr_key("10.43.0.60", Protocol::Udp, 53)),
        goto("dnat-udp-1")
    );
    assert_eq!(
        elem(
            &rs,
            SERVICE_IPS,
            &addr_key("10.43.0.60", Protocol::Sctp, 53)
        ),
        goto("dnat-sctp-1")
    );
    assert!(mentions(&chain_rules(&rs, "dnat-sctp-1")[0], "\"sctp\""));
}
#[test]
fn local_dns_address_is_neither_dnatted_nor_rejected() {
    let s = svc("kube-dns", "10.43.0.10", vec![ep("10.42.0.2", "n1")]);
    let rs = render(TABLE, &node(), &[s]);
    assert!(rs.sets[SERVICE_IPS].elements.is_empty());
    assert!(rs.sets[NO_ENDPOINT_SERVICES].elements.is_empty());
    let check = chain_rules(&rs, CLUSTER_IPS_CHECK);
    assert!(
        mentions(&check[0], "10.43.0.10") && matches!(check[0].last(), Some(Statement::Return(_)))
    );
    assert!(mentions(&check[1], "10.43.0.0") && jumps_to(&check[1], REJECT_CHAIN));
}

#[test]
fn headless_services_render_nothing() {
    let mut s = svc("headless", "10.43.0.70", vec![ep("10.42.0.2", "n1")]);
    s.cluster_ip = None;
    let rs = render(TABLE, &node(), &[s]);
    assert!(rs.sets[SERVICE_IPS].elements.is_empty());
    assert!(!rs.chains.keys().any(|c| c.starts_with("svc-")));
}

#[test]
fn base_chains_hook_before_and_after_dnat() {
    let rs = render(TABLE, &node(), &[]);
    let hook_of = |name: &str| rs.chains[name].hook.expect("base chain");
    assert_eq!(hook_of("nat-prerouting").priority, -100);
    assert_eq!(hook_of("nat-output").hook, NfHook::Output);
    assert!(hook_of("filter-output").priority < hook_of("nat-output").priority);
    assert!(hook_of("filter-output-post-dnat").priority > hook_of("nat-output").priority);
    assert_eq!(hook_of("nat-postrouting").hook, NfHook::Postrouting);
    let masq = chain_rules(&rs, MASQUERADING);
    assert!(masq.iter().any(|r| mentions(r, HAIRPIN)));
    assert!(masq
        .iter()
        .any(|r| mentions(r, "10.42.0.0") && mentions(r, "224.0.0.0")));
    assert!(jumps_to(
        &chain_rules(&rs, SERVICES)[0],
        MARK_FOR_MASQUERADE
    ));
}
