//! `make bench-pods`: a release `pikube server` with its node agent and a real
//! containerd, the busybox image imported. Measured in one run:
//! - the peer: CRI's own RunPodSandbox + CreateContainer + StartContainer against the same
//!   containerd (what any kubelet must pay), 20 times;
//! - pod startup latency, 100 pods created one by one: from the create call to the pod
//!   seen Running and Ready on a watch (Kubernetes' pod startup SLI);
//! - a 30-replica Deployment: from create to all 30 pods Ready;
//! - RSS: a control-plane-only server, then the server with its agent at 0 and 50 pods
//!   (the agent's share is the difference), and containerd's.
//!
//! Needs root, containerd, runc and the CNI plugins (as the e2e tests).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use pikube_runtime::cri::v1 as cri;
use serde_json::json;

mod common;

const SEQUENTIAL: usize = 100;
const REPLICAS: usize = 30;
const PEER_RUNS: usize = 20;
const IMAGE: &str = "localhost/busybox:1.35";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "seq"}},
        "spec": {"terminationGracePeriodSeconds": 0,
            "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]},
    }))?)
}

/// The sum of the RSS of every process whose command line mentions `needle`.
fn rss_of_matching(needle: &str) -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
        })
        .map(common::rss_mb)
        .sum()
}

/// The peer: sandbox + create + start straight through CRI, `PEER_RUNS` times.
async fn cri_peer(
    socket: &std::path::Path,
    log_dir: &std::path::Path,
) -> anyhow::Result<Vec<Duration>> {
    let cri = pikube_runtime::Cri::connect(&socket.to_string_lossy()).await?;
    let mut times = Vec::new();
    for i in 0..PEER_RUNS {
        let meta = cri::PodSandboxMetadata {
            name: format!("peer-{i}"),
            uid: format!("peer-uid-{i}"),
            namespace: "bench".into(),
            attempt: 0,
        };
        let sandbox = cri::PodSandboxConfig {
            metadata: Some(meta),
            hostname: format!("peer-{i}"),
            log_directory: log_dir
                .join(format!("peer-{i}"))
                .to_string_lossy()
                .into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("/pikube-bench/peer{i}"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let start = Instant::now();
        let id = cri
            .runtime()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sandbox.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let c = cri
            .runtime()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "c".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: vec!["sleep".into(), "3600".into()],
                    log_path: "c/0.log".into(),
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox),
            })
            .await?
            .into_inner()
            .container_id;
        cri.runtime()
            .start_container(cri::StartContainerRequest { container_id: c })
            .await?;
        times.push(start.elapsed());
        cri.runtime()
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
        cri.runtime()
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await?;
    }
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let images = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-images");
    let status = std::process::Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/images/build.sh"))
        .arg(&images)
        .status()?;
    anyhow::ensure!(status.success(), "images/build.sh failed");

    // Control plane alone, for the agent's share of RSS.
    let plain = common::start(&["--disable-agent".to_string()], |_| {}).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let control_plane_rss = common::rss_mb(plain.child.id());
    drop(plain);

    let run_dir = tempfile::tempdir()?;
    let bridge = "pkbench";
    let cgroup_root = "/pikube-bench";
    let flags: Vec<String> = [
        "--node-name",
        "bench",
        "--node-ip",
        "127.0.0.1",
        "--cluster-cidr",
        "10.42.200.0/24",
        "--cni-bridge",
        bridge,
        "--cgroup-root",
        cgroup_root,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--run-dir".to_string(),
        run_dir.path().to_string_lossy().into_owned(),
    ])
    .collect();
    let server = common::start(&flags, |data| {
        let dir = data.join("agent/images");
        let _ = std::fs::create_dir_all(&dir);
        for tar in ["pause.tar", "busybox.tar"] {
            let _ = std::fs::copy(images.join(tar), dir.join(tar));
        }
    })
    .await?;
    let data_dir = server.dir.path().join("data");
    let client = server.client.clone();
    let server = Cleanup {
        data_dir: data_dir.clone(),
        run_dir: run_dir.path().to_path_buf(),
        cgroup_root: cgroup_root.into(),
        bridge: bridge.into(),
        server,
    };
    let nodes = Api::<Node>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = nodes.get_opt("bench").await?.is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if ok {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "node did not become Ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_rss_0 = common::rss_mb(server.server.child.id());
    let run_dir_text = run_dir.path().to_string_lossy().into_owned();
    let containerd_config = data_dir
        .join("agent/etc/containerd")
        .to_string_lossy()
        .into_owned();
    let containerd_rss_0 = rss_of_matching(&containerd_config);

    eprintln!("bench-pods: CRI peer ({PEER_RUNS} sandbox+create+start)");
    let socket = run_dir.path().join("containerd/containerd.sock");
    let mut peer = cri_peer(&socket, &data_dir.join("agent/logs")).await?;
    peer.sort();

    eprintln!("bench-pods: {SEQUENTIAL} pods one by one");
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch_client = client.clone();
    tokio::spawn(async move {
        let mut seen = std::collections::HashSet::new();
        let mut stream = watcher(
            Api::<Pod>::namespaced(watch_client, "default"),
            watcher::Config::default(),
        )
        .applied_objects()
        .boxed();
        while let Some(Ok(p)) = stream.next().await {
            if ready(&p) && seen.insert(p.name_any()) {
                let _ = tx.send((p.name_any(), Instant::now()));
            }
        }
    });
    let mut latencies = Vec::new();
    let mut rss_50 = (0.0, 0.0);
    let mut early: HashMap<String, Instant> = HashMap::new();
    for i in 0..SEQUENTIAL {
        let name = format!("seq-{i:03}");
        let start = Instant::now();
        pods.create(&PostParams::default(), &pod(&name)?).await?;
        let done = loop {
            if let Some(t) = early.remove(&name) {
                break t;
            }
            let (n, t) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .map_err(|_| anyhow::anyhow!("pod {name} not Ready after 60 s"))?
                .ok_or_else(|| anyhow::anyhow!("watch ended"))?;
            if n == name {
                break t;
            }
            early.insert(n, t);
        };
        latencies.push(done - start);
        if i + 1 == 50 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            rss_50 = (
                common::rss_mb(server.server.child.id()),
                rss_of_matching(&run_dir_text) + rss_of_matching(&containerd_config),
            );
        }
    }
    latencies.sort();
    pods.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default().labels("bench=seq"),
    )
    .await?;

    eprintln!("bench-pods: Deployment of {REPLICAS}");
    let deployments = Api::<Deployment>::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "burst"},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}},
                "spec": {"terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "3600"]}]}}},
    }))?;
    let start = Instant::now();
    deployments.create(&PostParams::default(), &d).await?;
    let deadline = start + Duration::from_secs(180);
    let burst = loop {
        let list = pods
            .list(&ListParams::default().labels("app=burst"))
            .await?;
        if list.items.iter().filter(|p| ready(p)).count() >= REPLICAS {
            break start.elapsed();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the Deployment was not Ready after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    deployments
        .delete("burst", &DeleteParams::default())
        .await?;

    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let peer50 = percentile(&peer, 0.5);
    println!("bench-pods: one node, pikube-managed containerd, image cached");
    println!(
        "  CRI peer sandbox+create+start: p50 {:.0} ms, p99 {:.0} ms ({PEER_RUNS} runs)",
        ms(peer50),
        ms(percentile(&peer, 0.99))
    );
    println!(
        "  pod startup (create -> Ready on a watch), {SEQUENTIAL} pods one by one: p50 {:.0} ms, p99 {:.0} ms (targets 500 / 1000 ms); p50 = {:.2}x the CRI peer",
        ms(p50),
        ms(p99),
        p50.as_secs_f64() / peer50.as_secs_f64().max(1e-9)
    );
    println!(
        "  {REPLICAS}-replica Deployment, create -> all Ready: {:.2} s",
        burst.as_secs_f64()
    );
    println!(
        "  RSS: control plane alone {control_plane_rss:.1} MB; with agent, 0 pods {agent_rss_0:.1} MB (agent share {:.1} MB, target <= 30); 50 pods {:.1} MB ({:.2} MB per pod, target <= 0.5)",
        agent_rss_0 - control_plane_rss,
        rss_50.0,
        (rss_50.0 - agent_rss_0) / 50.0
    );
    println!(
        "  containerd: {containerd_rss_0:.1} MB idle; containerd + shims at 50 pods {:.1} MB",
        rss_50.1
    );
    drop(server);
    Ok(())
}

/// The benchmark's server: stopped, then everything its node left is removed
/// (`pikube killall`), when dropped.
struct Cleanup {
    server: common::Server,
    data_dir: std::path::PathBuf,
    run_dir: std::path::PathBuf,
    cgroup_root: String,
    bridge: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
        pikube::agent::killall::run(&pikube::agent::killall::Targets {
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            cgroup_root: self.cgroup_root.clone(),
            bridge: self.bridge.clone(),
            proxy: false,
        });
    }
}
