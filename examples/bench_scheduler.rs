//! `make bench-scheduler`: a release `pikube server` with 100 simulated nodes; 30
//! Deployments of 100 replicas (3,000 pods) are created at once. Printed: how fast pods
//! were bound to nodes (pods/s, from the first Deployment create to the last binding),
//! the time until every pod is Running (the simulator marks bound pods Running, as a
//! kubelet would), and the server's RSS at the end, against the targets of the issue.
//!
//! There is no kube-scheduler on this machine to run beside it; its published range
//! (100-300 pods/s with API round trips) is printed for comparison.
//!
//! `BENCH_BURST=1`: the nodes are registered cordoned and uncordoned only once all 3,000
//! pods exist, so the scheduler alone sets the pace (times count from the uncordon).
//!
//! `BENCH_AFFINITY=1`: the nodes are spread over three zones and every pod also has a
//! preferred pod anti-affinity (hostname, its own Deployment) and a DoNotSchedule zone
//! spread constraint (maxSkew 1), so the cost of inter-pod affinity and topology spread
//! shows.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::json;

const NODES: usize = 100;
const DEPLOYMENTS: usize = 30;
const REPLICAS: usize = 100;

mod common;

/// What the simulated kubelets saw of one pod.
enum Seen {
    /// The pod exists (created by its ReplicaSet).
    Created,
    /// The scheduler bound it.
    Bound,
    /// It is Running.
    Running,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let affinity = std::env::var("BENCH_AFFINITY").is_ok_and(|v| v == "1");
    let burst = std::env::var("BENCH_BURST").is_ok_and(|v| v == "1");
    let flags = ["--disable-agent", "--disable", "dns"].map(String::from);
    let server = common::start(&flags, |_| {}).await?;
    let client = server.client.clone();

    eprintln!("bench-scheduler: registering {NODES} nodes");
    let nodes = Api::<Node>::all(client.clone());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for i in 0..NODES {
        let name = format!("sim-{i:03}");
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
            "spec": {"unschedulable": burst},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
        let res = json!({"cpu": "4", "memory": "8Gi", "pods": "110"});
        nodes
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "capacity": res, "allocatable": res,
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
                }})),
            )
            .await?;
    }

    // The simulated kubelets renew their Leases, so node lifecycle keeps them Ready.
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    tokio::spawn(async move {
        loop {
            let renew = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            for i in 0..NODES {
                let name = format!("sim-{i:03}");
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renew}});
                let _ = leases
                    .patch(
                        &name,
                        &PatchParams::apply("bench").force(),
                        &Patch::Apply(lease),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });

    // The simulated kubelets: bound pods become Running.
    let pods = Api::<Pod>::all(client.clone());
    let (bound_tx, mut bound_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Seen)>();
    let sim_client = client.clone();
    tokio::spawn(async move {
        let mut handled = HashSet::new();
        let mut running = HashSet::new();
        let mut seen = HashSet::new();
        let mut stream = watcher(
            Api::<Pod>::all(sim_client.clone()),
            watcher::Config::default(),
        )
        .boxed();
        while let Some(ev) = stream.next().await {
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = ev else {
                continue;
            };
            let uid = pod.uid().unwrap_or_default();
            if seen.insert(uid.clone()) {
                let _ = bound_tx.send((Instant::now(), Seen::Created));
            }
            let bound = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some();
            let is_running =
                pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if is_running && running.insert(uid.clone()) {
                let _ = bound_tx.send((Instant::now(), Seen::Running));
            }
            if !bound || !handled.insert(uid) {
                continue;
            }
            let _ = bound_tx.send((Instant::now(), Seen::Bound));
            let api =
                Api::<Pod>::namespaced(sim_client.clone(), &pod.namespace().unwrap_or_default());
            let name = pod.name_any();
            tokio::spawn(async move {
                let patch = json!({"status": {"phase": "Running", "podIP": "10.42.0.2",
                    "conditions": [{"type": "Ready", "status": "True"}]}});
                let _ = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await;
            });
        }
    });

    let deployments = Api::<Deployment>::namespaced(client.clone(), "default");
    let mut start = Instant::now();
    for i in 0..DEPLOYMENTS {
        let name = format!("bench-{i:02}");
        let mut pod_spec = json!({"containers": [{"name": "c", "image": "busybox",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]});
        if affinity {
            let own = json!({"matchLabels": {"app": name}});
            pod_spec["affinity"] = json!({"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": own, "topologyKey": "kubernetes.io/hostname"}}]}});
            pod_spec["topologySpreadConstraints"] = json!([{"maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": own}]);
        }
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": pod_spec,
                },
            },
        }))?;
        deployments.create(&PostParams::default(), &d).await?;
    }
    let total = DEPLOYMENTS * REPLICAS;
    let (mut created, mut bound, mut running, mut backlog) = (0usize, 0usize, 0usize, 0usize);
    if burst {
        // Every pod exists (and was found unschedulable) before any node takes pods.
        while created < total {
            let next = tokio::time::timeout(Duration::from_secs(600), bound_rx.recv()).await;
            let Ok(Some((_, seen))) = next else {
                anyhow::bail!("only {created} of {total} pods created");
            };
            created += usize::from(matches!(seen, Seen::Created));
        }
        eprintln!(
            "  {total} pods created in {:.1} s; uncordoning the nodes",
            start.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        start = Instant::now();
        let uncordon = (0..NODES).map(|i| {
            let nodes = nodes.clone();
            async move {
                let patch = Patch::Merge(json!({"spec": {"unschedulable": false}}));
                nodes
                    .patch(&format!("sim-{i:03}"), &PatchParams::default(), &patch)
                    .await
            }
        });
        for r in futures::future::join_all(uncordon).await {
            r?;
        }
    }
    let (mut last_created, mut last_bound, mut last_running) = (start, start, start);
    let mut first_bound = None;
    let limit = Instant::now() + Duration::from_secs(600);
    let mut report = Instant::now();
    eprintln!(
        "  created {DEPLOYMENTS} Deployments in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    while running < total {
        if report.elapsed() >= Duration::from_secs(10) {
            eprintln!(
                "  {:.0} s: {created} created, {bound} bound, {running} running",
                start.elapsed().as_secs_f64()
            );
            report = Instant::now();
        }
        let left = limit.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "only {bound} bound and {running} running of {total} after 10 min"
        );
        let Ok(Some((at, seen))) = tokio::time::timeout(left, bound_rx.recv()).await else {
            anyhow::bail!("simulator stopped");
        };
        match seen {
            Seen::Created => {
                created += 1;
                last_created = at;
            }
            Seen::Bound => {
                bound += 1;
                last_bound = at;
                first_bound.get_or_insert(at);
            }
            Seen::Running => {
                running += 1;
                last_running = at;
            }
        }
        backlog = backlog.max(created.saturating_sub(bound));
    }
    let bind_secs = (last_bound - start).as_secs_f64();
    let rss = common::rss_mb(server.child.id());
    let _ = pods;
    println!("bench-scheduler: {NODES} simulated nodes in 3 zones, {DEPLOYMENTS} Deployments x {REPLICAS} replicas = {total} pods{}{}",
        if affinity { ", each with preferred pod anti-affinity and a zone spread constraint" } else { "" },
        if burst { "; all pods pending before the nodes were uncordoned (times from the uncordon)" } else { "" });
    println!(
        "  scheduled and bound: {total} pods in {bind_secs:.1} s = {:.0} pods/s (target >= 1000; kube-scheduler: 100-300)",
        total as f64 / bind_secs
    );
    let first_bound = first_bound.unwrap_or(start);
    println!(
        "  pods created by the controllers in {:.1} s; at most {backlog} pods waited for the scheduler at once",
        (last_created - start).as_secs_f64()
    );
    println!(
        "  first to last binding: {:.1} s = {:.0} pods/s",
        (last_bound - first_bound).as_secs_f64(),
        total as f64 / (last_bound - first_bound).as_secs_f64().max(1e-3)
    );
    println!(
        "  all Running after:   {:.1} s",
        (last_running - start).as_secs_f64()
    );
    println!("  server RSS:          {rss:.0} MB (target <= 200 MB)");
    Ok(())
}
