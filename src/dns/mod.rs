//! Cluster DNS in-process (what CoreDNS is in other distributions): the cluster domain
//! answered from watches of Services, EndpointSlices and Pods, everything else forwarded
//! to the node's upstream resolvers.
//!
//! | module | role |
//! |---|---|
//! | [`records`] | pure: cluster facts → the records of the Kubernetes DNS specification |
//! | [`cache`] | encoded replies of one zone version, keyed by the wire question |
//! | [`watch`] | reflectors → a new zone after every change, swapped atomically |
//! | [`forward`] | upstreams from resolv.conf, loop check, bounded TTL cache |
//! | [`server`] | the wire protocol on UDP and TCP |
//!
//! Each node answers on the cluster DNS address itself: unless told another listen
//! address, pikube puts that address on `lo` as a /32 (a dummy link is not available on
//! every kernel) and removes it again at shutdown.

pub mod cache;
pub mod forward;
pub mod records;
pub mod server;
pub mod watch;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch as signal;

use records::{Zone, ZoneConfig, ZoneData};

/// TTL of cluster records and of negative answers (the Kubernetes DNS default).
pub const DEFAULT_TTL: u32 = 5;

/// Why the DNS server could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The reason.
        source: std::io::Error,
    },
    /// The resolv.conf could not be read.
    #[error("cannot read {path}: {source}")]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The reason.
        source: std::io::Error,
    },
    /// The node-local address could not be set up.
    #[error("cannot put {ip} on lo: {message}")]
    LocalAddress {
        /// The address.
        ip: IpAddr,
        /// What `ip` said.
        message: String,
    },
    /// A setting is invalid.
    #[error("{0}")]
    Config(String),
}

/// Settings of the DNS server.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Where it answers (UDP and TCP).
    pub listen: SocketAddr,
    /// The cluster DNS address pods use (never an upstream).
    pub cluster_dns: IpAddr,
    /// The cluster zone.
    pub zone: ZoneConfig,
    /// Where the upstream resolvers are read from.
    pub resolv_conf: PathBuf,
    /// Put the listen address on `lo` when missing (and remove it at shutdown).
    pub local_address: bool,
}

/// Runs the DNS server until `stop` turns true.
pub async fn run(
    client: kube::Client,
    config: DnsConfig,
    stop: signal::Receiver<bool>,
) -> Result<(), Error> {
    let ip = config.listen.ip();
    let added = if config.local_address {
        add_local_address(ip).await?
    } else {
        false
    };
    let result = serve(client, &config, stop).await;
    if added {
        if let Err(e) = ip_command(&["addr", "del", &host_prefix(ip), "dev", "lo"]).await {
            tracing::warn!(%ip, error = %e, "cannot remove the cluster DNS address from lo");
        }
    }
    result
}

async fn stopped(mut stop: signal::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve(
    client: kube::Client,
    config: &DnsConfig,
    stop: signal::Receiver<bool>,
) -> Result<(), Error> {
    let bind = |source| Error::Bind {
        addr: config.listen,
        source,
    };
    let udp = tokio::net::UdpSocket::bind(config.listen)
        .await
        .map_err(bind)?;
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(bind)?;
    let forwarder = forward::Forwarder::from_resolv_conf(
        &config.resolv_conf,
        forward::self_check(config.listen, config.cluster_dns),
    )
    .await?;
    tracing::info!(listen = %config.listen, upstreams = ?forwarder.upstreams(), domain = %config.zone.domain, "cluster DNS starting");
    let zone = Arc::new(watch::SharedZone::new(Zone::build(
        &config.zone,
        0,
        &ZoneData::default(),
    )));
    let handler = Arc::new(server::Handler::new(zone.clone(), Arc::new(forwarder)));

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let watching = tokio::spawn(watch::run(
        client,
        config.zone.clone(),
        zone,
        ready_tx,
        stopped(stop.clone()),
    ));
    // Answer only once the caches are complete: a half-filled zone would deny names.
    tokio::select! {
        r = ready_rx => if r.is_err() { return Ok(()) },
        _ = stopped(stop.clone()) => return Ok(()),
    }
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut serving = tokio::task::JoinSet::new();
    serving.spawn(handler.clone().serve_udp(udp, workers));
    serving.spawn(handler.serve_tcp(tcp));
    tracing::info!(listen = %config.listen, "cluster DNS ready");
    stopped(stop).await;
    serving.abort_all();
    let _ = watching.await;
    Ok(())
}

/// `ip` as a single-address prefix.
fn host_prefix(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

async fn ip_command(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Puts `ip` on `lo` unless the host has it already; true if it was added here.
async fn add_local_address(ip: IpAddr) -> Result<bool, Error> {
    let err = |message| Error::LocalAddress { ip, message };
    let shown = ip_command(&["-o", "addr", "show", "dev", "lo"])
        .await
        .map_err(err)?;
    let prefix = host_prefix(ip);
    if shown.split_whitespace().any(|w| w == prefix) {
        return Ok(false);
    }
    ip_command(&["addr", "add", &prefix, "dev", "lo"])
        .await
        .map_err(err)?;
    tracing::info!(%ip, "cluster DNS address added to lo");
    Ok(true)
}
