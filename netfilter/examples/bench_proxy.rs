//! `make bench-proxy`: 10,000 services × 5 endpoints rendered and applied in a network
//! namespace of its own; prints full sync time, one-service update time at that size,
//! and the time per connection through a ClusterIP against a direct connection to the
//! same backend. Needs root; touches nothing outside the namespaces it creates.

#[path = "../tests/netfilter/netns.rs"]
mod netns;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netns::{fetch, pod, service, EchoServer, TestNs};
use pikube_netfilter::{
    render, DriftCheck, EndpointInfo, NodeFacts, NodeNetwork, NodeNetworkConfig, Proxier, Renderer,
    ServiceInfo, SyncKind,
};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 5;
const TABLE: &str = "pikube";

fn bench_service(i: u32, endpoints: Vec<EndpointInfo>) -> ServiceInfo {
    let cluster_ip = Ipv4Addr::new(10, 43, 1 + (i / 250) as u8, (i % 250 + 1) as u8);
    let mut s = service(&format!("svc{i}"), cluster_ip, endpoints);
    s.namespace = format!("ns{}", i % 50);
    s
}

fn fake_endpoints(i: u32, shift: u32) -> Vec<EndpointInfo> {
    (0..ENDPOINTS)
        .map(|e| {
            let n = i * ENDPOINTS + e + shift;
            let addr = Ipv4Addr::new(10, 42, 1 + (n / 250 % 250) as u8, (n % 250 + 1) as u8);
            EndpointInfo::ready(addr, 8080, Some("other"))
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn connections(ns: &TestNs, addr: Ipv4Addr, port: u16, n: usize) -> Vec<Duration> {
    ns.run(move || {
        (0..n)
            .map(|_| {
                let t = Instant::now();
                fetch(addr, port).expect("request");
                t.elapsed()
            })
            .collect()
    })
}

fn main() {
    let node = TestNs::new("bench");
    node.ip(&["link", "add", "cni0", "type", "bridge"]);
    node.ip(&["addr", "add", "10.42.0.1/24", "dev", "cni0"]);
    node.ip(&["link", "set", "cni0", "up"]);
    let backend_ip = Ipv4Addr::new(10, 42, 0, 10);
    let (backend, _) = pod(
        &node,
        "cni0",
        "benchpod",
        backend_ip,
        Ipv4Addr::new(10, 42, 0, 1),
    );
    let _server = EchoServer::start(&backend, backend_ip, 8080, "backend");
    let mut net = NodeNetwork::new(node.netns(), NodeNetworkConfig::new());
    net.install().expect("node network");

    let facts = NodeFacts::new("bench", vec![Ipv4Addr::new(198, 18, 0, 1)]);
    let mut services: Vec<ServiceInfo> = (0..SERVICES)
        .map(|i| bench_service(i, fake_endpoints(i, 0)))
        .collect();
    // Service 0 is the one the latency measurement goes through: its one endpoint is real.
    services[0] = bench_service(
        0,
        vec![EndpointInfo::ready(backend_ip, 8080, Some("bench"))],
    );
    let cluster_ip = services[0].cluster_ip.expect("cluster ip");

    let t = Instant::now();
    let ruleset = render(TABLE, &facts, &services);
    let render_time = t.elapsed();
    let t = Instant::now();
    let json_len = pikube_netfilter::ruleset::to_json(&ruleset.full_replace())
        .expect("json")
        .len();
    let json_time = t.elapsed();
    let mut proxier = Proxier::new(node.netns(), TABLE);
    let mut full = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        proxier.full_sync(ruleset.clone()).expect("full sync");
        full.push(t.elapsed());
    }
    let (mut updates, mut applies) = (Vec::new(), Vec::new());
    for round in 1..=5u32 {
        services[5000].ports[0].endpoints = fake_endpoints(5000, round * 7919);
        let t = Instant::now();
        let desired = render(TABLE, &facts, &services);
        let rendered = t.elapsed();
        if round == 1 {
            let t = Instant::now();
            let applied = proxier.applied().expect("installed");
            let same = *applied == desired;
            let eq_time = t.elapsed();
            let batch = desired.update_from(applied).expect("incremental");
            let diff_time = t.elapsed() - eq_time;
            let json = pikube_netfilter::ruleset::to_json(&batch).expect("json");
            println!(
                "update detail: compare {:.1} ms (equal: {same}), diff {:.1} ms, json {:.1} ms ({} bytes)",
                eq_time.as_secs_f64() * 1e3,
                diff_time.as_secs_f64() * 1e3,
                (t.elapsed() - eq_time - diff_time).as_secs_f64() * 1e3,
                json.len()
            );
        }
        let kind = proxier.sync(desired).expect("update");
        updates.push(t.elapsed());
        applies.push(t.elapsed() - rendered);
        assert_eq!(kind, SyncKind::Incremental);
    }
    // The same through the incremental renderer: only the changed service is rendered.
    let mut renderer = Renderer::new(TABLE, facts.clone());
    for s in &services {
        renderer.upsert(s.clone());
    }
    let same = proxier
        .sync(renderer.ruleset().clone())
        .expect("same state");
    assert_eq!(same, SyncKind::Unchanged);
    let mut incremental = Vec::new();
    for round in 6..=10u32 {
        services[5000].ports[0].endpoints = fake_endpoints(5000, round * 7919);
        let t = Instant::now();
        renderer.upsert(services[5000].clone());
        let kind = proxier.sync(renderer.ruleset().clone()).expect("update");
        incremental.push(t.elapsed());
        assert_eq!(kind, SyncKind::Incremental);
    }

    let t = Instant::now();
    assert!(!proxier
        .check_drift(DriftCheck::Chains)
        .expect("drift check"));
    let drift_chains = t.elapsed();
    let t = Instant::now();
    assert!(!proxier.check_drift(DriftCheck::Rules).expect("drift check"));
    let drift_rules = t.elapsed();

    // Warm up both paths, then interleave rounds so machine noise hits both alike.
    connections(&node, backend_ip, 8080, 100);
    connections(&node, cluster_ip, 80, 100);
    let (mut direct, mut proxied) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        direct.extend(connections(&node, backend_ip, 8080, 200));
        proxied.extend(connections(&node, cluster_ip, 80, 200));
    }

    proxier.uninstall().expect("uninstall");
    net.uninstall().expect("node network uninstall");

    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("services: {SERVICES} x {ENDPOINTS} endpoints");
    let ms = |label: &str, d: Duration| println!("{label:<58}{:9.1} ms", d.as_secs_f64() * 1e3);
    ms("render", render_time);
    println!("full-sync JSON size: {:.1} MB", json_len as f64 / 1e6);
    ms("full-sync JSON", json_time);
    ms("full sync (median of 3)", median(full));
    ms(
        "one-service update, full render + diff + nft (median of 5)",
        median(updates),
    );
    ms("  of which diff + nft", median(applies));
    ms(
        "one-service update, incremental render + diff + nft",
        median(incremental),
    );
    ms("drift check (chains)", drift_chains);
    ms("drift check (rules)", drift_rules);
    let (dm, pm) = (percentile(&direct, 0.5), percentile(&proxied, 0.5));
    println!(
        "connection direct:    median {:7.1} us  p90 {:7.1} us  ({} connections)",
        us(dm),
        us(percentile(&direct, 0.9)),
        direct.len()
    );
    println!(
        "connection ClusterIP: median {:7.1} us  p90 {:7.1} us  ({} connections)",
        us(pm),
        us(percentile(&proxied, 0.9)),
        proxied.len()
    );
    println!(
        "added per connection: median {:+7.1} us (ratio {:.3})",
        us(pm) - us(dm),
        us(pm) / us(dm)
    );
}
