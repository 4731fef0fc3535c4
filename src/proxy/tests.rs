//! The proxy against a real in-process API server, applying into a network namespace the
//! test creates (root): a Service and its EndpointSlice reach the kernel quickly, and
//! their deletion is applied too.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};

use super::*;
use crate::api::ApiServer;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_reach_the_kernel_quickly() {
    let name = format!("pkt-proxy-{}", std::process::id());
    let status = Command::new("ip").args(["netns", "add", &name]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "ip netns add (needs root)"
    );
    let guard = TestNs(name.clone());
    let netns = NetNs::named(&name);

    let dir = tempfile::tempdir().expect("temp dir");
    let store = pikube_raft::Store::open(pikube_raft::Config::single_node(dir.path().join("db")))
        .await
        .expect("store");
    let api = ApiServer::new(
        store.clone(),
        "127.0.0.1:6443".into(),
        crate::api::services::ServiceRanges::new("10.43.0.0/16", 30000..=32767).expect("ranges"),
    );
    crate::server::bootstrap(
        &api,
        &crate::server::BootstrapAddresses {
            kubernetes_ip: Ipv4Addr::new(10, 43, 0, 1),
            https_port: 6443,
            cluster_dns: None,
        },
    )
    .await
    .expect("bootstrap");
    let client =
        crate::controllers::client::in_process(&api, "system:kube-proxy", &["system:masters"]);
    let cfg = ProxyConfig {
        node_name: "n1".into(),
        node_ips: vec![Ipv4Addr::new(198, 18, 0, 1)],
        cluster_cidr: "10.42.0.0/16".parse().expect("cidr"),
        service_cidr: "10.43.0.0/16".parse().expect("cidr"),
        cluster_dns: Some(Ipv4Addr::new(10, 43, 0, 10)),
        localhost_nodeports: true,
        netns: netns.clone(),
        drift_check_every: Duration::from_millis(200),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
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

    let _ = stop_tx.send(true);
    let stopped = tokio::time::timeout(Duration::from_secs(5), proxy).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    store.shutdown().await.expect("store shutdown");
    drop(guard);
}
