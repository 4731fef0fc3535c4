//! The incremental renderer always equals a full render of the same services.

use std::net::Ipv4Addr;

use super::*;
use crate::model::{EndpointInfo, Protocol, ServicePortInfo, TrafficPolicy};
use crate::render::render;

/// A small deterministic generator (no extra dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn service(i: u64, rng: &mut Lcg) -> ServiceInfo {
    let eps = (0..rng.next(5))
        .map(|e| {
            let mut ep = EndpointInfo::ready(
                Ipv4Addr::new(10, 42, rng.next(3) as u8, (e + 1) as u8),
                8080,
                Some(if rng.next(2) == 0 { "n1" } else { "n2" }),
            );
            ep.ready = rng.next(4) != 0;
            ep
        })
        .collect();
    let policy = |r: &mut Lcg| {
        if r.next(2) == 0 {
            TrafficPolicy::Cluster
        } else {
            TrafficPolicy::Local
        }
    };
    ServiceInfo {
        namespace: "default".into(),
        name: format!("s{i}"),
        cluster_ip: Some(Ipv4Addr::new(10, 43, 1, i as u8 + 1)),
        external_ips: if rng.next(4) == 0 {
            vec![Ipv4Addr::new(198, 51, 100, i as u8 + 1)]
        } else {
            vec![]
        },
        load_balancer_ips: vec![],
        external_traffic_policy: policy(rng),
        internal_traffic_policy: policy(rng),
        session_affinity_seconds: (rng.next(5) == 0).then_some(60),
        ports: vec![ServicePortInfo {
            name: "p".into(),
            protocol: if rng.next(3) == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            port: 80,
            node_port: (rng.next(2) == 0).then_some(30000 + i as u16),
            endpoints: eps,
        }],
    }
}

#[test]
fn random_updates_match_a_full_render() {
    let node = NodeFacts::new("n1", vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let mut rng = Lcg(7);
    let mut inc = Renderer::new("t", node.clone());
    let mut current: BTreeMap<u64, ServiceInfo> = BTreeMap::new();
    for step in 0..400 {
        let i = rng.next(12);
        if rng.next(4) == 0 {
            current.remove(&i);
            inc.remove("default", &format!("s{i}"));
        } else {
            let s = service(i, &mut rng);
            current.insert(i, s.clone());
            inc.upsert(s);
        }
        let all: Vec<ServiceInfo> = current.values().cloned().collect();
        let full = render("t", &node, &all);
        assert!(
            inc.ruleset() == &full,
            "step {step} differs:\n{:#?}\nvs\n{:#?}",
            inc.ruleset(),
            full
        );
    }
}

#[test]
fn node_change_renders_again() {
    let node = NodeFacts::new("n1", vec![Ipv4Addr::new(192, 0, 2, 1)]);
    let mut rng = Lcg(3);
    let mut inc = Renderer::new("t", node.clone());
    let services: Vec<ServiceInfo> = (0..5).map(|i| service(i, &mut rng)).collect();
    for s in &services {
        inc.upsert(s.clone());
    }
    let mut other = node;
    other.node_name = "n2".into();
    inc.set_node(other.clone());
    assert!(inc.ruleset() == &render("t", &other, &services));
}
