//! The agent's Node: registration with labels and taints, status (capacity and
//! allocatable from the machine, addresses, nodeInfo, conditions with real reasons), and
//! the Lease in `kube-node-lease`. As kubelet does, the Lease is the heartbeat (renewed
//! every 10 s) and the status is posted when it changed, or else every 5 minutes
//! (kubelet's `nodeStatusReportFrequency`): every Node write wakes every watcher of
//! Nodes in the cluster, a Lease renewal only the node lifecycle controller.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use pikube_runtime::cri::Cri;
use serde_json::{json, Value};

use super::runtime_state::{Report as RuntimeReport, RuntimeState};
use super::Error;

/// How often the Lease is renewed and the status looked at (posted if it changed).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often an unchanged status is posted anyway, with new heartbeat times (kubelet's
/// `nodeStatusReportFrequency`).
pub const STATUS_REPORT_EVERY: Duration = Duration::from_secs(300);
/// The Lease's duration (kubelet's default).
const LEASE_SECONDS: i32 = 40;
/// Pods a node takes (kubelet's default `--max-pods`).
const MAX_PODS: u32 = 110;

/// What the machine offers, read from /proc and the data dir's file system.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory: u64,
    /// Size of the file system holding the data dir, in bytes.
    pub disk: u64,
    /// Free space there, in bytes.
    pub disk_free: u64,
    /// Available memory in bytes.
    pub memory_available: u64,
    /// Kernel release.
    pub kernel: String,
    /// Distribution name (`PRETTY_NAME`).
    pub os_image: String,
    /// /etc/machine-id.
    pub machine_id: String,
    /// Current boot id.
    pub boot_id: String,
}

fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

impl Machine {
    /// Reads the machine's facts; `data_dir` is where pod data lives.
    pub fn read(data_dir: &std::path::Path) -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let mem = read("/proc/meminfo");
        let (disk, disk_free) = statvfs(data_dir).unwrap_or((0, 0));
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "Linux".into());
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            memory: meminfo(&mem, "MemTotal").unwrap_or(0),
            memory_available: meminfo(&mem, "MemAvailable").unwrap_or(0),
            disk,
            disk_free,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os_image,
            machine_id: read("/etc/machine-id").trim().to_string(),
            boot_id: read("/proc/sys/kernel/random/boot_id").trim().to_string(),
        }
    }
}

fn statvfs(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| {
        let frsize = st.f_frsize as u64;
        (st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize)
    })
}

/// `amd64`/`arm64`/`arm` as Kubernetes names architectures.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// The label namespace of node roles: `kubectl get nodes` shows ROLES from it.
pub const ROLE_PREFIX: &str = "node-role.kubernetes.io/";

/// The role labels of a server's own Node, as k3s sets them: `control-plane` and
/// `master` on every server, and `etcd` on a server whose store is replicated
/// (`--cluster-init`, or joined with `--server`) — k3s's embedded etcd; a one-node store
/// is pikube's counterpart of k3s's default SQLite, which gets no `etcd` role.
pub fn server_roles(replicated_store: bool) -> Vec<(String, String)> {
    let mut roles = vec!["control-plane", "master"];
    if replicated_store {
        roles.push("etcd");
    }
    roles
        .into_iter()
        .map(|r| (format!("{ROLE_PREFIX}{r}"), "true".to_string()))
        .collect()
}

/// Refuses a `--node-label` in the node-role namespace: a node does not give itself a
/// role (kubelet refuses such labels and NodeRestriction such writes); servers label
/// their own Node ([`server_roles`]) and admins use `kubectl label`.
pub fn check_own_label(key: &str) -> Result<(), String> {
    let role = key.starts_with(ROLE_PREFIX) || key == ROLE_PREFIX.trim_end_matches('/');
    if role {
        return Err(format!(
            "{key:?}: a node may not set node-role labels on itself; servers get theirs, others are set with kubectl label"
        ));
    }
    Ok(())
}

/// Identity and settings of the node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// InternalIP.
    pub ip: String,
    /// Hostname address.
    pub hostname: String,
    /// Extra labels (`key=value`).
    pub labels: Vec<(String, String)>,
    /// Taints at registration (`key=value:Effect`).
    pub taints: Vec<Value>,
    /// Agent API port.
    pub agent_port: u16,
}

/// Parses `key=value:Effect` (or `key:Effect`) as a taint object.
pub fn parse_taint(s: &str) -> Result<Value, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {s:?} is not of the form key=value:Effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint {s:?} has effect {effect:?}; use NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(format!("taint {s:?} has no key"));
    }
    let mut t = json!({"key": key, "effect": effect});
    if !value.is_empty() {
        t["value"] = json!(value);
    }
    Ok(t)
}

/// Creates the Node if it is missing; an existing Node gets the configured labels.
pub async fn register(client: &Client, spec: &NodeSpec) -> Result<(), Error> {
    let api = Api::<Node>::all(client.clone());
    let mut labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname".to_string(), spec.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch().to_string()),
    ]
    .into_iter()
    .collect();
    labels.extend(spec.labels.iter().cloned());
    match api.get_opt(&spec.name).await? {
        None => {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": spec.name, "labels": labels},
                "spec": {"taints": spec.taints},
            }))?;
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => tracing::info!(node = %spec.name, "registered node"),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Some(_) => {
            api.patch(
                &spec.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await?;
        }
    }
    Ok(())
}

fn condition(kind: &str, is_true: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if is_true { "True" } else { "False" }, "reason": reason, "message": message})
}

/// The node's status document (conditions keep their transition times from `old`).
pub fn status(
    spec: &NodeSpec,
    m: &Machine,
    runtime_version: &str,
    problem: Option<&str>,
    old: Option<&Node>,
) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let memory_pressure = m.memory_available > 0 && m.memory_available < 100 << 20;
    let disk_pressure = m.disk > 0 && m.disk_free * 10 < m.disk;
    let pids_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let pids_used = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                })
                .count() as u64
        })
        .unwrap_or(0);
    let pid_pressure = pids_max > 0 && pids_used * 10 > pids_max * 9;
    let mut conditions = vec![
        if memory_pressure {
            condition(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if disk_pressure {
            condition(
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        if pid_pressure {
            condition(
                "PIDPressure",
                true,
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            )
        } else {
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            )
        },
        match problem {
            None => condition(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            ),
            Some(p) => condition("Ready", false, "KubeletNotReady", p),
        },
    ];
    let old_conditions = old
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in &mut conditions {
        let kind = c["type"].as_str().unwrap_or_default().to_string();
        let status = c["status"].as_str().unwrap_or_default().to_string();
        let since = old_conditions
            .iter()
            .find(|o| o.type_ == kind && o.status == status)
            .and_then(|o| o.last_transition_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .unwrap_or_else(|| json!(now));
        c["lastHeartbeatTime"] = json!(now);
        c["lastTransitionTime"] = since;
    }
    let capacity = json!({
        "cpu": m.cpus.to_string(),
        "memory": format!("{}Ki", m.memory / 1024),
        "pods": MAX_PODS.to_string(),
        "ephemeral-storage": format!("{}Ki", m.disk / 1024),
    });
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": spec.ip},
            {"type": "Hostname", "address": spec.hostname},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": spec.agent_port}},
        "nodeInfo": {
            "machineID": m.machine_id,
            "systemUUID": m.machine_id,
            "bootID": m.boot_id,
            "kernelVersion": m.kernel,
            "osImage": m.os_image,
            "containerRuntimeVersion": runtime_version,
            "kubeletVersion": format!("v1.33.0+pikube-{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": format!("v1.33.0+pikube-{}", env!("CARGO_PKG_VERSION")),
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    }})
}

/// Renews the node's Lease (creating it, owned by the Node, when missing).
pub async fn renew_lease(client: &Client, node: &str) -> Result<(), Error> {
    let api = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let spec =
        json!({"holderIdentity": node, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now});
    match api
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let owner = Api::<Node>::all(client.clone()).get(node).await?;
            let lease: Lease = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": node, "namespace": "kube-node-lease",
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node,
                        "uid": owner.metadata.uid}]},
                "spec": spec,
            }))?;
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The parts of a node status that count as a change: everything but the conditions'
/// heartbeat times, and only the fields the agent posts (others' fields stay as they are).
fn comparable(status: &NodeStatus, posted: &serde_json::Map<String, Value>) -> Value {
    let mut v = serde_json::to_value(status).unwrap_or(Value::Null);
    if let Some(conditions) = v.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions.iter_mut().filter_map(Value::as_object_mut) {
            c.remove("lastHeartbeatTime");
        }
    }
    let fields = posted
        .keys()
        .map(|k| (k.clone(), v.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    Value::Object(fields)
}

/// Whether `new` (a document from [`status`]) says anything the Node does not say yet,
/// heartbeat times aside.
pub fn status_changed(old: Option<&Node>, new: &Value) -> bool {
    let (Some(old), Some(posted)) = (
        old.and_then(|n| n.status.as_ref()),
        new["status"].as_object(),
    ) else {
        return true;
    };
    match serde_json::from_value::<NodeStatus>(new["status"].clone()) {
        Ok(typed) => comparable(old, posted) != comparable(&typed, posted),
        Err(_) => true,
    }
}

/// When the node status is posted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Now, changed or not (the first report of an agent, or one that is due).
    Always,
    /// Only when it changed.
    IfChanged,
}

/// Builds the node status and posts it as `report` says; true when it was posted.
pub async fn post_status(
    client: &Client,
    cri: &Cri,
    runtime: &RuntimeState,
    spec: &NodeSpec,
    data_dir: &std::path::Path,
    report: Report,
) -> Result<bool, Error> {
    let api = Api::<Node>::all(client.clone());
    let old = api.get_opt(&spec.name).await?;
    if old.is_none() {
        register(client, spec).await?;
    }
    let RuntimeReport { version, problem } = runtime.check(cri).await;
    let (spec_now, data_dir, before) = (spec.clone(), data_dir.to_path_buf(), old.clone());
    // /proc and statvfs reads: off the runtime threads.
    let body = tokio::task::spawn_blocking(move || {
        let machine = Machine::read(&data_dir);
        status(
            &spec_now,
            &machine,
            &version,
            problem.as_deref(),
            before.as_ref(),
        )
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    if report == Report::IfChanged && !status_changed(old.as_ref(), &body) {
        return Ok(false);
    }
    api.patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(body))
        .await?;
    Ok(true)
}

/// Heartbeats until `shutdown`: the Lease every [`HEARTBEAT`]; the status when it
/// changed, at the first beat, and every [`STATUS_REPORT_EVERY`].
pub async fn heartbeat(
    client: Client,
    cri: Cri,
    runtime: RuntimeState,
    spec: NodeSpec,
    data_dir: std::path::PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_report: Option<tokio::time::Instant> = None;
    loop {
        let report = match last_report {
            Some(t) if t.elapsed() < STATUS_REPORT_EVERY => Report::IfChanged,
            _ => Report::Always,
        };
        match post_status(&client, &cri, &runtime, &spec, &data_dir, report).await {
            Ok(true) => last_report = Some(tokio::time::Instant::now()),
            Ok(false) => {}
            Err(e) => tracing::warn!(node = %spec.name, error = %e, "cannot post node status"),
        }
        if let Err(e) = renew_lease(&client, &spec.name).await {
            tracing::warn!(node = %spec.name, error = %e, "cannot renew node lease");
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn taints_parse_like_kubectl() {
        assert_eq!(
            parse_taint("dedicated=db:NoSchedule").unwrap(),
            json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"})
        );
        assert_eq!(
            parse_taint("gpu:NoExecute").unwrap(),
            json!({"key": "gpu", "effect": "NoExecute"})
        );
        assert!(parse_taint("gpu").is_err());
        assert!(parse_taint("a=b:Sometimes").is_err());
        assert!(parse_taint("=b:NoSchedule").is_err());
    }

    #[test]
    fn servers_get_k3s_roles_and_nodes_cannot_claim_one() {
        let keys = |r: Vec<(String, String)>| -> Vec<String> {
            assert!(r.iter().all(|(_, v)| v == "true"));
            r.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(
            keys(server_roles(false)),
            [
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master"
            ]
        );
        assert_eq!(
            keys(server_roles(true)),
            [
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master",
                "node-role.kubernetes.io/etcd"
            ]
        );
        assert!(check_own_label("node-role.kubernetes.io/worker").is_err());
        assert!(check_own_label("node-role.kubernetes.io").is_err());
        assert!(check_own_label("topology.kubernetes.io/zone").is_ok());
        assert!(check_own_label("node-role.example.com/x").is_ok());
    }

    #[test]
    fn meminfo_reads_kib() {
        let text = "MemTotal:        8000000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), Some(8_192_000_000));
        assert_eq!(meminfo(text, "MemAvailable"), Some(4_096_000_000));
        assert_eq!(meminfo(text, "SwapTotal"), None);
    }

    fn test_spec() -> NodeSpec {
        NodeSpec {
            name: "n1".into(),
            ip: "192.0.2.1".into(),
            hostname: "pi".into(),
            labels: vec![],
            taints: vec![],
            agent_port: 10250,
        }
    }

    fn test_machine() -> Machine {
        Machine {
            cpus: 4,
            memory: 8 << 30,
            memory_available: 4 << 30,
            disk: 100 << 30,
            disk_free: 50 << 30,
            ..Default::default()
        }
    }

    #[test]
    fn only_a_changed_status_counts_as_a_change() {
        let (spec, m) = (test_spec(), test_machine());
        let as_node = |body: &Value| -> Node {
            let mut n: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap();
            n.status = Some(serde_json::from_value(body["status"].clone()).unwrap());
            n
        };
        assert!(status_changed(
            None,
            &status(&spec, &m, "c://1", None, None)
        ));
        let mut posted = as_node(&status(&spec, &m, "c://1", None, None));
        // Someone else's field and an old heartbeat time: still no change.
        let st = posted.status.as_mut().unwrap();
        st.volumes_in_use = Some(vec!["x".into()]);
        for c in st.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = Some(Time("2020-01-01T00:00:00Z".parse().unwrap()));
        }
        let again = status(&spec, &m, "c://1", None, Some(&posted));
        assert!(!status_changed(Some(&posted), &again), "{again}");
        // A readiness change, a new runtime version, less memory are changes.
        let down = status(&spec, &m, "c://1", Some("runtime down"), Some(&posted));
        assert!(status_changed(Some(&posted), &down));
        assert!(status_changed(
            Some(&posted),
            &status(&spec, &m, "c://2", None, Some(&posted))
        ));
        let smaller = Machine {
            memory: 4 << 30,
            ..m.clone()
        };
        assert!(status_changed(
            Some(&posted),
            &status(&spec, &smaller, "c://1", None, Some(&posted))
        ));
        // The node lifecycle controller marked the node Unknown: reporting again is a change.
        let mut unknown = posted.clone();
        for c in unknown
            .status
            .as_mut()
            .unwrap()
            .conditions
            .iter_mut()
            .flatten()
        {
            if c.type_ == "Ready" {
                c.status = "Unknown".into();
            }
        }
        assert!(status_changed(
            Some(&unknown),
            &status(&spec, &m, "c://1", None, Some(&unknown))
        ));
    }

    #[test]
    fn status_reports_readiness_and_keeps_transition_times() {
        let (spec, m) = (test_spec(), test_machine());
        let s = status(&spec, &m, "containerd://1.6.20", None, None);
        let ready = s["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(s["status"]["capacity"]["cpu"], "4");
        assert_eq!(s["status"]["capacity"]["memory"], "8388608Ki");
        let down = status(&spec, &m, "", Some("container runtime is down: x"), None);
        let ready = down["status"]["conditions"][3].clone();
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("False"), Some("KubeletNotReady"))
        );
    }
}
