//! A node simulator for tests of the control plane (in the spirit of kwok): registers
//! Nodes with capacity and a Ready condition, renews their Leases, and moves pods bound
//! to them to Running and Ready after a delay, without running any container.
//!
//! Pods annotated `sim.pikube.io/exit-code: "<n>"` have their containers exit with that
//! code once they have run for `sim.pikube.io/run-ms` (default 0); the pod then follows
//! kubelet's rules for its `restartPolicy`: Never → Succeeded (0) or Failed; OnFailure →
//! Succeeded (0) or a restart; Always → a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use crate::harness::Server;

/// One simulated node.
#[derive(Clone, Debug)]
pub struct SimNode {
    /// Node name.
    pub name: String,
    /// CPU cores it offers.
    pub cpu: u32,
    /// Extra labels.
    pub labels: Vec<(String, String)>,
    /// Taints as (key, value, effect).
    pub taints: Vec<(String, String, String)>,
}

impl SimNode {
    /// A plain node with 4 cores.
    pub fn new(name: &str) -> SimNode {
        SimNode {
            name: name.to_string(),
            cpu: 4,
            labels: Vec::new(),
            taints: Vec::new(),
        }
    }
}

/// Running simulator; stops when dropped.
pub struct Sim {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

async fn client(kubeconfig: std::path::PathBuf) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn node_object(n: &SimNode) -> Node {
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), json!(n.name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    for (k, v) in &n.labels {
        labels.insert(k.clone(), json!(v));
    }
    let taints: Vec<_> = n
        .taints
        .iter()
        .map(|(k, v, e)| json!({"key": k, "value": v, "effect": e}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        // As a node agent does, it publishes a local-path storage directory, so claims of
        // the default class can be provisioned for its pods (nothing is written there).
        "metadata": {"name": n.name, "labels": labels,
            "annotations": {"pikube.io/local-path-storage": format!("/nonexistent/pikube-sim/{}", n.name)}},
        "spec": {"taints": taints},
    }))
    .expect("node")
}

fn node_status(n: &SimNode) -> serde_json::Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let res = json!({"cpu": n.cpu.to_string(), "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"});
    json!({"status": {
        "capacity": res,
        "allocatable": res,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "simulated node is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "nodeInfo": {"kubeletVersion": "v1.33.0-sim", "operatingSystem": "linux", "architecture": "arm64",
            "containerRuntimeVersion": "sim://1", "kernelVersion": "", "osImage": "sim",
            "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }})
}

/// Annotation: the exit code the pod's containers end with.
pub const EXIT_CODE: &str = "sim.pikube.io/exit-code";
/// Annotation: how long the containers run before they exit, in milliseconds.
pub const RUN_MS: &str = "sim.pikube.io/run-ms";

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(0, |c| c.restart_count)
}

/// The status of a pod whose containers all exited with `code`, by its restart policy.
fn pod_exit_status(pod: &Pod, code: i32) -> serde_json::Value {
    let now = now_rfc3339();
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let restarts = restart_count(pod);
    let terminated = json!({"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
        "startedAt": now, "finishedAt": now});
    let restart = match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    };
    if restart {
        let statuses: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                    "restartCount": restarts + 1, "started": true,
                    "state": {"running": {"startedAt": now}}, "lastState": {"terminated": terminated}})
            })
            .collect();
        return json!({"status": {"containerStatuses": statuses}});
    }
    let statuses: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": false,
                "restartCount": restarts, "started": false, "state": {"terminated": terminated}})
        })
        .collect();
    let (phase, reason) = if code == 0 {
        ("Succeeded", "PodCompleted")
    } else {
        ("Failed", "PodFailed")
    };
    json!({"status": {
        "phase": phase,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": reason, "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": reason, "lastTransitionTime": now},
        ],
        "containerStatuses": statuses,
    }})
}

fn pod_ready_status(ip: &str, pod: &Pod) -> serde_json::Value {
    let now = now_rfc3339();
    let statuses: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "restartCount": 0,
                "started": true, "state": {"running": {"startedAt": now}}})
        })
        .collect();
    json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
            {"type": "Ready", "status": "True", "lastTransitionTime": now},
        ],
        "containerStatuses": statuses,
    }})
}

async fn sim_loop(
    kubeconfig: std::path::PathBuf,
    nodes: Vec<SimNode>,
    ready_after: Duration,
    stop: Arc<AtomicBool>,
    registered: std::sync::mpsc::Sender<()>,
) {
    let client = client(kubeconfig).await;
    let api_nodes = Api::<Node>::all(client.clone());
    let api_leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let api_pods = Api::<Pod>::all(client.clone());
    let mut seen: std::collections::HashMap<String, Instant> = Default::default();
    // When each pod's containers last started.
    let mut started: std::collections::HashMap<String, Instant> = Default::default();
    let mut next_ip: u32 = 2;
    let mut last_heartbeat = Instant::now() - Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) {
        if last_heartbeat.elapsed() >= Duration::from_secs(5) {
            for n in &nodes {
                if api_nodes.get_opt(&n.name).await.ok().flatten().is_none() {
                    let _ = api_nodes
                        .create(&PostParams::default(), &node_object(n))
                        .await;
                }
                let _ = api_nodes
                    .patch_status(
                        &n.name,
                        &PatchParams::default(),
                        &Patch::Merge(node_status(n)),
                    )
                    .await;
                let renew = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": n.name, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": n.name, "leaseDurationSeconds": 40, "renewTime": renew}});
                if api_leases.get_opt(&n.name).await.ok().flatten().is_none() {
                    if let Ok(l) = serde_json::from_value::<Lease>(lease.clone()) {
                        let _ = api_leases.create(&PostParams::default(), &l).await;
                    }
                } else {
                    let _ = api_leases
                        .patch(&n.name, &PatchParams::default(), &Patch::Merge(lease))
                        .await;
                }
            }
            last_heartbeat = Instant::now();
            let _ = registered.send(());
        }
        if let Ok(list) = api_pods.list(&ListParams::default()).await {
            for pod in list.items {
                let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                if !nodes.iter().any(|n| n.name == node) {
                    continue;
                }
                let ns = pod.namespace().unwrap_or_default();
                let api = Api::<Pod>::namespaced(client.clone(), &ns);
                if pod.metadata.deletion_timestamp.is_some() {
                    let _ = api
                        .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                        .await;
                    continue;
                }
                let uid = pod.uid().unwrap_or_default();
                match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
                    Some("Succeeded") | Some("Failed") => continue,
                    Some("Running") => {
                        let annotations = pod.annotations();
                        let Some(code) = annotations.get(EXIT_CODE).and_then(|c| c.parse().ok())
                        else {
                            continue;
                        };
                        let run = annotations
                            .get(RUN_MS)
                            .and_then(|m| m.parse().ok())
                            .map(Duration::from_millis)
                            .unwrap_or_default();
                        let since = *started.entry(uid.clone()).or_insert_with(Instant::now);
                        if since.elapsed() < run {
                            continue;
                        }
                        let r = api
                            .patch_status(
                                &pod.name_any(),
                                &PatchParams::default(),
                                &Patch::Merge(pod_exit_status(&pod, code)),
                            )
                            .await;
                        if r.is_ok() {
                            started.insert(uid, Instant::now());
                        }
                        continue;
                    }
                    _ => {}
                }
                let first = *seen.entry(uid).or_insert_with(Instant::now);
                if first.elapsed() < ready_after {
                    continue;
                }
                let ip = format!("10.42.{}.{}", next_ip / 250, next_ip % 250 + 2);
                next_ip += 1;
                let r = api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(pod_ready_status(&ip, &pod)),
                    )
                    .await;
                if r.is_ok() {
                    started.insert(pod.uid().unwrap_or_default(), Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Sim {
    /// Starts simulating `nodes` against `server`; pods become Ready `ready_after` after
    /// the simulator first sees them bound. Returns once every node has registered and
    /// posted its Ready status, so a test's pods find all of them.
    pub fn start(server: &Server, nodes: Vec<SimNode>, ready_after: Duration) -> Sim {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = server.kubeconfig();
        let flag = stop.clone();
        let (registered, first_round) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(sim_loop(kubeconfig, nodes, ready_after, flag, registered));
        });
        first_round
            .recv_timeout(Duration::from_secs(60))
            .expect("simulated nodes registered");
        Sim {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
