//! The `pikube` command.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pikube::config::{self, ServerConfig};

/// jemalloc rather than glibc's malloc: the store's write and compaction churn leaves
/// glibc holding several times the live memory (measured by `make bench-store`).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// pikube: a Kubernetes distribution in one small binary, for Raspberry Pi class machines.
#[derive(Parser, Debug)]
#[command(name = "pikube", version, about, long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a server: the API server and the store (the control plane), and a node.
    Server(Box<ServerArgs>),
    /// Run an agent: a node that joins a server with its token.
    Agent(Box<AgentArgs>),
    /// Check that this machine has what a pikube node needs (pass/fail list; exit 1 on a failure).
    CheckConfig {
        /// Data directory that must be writable.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Address the ports are checked on.
        #[arg(long, default_value = "0.0.0.0")]
        bind_address: IpAddr,
    },
    /// Stop every pod container, shim and mount the node agent left behind (before an
    /// uninstall, or to reset a node).
    Killall {
        /// The agent's data directory.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The agent's run directory.
        #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Parent cgroup of the pods.
        #[arg(long, default_value = config::DEFAULT_CGROUP_ROOT)]
        cgroup_root: String,
        /// The pods' bridge.
        #[arg(long, default_value = config::DEFAULT_CNI_BRIDGE)]
        cni_bridge: String,
        /// Leave the service proxy's nftables table, bridge and routes in place.
        #[arg(long)]
        keep_proxy: bool,
    },
    /// Save a consistent copy of the store, or start a new server's store from one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create, list and delete bootstrap tokens that new nodes join with.
    Token(pikube::token::TokenArgs),
    /// Print the shell completion script for bash, zsh or fish (e.g. `pikube completion
    /// bash > /etc/bash_completion.d/pikube`).
    Completion {
        /// The shell.
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Run the system kubectl with pikube's kubeconfig (unless KUBECONFIG is set).
    #[command(disable_help_flag = true)]
    Kubectl {
        /// Arguments passed to kubectl as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    /// Ask the running server for a snapshot of its store (written to
    /// <data-dir>/server/snapshots/ on the server's machine; its path is printed).
    Save {
        /// Name prefix of the snapshot file.
        #[arg(long)]
        name: Option<String>,
        /// Admin kubeconfig of the server.
        #[arg(long, default_value = config::DEFAULT_KUBECONFIG)]
        kubeconfig: PathBuf,
    },
    /// Create the store of a stopped server from a snapshot: a new one-node cluster with
    /// the snapshot's objects. The data directory must hold no store yet.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The server's data directory.
        #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Runs a snapshot command to its end and exits.
fn snapshot(cmd: SnapshotCommand) -> ! {
    let code = pikube::cli::run(pikube::cli::Runtime::Single, async {
        match cmd {
            SnapshotCommand::Save { name, kubeconfig } => {
                let saved = pikube::snapshot::save_via(&kubeconfig, name).await?;
                println!(
                    "saved {} (revision {})",
                    saved.path.display(),
                    saved.revision
                );
            }
            SnapshotCommand::Restore { file, data_dir } => {
                pikube::snapshot::restore(&data_dir, &file).await?;
                println!(
                    "restored {} into {}; start the server with --data-dir {}",
                    file.display(),
                    data_dir.join("server/db").display(),
                    data_dir.display()
                );
            }
        }
        anyhow::Ok(())
    });
    std::process::exit(code)
}

/// Replaces this process with kubectl, pointed at pikube's kubeconfig.
fn exec_kubectl(args: Vec<std::ffi::OsString>) -> ! {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("kubectl");
    cmd.args(args);
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", config::DEFAULT_KUBECONFIG);
    }
    let err = cmd.exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        eprintln!("pikube: error: kubectl is not installed or not on PATH (install it, e.g. `apt-get install kubectl`)");
    } else {
        eprintln!("pikube: error: cannot run kubectl: {err}");
    }
    std::process::exit(127);
}

#[derive(Args, Debug)]
struct AgentArgs {
    /// Config file whose keys are these flags' names (flags given here win).
    #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
    config: PathBuf,
    /// URL of the server to join (`https://host:6443`).
    #[arg(long, env = "PIKUBE_URL")]
    server: String,
    /// The join token: the server's <data-dir>/server/agent-token, one from `pikube token
    /// create`, or its server token.
    #[arg(long, env = "PIKUBE_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    node: NodeArgs,
    /// Components not to run (repeatable): dns, proxy.
    #[arg(long, value_parser = ["dns", "proxy"])]
    disable: Vec<String>,
}

/// What every node has, server or agent.
#[derive(Args, Debug)]
struct NodeArgs {
    /// Directory for all state (store, certificates).
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Name of this node (defaults to the hostname).
    #[arg(long, default_value = "")]
    node_name: String,
    /// IP address of this node (repeatable; also put into the serving certificate).
    #[arg(long)]
    node_ip: Vec<IpAddr>,
    /// Where the cluster DNS listens (IP:PORT, UDP and TCP); default: the cluster DNS
    /// address, port 53, put on `lo` while pikube runs.
    #[arg(long)]
    dns_listen_address: Option<std::net::SocketAddr>,
    /// resolv.conf whose nameservers resolve names outside the cluster domain.
    #[arg(long, default_value = config::DEFAULT_RESOLV_CONF)]
    resolv_conf: PathBuf,
    /// Port of the node agent's API (logs, exec, attach), on the node IP.
    #[arg(long, default_value_t = config::DEFAULT_AGENT_PORT)]
    agent_port: u16,
    /// CRI socket of an existing containerd (default: pikube runs its own).
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// Label of this node, `key=value` (repeatable).
    #[arg(long, value_parser = parse_label)]
    node_label: Vec<String>,
    /// Taint of this node at registration, `key=value:Effect` (repeatable).
    #[arg(long, value_parser = parse_taint)]
    node_taint: Vec<String>,
    /// Directory for the agent's containerd socket and state.
    #[arg(long, default_value = config::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Parent cgroup of the pods (kubelet's --cgroup-root).
    #[arg(long, default_value = config::DEFAULT_CGROUP_ROOT)]
    cgroup_root: String,
    /// Name of the bridge the pods attach to.
    #[arg(long, default_value = config::DEFAULT_CNI_BRIDGE, value_parser = parse_bridge)]
    cni_bridge: String,
    /// Size at which a container's log file is rotated, a quantity such as 10Mi
    /// (kubelet's containerLogMaxSize).
    #[arg(long, default_value = "10Mi", value_parser = parse_log_size)]
    container_log_max_size: u64,
    /// Log files kept per container, the current one included (kubelet's
    /// containerLogMaxFiles).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=1000))]
    container_log_max_files: u64,
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// Config file whose keys are these flags' names (flags given here win).
    #[arg(long, default_value = config::DEFAULT_CONFIG_FILE)]
    config: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
    /// Secret that other servers (and agents) join with; it also fetches the CA key
    /// (default: generated once; the full token is kept in <data-dir>/server/token).
    #[arg(long, env = "PIKUBE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Secret that agents join with, never servers (default: the cluster's, else generated
    /// once; the full token is kept in <data-dir>/server/agent-token).
    #[arg(long, env = "PIKUBE_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// Start a new cluster that other servers can join (opens the store's peer port).
    #[arg(long)]
    cluster_init: bool,
    /// Join the cluster of the server at this URL as another server (needs --token).
    #[arg(long)]
    server: Option<String>,
    /// Port of the store's peers (servers of one cluster), mutual TLS.
    #[arg(long, default_value_t = config::DEFAULT_PEER_PORT)]
    peer_port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// Address other nodes and clients use for this server.
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// HTTPS port of the API server.
    #[arg(long, default_value_t = config::DEFAULT_HTTPS_PORT)]
    https_listen_port: u16,
    /// Where to write the admin kubeconfig.
    #[arg(long, default_value = config::DEFAULT_KUBECONFIG)]
    write_kubeconfig: PathBuf,
    /// File mode of the written kubeconfig, in octal.
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    write_kubeconfig_mode: u32,
    /// Pod CIDR of the cluster; each node gets a /24 of it.
    #[arg(long, default_value = config::DEFAULT_CLUSTER_CIDR)]
    cluster_cidr: String,
    /// Service CIDR of the cluster.
    #[arg(long, default_value = config::DEFAULT_SERVICE_CIDR)]
    service_cidr: String,
    /// Port range for NodePort Services (`low-high`).
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: std::ops::RangeInclusive<u16>,
    /// Cluster domain.
    #[arg(long, default_value = config::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Cluster DNS address (what pods get as their nameserver).
    #[arg(long, default_value = config::DEFAULT_CLUSTER_DNS)]
    cluster_dns: IpAddr,
    /// Run no node agent on this server.
    #[arg(long)]
    disable_agent: bool,
    /// Seconds without a heartbeat after which a node is unreachable (as
    /// kube-controller-manager's --node-monitor-grace-period).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    node_monitor_grace_period: u64,
    /// Seconds new pods tolerate an unreachable node unless they set their own
    /// toleration (as kube-apiserver's --default-unreachable-toleration-seconds).
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: u64,
    /// Components not to run (repeatable): controllers, scheduler, dns, proxy,
    /// local-storage (the `local-path` StorageClass and its provisioner, as k3s).
    #[arg(long, value_parser = [
        "controllers",
        "scheduler",
        "dns",
        "proxy",
        "local-storage",
    ])]
    disable: Vec<String>,
    /// File of static bearer tokens, one `token,user,uid[,"group1,group2"]` per line.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// How often the store's history is compacted, in seconds (as kube-apiserver's
    /// --etcd-compaction-interval).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    etcd_compaction_interval: u64,
}

fn parse_label(s: &str) -> Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => {
            pikube::agent::node::check_own_label(k)?;
            Ok(s.to_string())
        }
        _ => Err(format!("{s:?} is not a label such as key=value")),
    }
}

fn parse_taint(s: &str) -> Result<String, String> {
    pikube::agent::node::parse_taint(s).map(|_| s.to_string())
}

fn parse_bridge(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an interface name (1-15 letters, digits, - or _)"
        ))
    }
}

fn parse_log_size(s: &str) -> Result<u64, String> {
    pikube::scheduler::quantity::bytes(s)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a positive size such as 10Mi"))
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 0600"))
}

fn parse_port_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let bad = || format!("{s:?} is not a port range such as 30000-32767");
    let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo == 0 || lo > hi {
        return Err(bad());
    }
    Ok(lo..=hi)
}

fn server_config(a: ServerArgs) -> ServerConfig {
    let n = a.node;
    ServerConfig {
        data_dir: n.data_dir,
        bind_address: a.bind_address,
        advertise_address: a.advertise_address,
        https_listen_port: a.https_listen_port,
        peer_port: a.peer_port,
        node_name: n.node_name,
        node_ips: n.node_ip,
        write_kubeconfig: a.write_kubeconfig,
        write_kubeconfig_mode: a.write_kubeconfig_mode,
        token: a.token,
        agent_token: a.agent_token,
        server: a.server,
        cluster_init: a.cluster_init,
        cluster_cidr: a.cluster_cidr,
        service_cidr: a.service_cidr,
        service_node_port_range: a.service_node_port_range,
        cluster_dns: a.cluster_dns,
        cluster_domain: a.cluster_domain,
        dns_listen_address: n.dns_listen_address,
        resolv_conf: n.resolv_conf,
        container_runtime_endpoint: n.container_runtime_endpoint,
        disable_agent: a.disable_agent,
        agent_port: n.agent_port,
        run_dir: n.run_dir,
        cgroup_root: n.cgroup_root,
        cni_bridge: n.cni_bridge,
        container_logs: pikube::agent::log_rotation::Policy {
            max_size: n.container_log_max_size,
            max_files: n.container_log_max_files as usize,
        },
        disable: a.disable,
        node_labels: n.node_label,
        node_taints: n.node_taint,
        compaction_interval: std::time::Duration::from_secs(a.etcd_compaction_interval),
        node_monitor_grace_period: std::time::Duration::from_secs(a.node_monitor_grace_period),
        default_unreachable_toleration: std::time::Duration::from_secs(
            a.default_unreachable_toleration_seconds,
        ),
        token_auth_file: a.token_auth_file,
    }
}

/// An agent's settings: the node-level flags over a server's defaults (the cluster's
/// ranges, DNS address and domain come from the server when joining).
fn worker_config(a: AgentArgs) -> Result<pikube::worker::WorkerConfig, clap::Error> {
    use clap::FromArgMatches;
    let matches =
        ServerArgs::augment_args(clap::Command::new("server")).try_get_matches_from(["server"])?;
    let defaults = ServerArgs::from_arg_matches(&matches)?;
    let mut node = server_config(ServerArgs {
        node: a.node,
        disable: a.disable,
        ..defaults
    });
    node.server = Some(a.server.clone());
    Ok(pikube::worker::WorkerConfig {
        server: a.server,
        token: a.token,
        node,
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn check_config(data_dir: PathBuf, bind_address: IpAddr) -> ! {
    let env = pikube::check::Environment {
        cgroup_root: "/sys/fs/cgroup".into(),
        proc_root: "/proc".into(),
        cni_bin_dir: "/usr/lib/cni".into(),
        data_dir,
        bind_address,
        ports: vec![
            config::DEFAULT_HTTPS_PORT,
            config::DEFAULT_PEER_PORT,
            config::DEFAULT_AGENT_PORT,
        ],
    };
    let (text, ok) = pikube::check::report(&pikube::check::run(&env));
    print!("{text}");
    std::process::exit(if ok { 0 } else { 1 });
}

/// The command line with the server's config file spliced in after `server`, so that
/// flags given by hand override the file.
fn args_with_config_file() -> anyhow::Result<Vec<std::ffi::OsString>> {
    use anyhow::Context;
    use clap::CommandFactory;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let Some(sub) = args
        .get(1)
        .and_then(|a| a.to_str())
        .filter(|a| matches!(*a, "server" | "agent"))
        .map(String::from)
    else {
        return Ok(args);
    };
    let explicit = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| {
            args.iter().find_map(|a| {
                a.to_str()
                    .and_then(|s| s.strip_prefix("--config="))
                    .map(PathBuf::from)
            })
        });
    let path = explicit
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_FILE));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok(args)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let cmd = Cli::command();
    let known: Vec<String> = cmd
        .find_subcommand(&sub)
        .map(|s| {
            s.get_arguments()
                .filter_map(|a| a.get_long().map(String::from))
                .filter(|l| l != "config")
                .collect()
        })
        .unwrap_or_default();
    let from_file = pikube::config_file::to_args(&path, &text, &known)?;
    let mut out = args[..2].to_vec();
    out.extend(from_file);
    out.extend_from_slice(&args[2..]);
    Ok(out)
}

fn main() {
    let args = match args_with_config_file() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pikube: error: {e:#}");
            std::process::exit(1);
        }
    };
    /// What runs on the async runtime.
    enum Node {
        Server(ServerConfig),
        Agent(pikube::worker::WorkerConfig),
    }
    let node = match Cli::parse_from(args).command {
        Command::Kubectl { args } => exec_kubectl(args),
        Command::Snapshot(cmd) => snapshot(cmd),
        Command::Token(args) => std::process::exit(pikube::token::run_cli(args)),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            use clap_complete::Shell;
            let shell = match shell.as_str() {
                "zsh" => Shell::Zsh,
                "fish" => Shell::Fish,
                _ => Shell::Bash,
            };
            clap_complete::generate(shell, &mut Cli::command(), "pikube", &mut std::io::stdout());
            std::process::exit(0);
        }
        Command::Server(args) => Node::Server(server_config(*args)),
        Command::Agent(args) => match worker_config(*args) {
            Ok(c) => Node::Agent(c),
            Err(e) => e.exit(),
        },
        Command::Killall {
            data_dir,
            run_dir,
            cgroup_root,
            cni_bridge,
            keep_proxy,
        } => {
            pikube::agent::killall::run(&pikube::agent::killall::Targets {
                data_dir,
                run_dir,
                cgroup_root,
                bridge: cni_bridge,
                proxy: !keep_proxy,
            });
            std::process::exit(0);
        }
        Command::CheckConfig {
            data_dir,
            bind_address,
        } => check_config(data_dir, bind_address),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let code = pikube::cli::run(pikube::cli::Runtime::Multi, async {
        match node {
            Node::Server(c) => pikube::server::run(c, shutdown_signal()).await,
            Node::Agent(c) => pikube::worker::run(c, shutdown_signal()).await,
        }
    });
    std::process::exit(code)
}
