//! Settings of a pikube server or agent, as given by flags and `/etc/pikube/config.yaml`.
//!
//! The command line fills these structs; the components read them. Names follow k3s's
//! flags so that k3s users find their way.

use std::net::IpAddr;
use std::path::PathBuf;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pikube";
/// Default kubeconfig written by the server.
pub const DEFAULT_KUBECONFIG: &str = "/etc/pikube/pikube.yaml";
/// Default config file whose keys are the flags.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/pikube/config.yaml";
/// Default API server port.
pub const DEFAULT_HTTPS_PORT: u16 = 6443;
/// Default Raft peer port.
pub const DEFAULT_PEER_PORT: u16 = 6444;
/// Default agent API port (logs, exec, port-forward).
pub const DEFAULT_AGENT_PORT: u16 = 10250;
/// Default cluster (pod) CIDR.
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// Default service CIDR.
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
/// Default cluster DNS address.
pub const DEFAULT_CLUSTER_DNS: &str = "10.43.0.10";
/// Default run dir (containerd socket and state).
pub const DEFAULT_RUN_DIR: &str = "/run/pikube";
/// Default parent cgroup of the pods.
pub const DEFAULT_CGROUP_ROOT: &str = "/kubepods";
/// Default bridge of the pods.
pub const DEFAULT_CNI_BRIDGE: &str = "cni0";
/// Default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Default resolv.conf of the node (upstream resolvers of the cluster DNS).
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Everything `pikube server` needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Root of all state (store, certificates, agent files).
    pub data_dir: PathBuf,
    /// Address the API server and peer port listen on.
    pub bind_address: IpAddr,
    /// Address other nodes and the serving certificate use for this server.
    pub advertise_address: Option<IpAddr>,
    /// API server port.
    pub https_listen_port: u16,
    /// Raft peer port.
    pub peer_port: u16,
    /// Name of this node (defaults to the hostname).
    pub node_name: String,
    /// Extra IPs of this node (also put into the serving certificate).
    pub node_ips: Vec<IpAddr>,
    /// Where the admin kubeconfig is written.
    pub write_kubeconfig: PathBuf,
    /// File mode of the written kubeconfig.
    pub write_kubeconfig_mode: u32,
    /// Shared secret that extra servers (and agents) join with.
    pub token: Option<String>,
    /// Shared secret that agents join with (never servers).
    pub agent_token: Option<String>,
    /// URL of an existing server to join (extra server).
    pub server: Option<String>,
    /// Start a new cluster that other servers can join.
    pub cluster_init: bool,
    /// Pod CIDR of the cluster.
    pub cluster_cidr: String,
    /// Service CIDR of the cluster.
    pub service_cidr: String,
    /// Port range for NodePort Services.
    pub service_node_port_range: std::ops::RangeInclusive<u16>,
    /// Cluster DNS address.
    pub cluster_dns: IpAddr,
    /// Cluster domain.
    pub cluster_domain: String,
    /// Where the cluster DNS answers; None = the cluster DNS address, port 53, put on `lo`.
    pub dns_listen_address: Option<std::net::SocketAddr>,
    /// The resolv.conf whose nameservers get the names outside the cluster domain.
    pub resolv_conf: PathBuf,
    /// CRI endpoint of an existing containerd; None = pikube starts its own.
    pub container_runtime_endpoint: Option<String>,
    /// Run no agent on this server.
    pub disable_agent: bool,
    /// Port of the node agent's API (logs, exec, attach), k3s's `--kubelet-port`.
    pub agent_port: u16,
    /// Sockets and runtime state of the agent's containerd.
    pub run_dir: PathBuf,
    /// Parent cgroup of the pods.
    pub cgroup_root: String,
    /// Bridge the pods attach to.
    pub cni_bridge: String,
    /// Size and count limits of container log files.
    pub container_logs: crate::agent::log_rotation::Policy,
    /// Components not to run (e.g. "dns", "proxy", "scheduler", "controllers").
    pub disable: Vec<String>,
    /// Labels for this node (`key=value`).
    pub node_labels: Vec<String>,
    /// Taints for this node (`key=value:Effect`).
    pub node_taints: Vec<String>,
    /// Static bearer tokens (kube-apiserver's `--token-auth-file` format).
    pub token_auth_file: Option<PathBuf>,
    /// How often the store's history is compacted.
    pub compaction_interval: std::time::Duration,
    /// Silence after which a node is unreachable.
    pub node_monitor_grace_period: std::time::Duration,
    /// How long pods without their own toleration stay on an unreachable node.
    pub default_unreachable_toleration: std::time::Duration,
}

impl ServerConfig {
    /// The settings of the agent that runs inside this server.
    pub fn agent(&self) -> crate::agent::AgentConfig {
        let node_name = if self.node_name.is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_lowercase())
                .unwrap_or_else(|_| "pikube".into())
        } else {
            self.node_name.clone()
        };
        let node_ip = self
            .node_ips
            .first()
            .copied()
            .or_else(|| (!self.bind_address.is_unspecified()).then_some(self.bind_address))
            .or_else(primary_ip)
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "127.0.0.1".into());
        crate::agent::AgentConfig {
            node_name,
            node_ip,
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            container_runtime_endpoint: self.container_runtime_endpoint.clone(),
            cluster_dns: self.cluster_dns,
            cluster_domain: self.cluster_domain.clone(),
            resolv_conf: self.resolv_conf.clone(),
            node_labels: self
                .node_labels
                .iter()
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            role_labels: Vec::new(),
            node_taints: self.node_taints.clone(),
            cgroup_root: self.cgroup_root.clone(),
            cni_bridge: self.cni_bridge.clone(),
            agent_port: self.agent_port,
            tls: None,
            log_policy: self.container_logs,
        }
    }

    /// Whether the component `name` was disabled with `--disable`.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disable.iter().any(|d| d == name)
    }
}

/// The address of the interface the default route leaves by. A UDP `connect` only looks
/// up the route; nothing is sent.
fn primary_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    s.local_addr()
        .ok()
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
}
