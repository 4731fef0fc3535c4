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
    /// Shared secret that agents and extra servers join with.
    pub token: Option<String>,
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
    /// Whether the component `name` was disabled with `--disable`.
    pub fn is_disabled(&self, name: &str) -> bool {
        self.disable.iter().any(|d| d == name)
    }
}
