//! The proxy against a real in-process API server, applying into a network namespace the
//! test creates (root): a Service and its EndpointSlice reach the kernel quickly, and
//! their deletion is applied too; Node heartbeats do not wake the proxy.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

use super::*;

/// A network namespace deleted on drop.
struct TestNs(String);

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn service_ips(ns: &NetNs) -> String {
    ns.run(
        "nft",
        &["-j", "list", "map", "inet", TABLE, "service-ips"],
        None,
    )
    .unwrap_or_default()
}

async fn wait_for(ns: &NetNs, what: impl Fn(&str) -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let ns2 = ns.clone();
        let listed = tokio::task::spawn_blocking(move || service_ips(&ns2))
            .await
            .unwrap_or_default();
        if what(&listed) {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the kernel never showed the change: {}", service_ips(ns));
}

/// A proxy running against an in-process API server, applying into its own network
/// namespace; everything goes on drop (the proxy, the store, the namespace).
struct Running {
    netns: NetNs,
    client: Client,
    syncs: Arc<AtomicU64>,
    proxy: Option<tokio::task::JoinHandle<Result<()>>>,
    stop: tokio::sync::watch::Sender<bool>,
    api: crate::controllers::client::TestApi,
    _ns: TestNs,
}

impl Running {
    async fn start(tag: &str) -> Running {
        let name = format!("pkt-{tag}-{}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "ip netns add (needs root)"
        );
        let guard = TestNs(name.clone());
        let netns = NetNs::named(&name);

        let api = crate::controllers::client::TestApi::start().await;
        let client = api.client("system:kube-proxy");
        let cfg = ProxyConfig {
            node_name: "n1".into(),
            node_ips: vec![Ipv4Addr::new(198, 18, 0, 1)],
            cluster_cidr: "10.42.0.0/16".parse().expect("cidr"),
            service_cidr: "10.43.0.0/16".parse().expect("cidr"),
            cluster_dns: Some(Ipv4Addr::new(10, 43, 0, 10)),
            localhost_nodeports: true,
            netns: netns.clone(),
            drift_check_every: Duration::from_millis(200),
            syncs: Arc::default(),
        };
        let syncs = cfg.syncs.clone();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let proxy = tokio::spawn(run(client.clone(), cfg, stop_rx));

        // The table appears once the caches are filled.
        let t = Instant::now();
        while !proxy.is_finished()
            && !service_ips(&netns).contains("\"nftables\"")
            && t.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if proxy.is_finished() {
            panic!("proxy ended early: {:?}", proxy.await);
        }
        Running {
            netns,
            client,
            syncs,
            proxy: Some(proxy),
            stop,
            api,
            _ns: guard,
        }
    }

    /// Stops the proxy (it must stop cleanly) and the store.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(proxy) = self.proxy.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(5), proxy).await;
            assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
        }
        self.api.shutdown().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_the_kernel_quickly() {
    let running = Running::start("proxy").await;
    let (netns, client) = (running.netns.clone(), running.client.clone());
    let route = netns
        .run("ip", &["route", "get", "10.43.200.1"], None)
        .unwrap_or_default();
    assert!(route.contains("dev pikube0"), "{route}");

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .expect("service");
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.42.0.5"], "conditions": {"ready": true}}]
    }))
    .expect("slice");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .create(&PostParams::default(), &slice)
        .await
        .expect("create slice");
    let created = services
        .create(&PostParams::default(), &svc)
        .await
        .expect("create service");
    let cip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("allocated ClusterIP");
    let took = wait_for(&netns, |l| {
        l.contains(&format!("\"{cip}\"")) && l.contains("dnat-tcp-1")
    })
    .await;
    eprintln!("service visible in the kernel after {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // Someone deletes the table: the periodic check notices and rebuilds it.
    netns
        .run("nft", &["delete", "table", "inet", TABLE], None)
        .expect("delete table");
    let took = wait_for(&netns, |l| l.contains(&format!("\"{cip}\""))).await;
    eprintln!("deleted table rebuilt after {took:?}");

    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for(&netns, |l| !l.contains(&format!("\"{cip}\""))).await;

    running.stop().await;
}

/// Waits until the proxy has made more than `after` sync passes.
async fn synced_after(syncs: &AtomicU64, after: u64, what: &str) {
    let t = Instant::now();
    while syncs.load(Ordering::Relaxed) <= after {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no proxy sync after {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_heartbeats_cause_no_sync_and_address_changes_do() {
    let running = Running::start("beat").await;
    // Peers are reached over a veth pair inside the test's own namespace.
    for args in [
        &[
            "link",
            "add",
            "pkt-peers",
            "type",
            "veth",
            "peer",
            "name",
            "pkt-peers1",
        ][..],
        &["link", "set", "pkt-peers1", "up"],
        &["addr", "add", "198.18.0.1/24", "dev", "pkt-peers"],
        &["link", "set", "pkt-peers", "up"],
    ] {
        running.netns.run("ip", args, None).expect("peer link");
    }
    let nodes: Api<Node> = Api::all(running.client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n2"},
        "spec": {"podCIDR": "10.42.7.0/24"},
    }))
    .expect("node");
    let before = running.syncs.load(Ordering::Relaxed);
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    synced_after(&running.syncs, before, "a new node").await;
    let status = |ip: &str, beat: &str| {
        Patch::Merge(serde_json::json!({"status": {
            "addresses": [{"type": "InternalIP", "address": ip}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                "lastHeartbeatTime": beat, "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }}))
    };
    let pp = PatchParams::default();
    let before = running.syncs.load(Ordering::Relaxed);
    nodes
        .patch_status("n2", &pp, &status("198.18.0.2", "2026-01-01T00:00:00Z"))
        .await
        .expect("address");
    synced_after(&running.syncs, before, "the peer's address").await;
    // The host-gw route to the peer comes.
    let t = Instant::now();
    loop {
        let ns = running.netns.clone();
        let route = tokio::task::spawn_blocking(move || {
            ns.run("ip", &["route", "show", "10.42.7.0/24"], None)
                .unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        if route.contains("via 198.18.0.2") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no route: {route:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Wait out the debounce of the last change, then beat many times.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet = running.syncs.load(Ordering::Relaxed);
    for second in 1..=10 {
        let beat = format!("2026-01-01T00:00:{second:02}Z");
        nodes
            .patch_status("n2", &pp, &status("198.18.0.2", &beat))
            .await
            .expect("heartbeat");
    }
    nodes
        .patch_status("n2", &pp, &status("198.18.0.2", "2026-01-01T00:00:11Z"))
        .await
        .expect("heartbeat");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        running.syncs.load(Ordering::Relaxed),
        quiet,
        "heartbeat-only node updates woke the proxy"
    );

    // A change the proxy uses still arrives.
    nodes
        .patch_status("n2", &pp, &status("198.18.0.3", "2026-01-01T00:00:12Z"))
        .await
        .expect("new address");
    synced_after(&running.syncs, quiet, "a changed address").await;
    running.stop().await;
}
