//! The node agent (pikube's kubelet): registers the node, keeps its Lease and status,
//! and runs the pods bound to it in containerd through CRI. It is an ordinary API
//! client, so the same code runs inside `pikube server` (in-process client) and in
//! `pikube agent` (HTTPS client).

pub mod api;
pub mod backoff;
pub mod container;
pub mod env;
pub mod images;
pub mod join;
pub mod killall;
pub mod log_rotation;
pub mod logs;
pub mod node;
mod observe;
pub mod pleg;
pub mod pods;
pub mod portforward;
pub mod probes;
pub mod runtime_state;
pub mod sandbox;
pub mod status;
pub mod storage;
pub mod stream;
mod teardown;
pub mod tokens;
pub mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use pikube_runtime::containerd::{Containerd, ContainerdConfig};
use pikube_runtime::Cri;

/// Why an agent step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// A CRI call failed.
    #[error("runtime: {}", .0.message())]
    Runtime(#[from] tonic::Status),
    /// The runtime library failed (containerd, images, CNI).
    #[error(transparent)]
    RuntimeLib(#[from] pikube_runtime::Error),
    /// A file could not be written or read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An object could not be (de)serialised.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Bad settings.
    #[error("{0}")]
    Config(String),
}

/// Everything the agent needs to start.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name.
    pub node_name: String,
    /// The node's IP (InternalIP, status.hostIP).
    pub node_ip: String,
    /// pikube's data dir; the agent uses `<data-dir>/agent`.
    pub data_dir: PathBuf,
    /// Sockets and runtime state (`/run/pikube`).
    pub run_dir: PathBuf,
    /// An existing CRI endpoint; None = start a pikube-managed containerd.
    pub container_runtime_endpoint: Option<String>,
    /// Cluster DNS address given to pods.
    pub cluster_dns: std::net::IpAddr,
    /// Cluster domain.
    pub cluster_domain: String,
    /// The node's resolv.conf (for `dnsPolicy: Default`).
    pub resolv_conf: PathBuf,
    /// Extra node labels.
    pub node_labels: Vec<(String, String)>,
    /// The node-role labels a server gives its own Node ([`node::server_roles`]), set on
    /// every registration; empty for `pikube agent`.
    pub role_labels: Vec<(String, String)>,
    /// Node taints at registration (`key=value:Effect`).
    pub node_taints: Vec<String>,
    /// Parent cgroup of pod cgroups.
    pub cgroup_root: String,
    /// Name of the pods' bridge.
    pub cni_bridge: String,
    /// Agent API port (reported in the Node's daemonEndpoints).
    pub agent_port: u16,
    /// Certificates of the agent API; None = no agent API.
    pub tls: Option<api::AgentTls>,
    /// Size and count limits of container log files.
    pub log_policy: log_rotation::Policy,
}

impl AgentConfig {
    /// `<data-dir>/agent`.
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }

    /// Air-gap image tarballs imported at start (`<data-dir>/agent/images`, as k3s).
    pub fn images_dir(&self) -> PathBuf {
        self.agent_dir().join("images")
    }

    /// What was imported from the air-gap directory, so a restart skips unchanged
    /// tarballs (`<data-dir>/agent/image-import.json`).
    pub fn image_import_state(&self) -> PathBuf {
        self.agent_dir().join(pikube_runtime::images::STATE_FILE)
    }

    /// The pods' container logs.
    pub fn log_root(&self) -> PathBuf {
        self.agent_dir().join("logs")
    }

    /// The pods' volumes and managed files.
    pub fn pods_dir(&self) -> PathBuf {
        self.agent_dir().join("pods")
    }

    /// Local-path volumes of this node (`<data-dir>/storage`, as k3s's
    /// `/var/lib/rancher/k3s/storage`).
    pub fn storage_dir(&self) -> PathBuf {
        self.data_dir.join("storage")
    }

    /// The managed containerd's layout.
    pub fn containerd(&self) -> ContainerdConfig {
        ContainerdConfig::new(&self.data_dir, &self.run_dir)
    }
}

/// Imports the air-gap image tarballs, skipping those unchanged since their last import.
/// Problems are logged, never fatal: the node may still run images it already has.
async fn import_air_gap_images(cri: &Cri, cfg: &AgentConfig) {
    let dir = cfg.images_dir();
    let state = cfg.image_import_state();
    match pikube_runtime::images::import_dir(cri.socket(), &dir, Some(&state)).await {
        Ok(report) => {
            if !report.imported.is_empty() || !report.unchanged.is_empty() {
                tracing::info!(
                    imported = ?report.imported,
                    unchanged = report.unchanged.len(),
                    failed = report.failed.len(),
                    "air-gap images ready"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, dir = %dir.display(), "cannot import images"),
    }
}

/// Waits until the node has a pod CIDR (from the node IPAM controller).
async fn wait_pod_cidr(client: &Client, node: &str) -> String {
    let api = Api::<Node>::all(client.clone());
    let cidr = |n: Option<&Node>| {
        n.and_then(|n| n.spec.as_ref()?.pod_cidr.clone())
            .filter(|c| !c.is_empty())
    };
    loop {
        // A watch: the CIDR is seen as soon as the node IPAM controller sets it.
        let has_cidr = move |n: Option<&Node>| cidr(n).is_some();
        match kube::runtime::wait::await_condition(api.clone(), node, has_cidr).await {
            Ok(n) => {
                if let Some(c) = cidr(n.as_ref()) {
                    return c;
                }
            }
            Err(e) => tracing::debug!(error = %e, "watch for the pod CIDR"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node's container runtime: a pikube-managed containerd, or the CRI endpoint the
/// agent was given.
struct Runtime {
    managed: Option<Containerd>,
    cri: Cri,
}

/// The container runtime starting in the background while the caller does other start
/// work (a server opens its store and API server meanwhile); handed to [`run`].
/// Dropped unused, it stops the runtime.
pub struct RuntimeStart(tokio::task::JoinHandle<Result<Runtime, Error>>);

impl RuntimeStart {
    /// Starts [`start_runtime`] in a task.
    pub fn spawn(cfg: &AgentConfig) -> RuntimeStart {
        let cfg = cfg.clone();
        RuntimeStart(tokio::spawn(async move { start_runtime(&cfg).await }))
    }

    /// The started runtime.
    async fn wait(mut self) -> Result<Runtime, Error> {
        (&mut self.0)
            .await
            .map_err(|e| Error::Config(format!("container runtime start: {e}")))?
    }
}

impl Drop for RuntimeStart {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the pikube-managed containerd (or connects to `--container-runtime-endpoint`)
/// and waits until CRI reports the runtime ready. Runs in a task of its own (see
/// [`RuntimeStart`]).
async fn start_runtime(cfg: &AgentConfig) -> Result<Runtime, Error> {
    match &cfg.container_runtime_endpoint {
        Some(endpoint) => {
            let cri = Cri::connect(endpoint).await?;
            cri.wait_ready(Duration::from_secs(30)).await?;
            Ok(Runtime { managed: None, cri })
        }
        None => {
            let c = Containerd::start(cfg.containerd()).await?;
            let cri = c.cri().clone();
            Ok(Runtime {
                managed: Some(c),
                cri,
            })
        }
    }
}

/// Runs the agent until `shutdown` fires. A pikube-managed containerd is stopped at the
/// end; running containers keep running (their shims stay) and are adopted at the next
/// start.
pub async fn run(
    client: Client,
    cfg: AgentConfig,
    runtime: RuntimeStart,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), Error> {
    for dir in [
        cfg.agent_dir(),
        cfg.images_dir(),
        cfg.log_root(),
        cfg.pods_dir(),
    ] {
        std::fs::create_dir_all(&dir)?;
    }
    let ctr_cfg = cfg.containerd();
    let Runtime { managed, cri } = runtime.wait().await?;
    import_air_gap_images(&cri, &cfg).await;

    let agent_api = match &cfg.tls {
        Some(tls) => {
            let addr = std::net::SocketAddr::new(
                cfg.node_ip.parse().map_err(|_| {
                    Error::Config(format!("node IP {:?} is not an address", cfg.node_ip))
                })?,
                cfg.agent_port,
            );
            let listener = api::bind(addr).await?;
            tracing::info!(%addr, "agent API listening");
            let handlers = api::AgentApi::new(client.clone(), cri.clone());
            let (tls, stop) = (tls.clone(), shutdown.clone());
            Some(tokio::spawn(async move {
                if let Err(e) = api::serve(listener, &tls, handlers, stop).await {
                    tracing::error!(error = %e, "agent API stopped");
                }
            }))
        }
        None => {
            tracing::warn!("no agent API certificates: logs, exec and attach are not served");
            None
        }
    };
    let taints = cfg
        .node_taints
        .iter()
        .map(|t| node::parse_taint(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Config)?;
    let spec = node::NodeSpec {
        name: cfg.node_name.clone(),
        ip: cfg.node_ip.clone(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| cfg.node_name.clone()),
        labels: cfg
            .node_labels
            .iter()
            .chain(&cfg.role_labels)
            .cloned()
            .collect(),
        taints,
        agent_port: cfg.agent_port,
    };
    node::register(&client, &spec).await?;
    let storage = {
        let mut stop = shutdown.clone();
        let run = storage::run(
            client.clone(),
            cfg.node_name.clone(),
            cfg.storage_dir(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        );
        tokio::spawn(async move {
            if let Err(e) = run.await {
                tracing::error!(error = %e, "local-path volumes are not served");
            }
        })
    };
    let runtime = runtime_state::RuntimeState::default();
    let heartbeat = tokio::spawn(node::heartbeat(
        client.clone(),
        cri.clone(),
        runtime.clone(),
        spec.clone(),
        cfg.data_dir.clone(),
        shutdown.clone(),
    ));

    let pod_cidr = tokio::select! {
        c = wait_pod_cidr(&client, &cfg.node_name) => c,
        _ = shutdown.changed() => {
            heartbeat.abort();
            storage.abort();
            if let Some(a) = agent_api { a.abort(); }
            if let Some(c) = managed { c.stop().await; }
            return Ok(());
        }
    };
    let mut cni = pikube_runtime::cni::CniConfig::new(pod_cidr.parse()?);
    cni.bridge = cfg.cni_bridge.clone();
    cni.name = format!("pikube-{}", cfg.cni_bridge);
    let conf = pikube_runtime::cni::write(&ctr_cfg.cni_conf_dir, &cni)?;
    tracing::info!(%pod_cidr, conf = %conf.display(), "pod network configured");
    // Post Ready as soon as the network is there, not at the next heartbeat.
    let report = node::Report::IfChanged;
    if let Err(e) = node::post_status(&client, &cri, &runtime, &spec, &cfg.data_dir, report).await {
        tracing::debug!(error = %e, "cannot post node status");
    }

    let host_dns = std::fs::read_to_string(&cfg.resolv_conf)
        .map(|t| sandbox::HostDns::parse(&t))
        .unwrap_or_default();
    let machine = node::Machine::read(&cfg.data_dir);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let probes = probes::Probes::new(
        cri.clone(),
        tx.clone(),
        crate::events::Recorder::new(client.clone(), "kubelet", Some(&cfg.node_name)),
    );
    let worker = Arc::new(pods::Worker::new(
        client.clone(),
        cri.clone(),
        sandbox::NodeNetwork {
            node_name: cfg.node_name.clone(),
            cluster_dns: cfg.cluster_dns,
            cluster_domain: cfg.cluster_domain.clone(),
            host_dns,
            log_root: cfg.log_root(),
            cgroup_root: cfg.cgroup_root.clone(),
        },
        cfg.node_ip.clone(),
        cfg.pods_dir(),
        pods::Allocatable {
            cpu_millis: machine.cpus as i64 * 1000,
            memory: machine.memory as i64,
        },
        probes,
    ));
    let pleg = tokio::spawn(pleg::run(cri.clone(), cfg.node_name.clone(), tx));
    let rotation = tokio::spawn(log_rotation::run(cri.clone(), cfg.log_policy));
    let changes = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut stop = shutdown.clone();
    pods::run(worker, changes, async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
    pleg.abort();
    rotation.abort();
    heartbeat.abort();
    storage.abort();
    if let Some(a) = agent_api {
        a.abort();
    }
    if let Some(c) = managed {
        c.stop().await;
    }
    Ok(())
}
