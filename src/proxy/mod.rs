//! The service proxy of a node: reflectors of Services, EndpointSlices and Nodes (through
//! a `kube::Client`, in-process on a server), converted to `pikube_netfilter`'s input and
//! applied as one nftables table, plus the node's routes (service CIDR on the port-less
//! bridge, unreachable cluster CIDR, host-gw routes to the other nodes' pod CIDRs).
//!
//! Changes are debounced for 20 ms, so a change reaches the kernel well within 100 ms;
//! `nft` and `ip` run on the blocking pool. Every 10 s the table's chains are checked
//! (a deleted table or `nft flush ruleset` is repaired at once); every 5 min its rules
//! are checked too. On shutdown the rules stay in place (traffic keeps flowing while
//! pikube restarts); `uninstall` removes them.

mod convert;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use pikube_netfilter::{
    DriftCheck, Ipv4Cidr, NetNs, NodeFacts, NodeNetwork, NodeNetworkConfig, Proxier, Renderer,
};
use tokio::sync::Notify;

use crate::watch_filter;

/// Name of pikube's nftables table (`inet pikube`).
pub const TABLE: &str = "pikube";
/// Name of the port-less bridge the service CIDR is routed to.
pub const BRIDGE: &str = "pikube0";
const DEBOUNCE: Duration = Duration::from_millis(20);
const RETRY: Duration = Duration::from_secs(1);
const RULE_CHECK_EVERY: u32 = 30;

/// What the proxy of one node needs to know.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// This node's name.
    pub node_name: String,
    /// This node's addresses (node ports answer on them).
    pub node_ips: Vec<Ipv4Addr>,
    /// The cluster (pod) CIDR.
    pub cluster_cidr: Ipv4Cidr,
    /// The service CIDR.
    pub service_cidr: Ipv4Cidr,
    /// The cluster DNS address, answered on the node itself.
    pub cluster_dns: Option<Ipv4Addr>,
    /// Whether node ports also answer on 127.0.0.1 (`route_localnet`), as kube-proxy's
    /// iptables mode, which k3s uses, does.
    pub localhost_nodeports: bool,
    /// Where `nft` and `ip` run (the host's namespace in production).
    pub netns: NetNs,
    /// How often the table's chains are checked for drift (10 s; every 30th check also
    /// looks at its rules).
    pub drift_check_every: Duration,
    /// Sync passes so far (render the caches, apply the difference): tests and
    /// benchmarks read it to see what wakes the proxy.
    pub syncs: Arc<AtomicU64>,
}

impl ProxyConfig {
    /// The proxy settings of a server: IPv4 ranges and addresses from its flags.
    pub fn from_server(config: &crate::config::ServerConfig) -> Result<Self> {
        let cidr = |s: &str, what: &str| -> Result<Ipv4Cidr> {
            s.parse()
                .with_context(|| format!("{what} {s:?}: the service proxy needs an IPv4 CIDR"))
        };
        // The same node name and address the agent registers with (hostname and the
        // default route's address when no flag names them).
        let agent = config.agent();
        let agent_ip: Option<IpAddr> = agent.node_ip.parse().ok();
        let mut node_ips: Vec<Ipv4Addr> = config
            .node_ips
            .iter()
            .chain(agent_ip.iter())
            .chain(config.advertise_address.iter())
            .chain(std::iter::once(&config.bind_address))
            .filter_map(|ip| match ip {
                IpAddr::V4(v4) if !v4.is_unspecified() && !v4.is_loopback() => Some(*v4),
                _ => None,
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        node_ips.retain(|ip| seen.insert(*ip));
        Ok(Self {
            node_name: agent.node_name,
            node_ips,
            cluster_cidr: cidr(&config.cluster_cidr, "cluster CIDR")?,
            service_cidr: cidr(&config.service_cidr, "service CIDR")?,
            cluster_dns: match config.cluster_dns {
                IpAddr::V4(v4) => Some(v4),
                IpAddr::V6(_) => None,
            },
            localhost_nodeports: true,
            netns: NetNs::host(),
            drift_check_every: Duration::from_secs(10),
            syncs: Arc::default(),
        })
    }
}

/// Starts the proxy of a server's own node as one of its `components`; when the server's
/// ranges are not IPv4 the proxy is logged as not started and the server runs on.
pub fn start(
    client: kube::Client,
    config: &crate::config::ServerConfig,
    stop: tokio::sync::watch::Receiver<bool>,
    components: &mut tokio::task::JoinSet<()>,
) {
    let proxy = match ProxyConfig::from_server(config) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "service proxy not started");
            return;
        }
    };
    components.spawn(async move {
        if let Err(e) = run(client, proxy, stop).await {
            tracing::error!(error = %format!("{e:#}"), "service proxy stopped");
        }
    });
}

/// The kernel-side state, used from the blocking pool only.
struct Kernel {
    renderer: Renderer,
    proxier: Proxier,
    network: NodeNetwork,
}

/// Runs the proxy until `stop` turns true. The node network is set up before the first
/// watch, so the cluster's ranges never follow the default route.
pub async fn run(
    client: Client,
    cfg: ProxyConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let net_cfg = NodeNetworkConfig {
        bridge: BRIDGE.to_owned(),
        service_cidr: cfg.service_cidr,
        cluster_cidr: cfg.cluster_cidr,
        localhost_nodeports: cfg.localhost_nodeports,
    };
    let kernel = Kernel {
        renderer: Renderer::new(TABLE, node_facts(&cfg, cfg.node_ips.clone(), None)),
        proxier: Proxier::new(cfg.netns.clone(), TABLE),
        network: NodeNetwork::new(cfg.netns.clone(), net_cfg),
    };
    let kernel = Arc::new(Mutex::new(kernel));
    blocking(&kernel, |k| {
        k.network.install().context("node network setup")
    })
    .await?;

    let changed = Arc::new(Notify::new());
    let services = watch::<Service>(&client, &changed, everything);
    let slices = watch::<EndpointSlice>(&client, &changed, everything);
    let nodes = watch::<Node>(&client, &changed, convert::routing);
    let streams = futures::future::join3(services.1, slices.1, nodes.1);
    tokio::pin!(streams);
    let (services, slices, nodes) = (services.0, slices.0, nodes.0);
    let ready = async {
        services.wait_until_ready().await?;
        slices.wait_until_ready().await?;
        nodes.wait_until_ready().await
    };
    tokio::select! {
        r = ready => r.context("service proxy caches")?,
        _ = &mut streams => anyhow::bail!("service proxy watches ended"),
        _ = stopped(&mut stop) => return Ok(()),
    }

    let mut ticker = tokio::time::interval(cfg.drift_check_every);
    ticker.tick().await;
    let mut ticks = 0u32;
    loop {
        if let Err(e) = sync(&kernel, &cfg, &services, &slices, &nodes).await {
            tracing::warn!(error = %format!("{e:#}"), "service proxy sync failed; retrying in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => continue,
                _ = stopped(&mut stop) => return Ok(()),
            }
        }
        // Wait for a change, or for drift found by the periodic check.
        loop {
            tokio::select! {
                _ = changed.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    break;
                }
                _ = ticker.tick() => {
                    ticks += 1;
                    if drifted(&kernel, ticks.is_multiple_of(RULE_CHECK_EVERY)).await {
                        break;
                    }
                }
                _ = &mut streams => anyhow::bail!("service proxy watches ended"),
                _ = stopped(&mut stop) => return Ok(()),
            }
        }
    }
}

/// Checks the table for drift (its rules too when `rules`); true when it must be rebuilt
/// (or the check failed, so a sync is the safe answer).
async fn drifted(kernel: &Arc<Mutex<Kernel>>, rules: bool) -> bool {
    let depth = if rules {
        DriftCheck::Rules
    } else {
        DriftCheck::Chains
    };
    let drift = blocking(kernel, move |k| {
        k.proxier.check_drift(depth).context("drift check")
    })
    .await;
    match drift {
        Ok(false) => false,
        Ok(true) => {
            tracing::warn!(
                table = TABLE,
                "nftables table was changed outside pikube; rebuilding"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "drift check failed");
            true
        }
    }
}

/// Completes when `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Every update of an object counts (the fingerprint of [`watch`] for kinds whose
/// updates all matter to the proxy).
fn everything<K: kube::Resource>(obj: &K) -> u64 {
    watch_filter::fingerprint(&obj.meta().resource_version)
}

/// A reflector store of `K` and the stream that keeps it filled and pokes `changed`
/// when an object's `fingerprint` (what the proxy reads of it) changes.
fn watch<K>(
    client: &Client,
    changed: &Arc<Notify>,
    fingerprint: fn(&K) -> u64,
) -> (Store<K>, impl std::future::Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let changed = changed.clone();
    let stream = watch_filter::relevant(
        reflector::reflector(
            writer,
            watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
        )
        .default_backoff(),
        fingerprint,
    )
    .for_each(move |_| {
        changed.notify_one();
        futures::future::ready(())
    });
    (store, stream)
}

/// Renders the caches and applies them; keeps the host-gw routes in step with the nodes.
async fn sync(
    kernel: &Arc<Mutex<Kernel>>,
    cfg: &ProxyConfig,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
) -> Result<()> {
    cfg.syncs.fetch_add(1, Ordering::Relaxed);
    let nodes = nodes.state();
    let me = nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(cfg.node_name.as_str()));
    let mut node_ips = cfg.node_ips.clone();
    node_ips.extend(me.and_then(|n| convert::node_ip(n)));
    node_ips.sort();
    node_ips.dedup();
    let facts = node_facts(cfg, node_ips.clone(), me.and_then(|n| convert::pod_cidr(n)));
    let infos = convert::services(&services.state(), &slices.state(), &node_ips);
    let peers = convert::peers(&nodes, &cfg.node_name);
    blocking(kernel, move |k| {
        // Only services whose input changed are rendered again.
        k.renderer.set_node(facts);
        let current: HashSet<(&str, &str)> = infos
            .iter()
            .map(|s| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let gone: Vec<(String, String)> = k
            .renderer
            .keys()
            .filter(|(ns, name)| !current.contains(&(ns.as_str(), name.as_str())))
            .cloned()
            .collect();
        for (ns, name) in gone {
            k.renderer.remove(&ns, &name);
        }
        let count = infos.len();
        for info in infos {
            k.renderer.upsert(info);
        }
        let kind = k
            .proxier
            .sync(k.renderer.ruleset().clone())
            .context("nftables sync")?;
        tracing::debug!(?kind, services = count, "service proxy synced");
        k.network.set_peers(&peers).context("host-gw routes")
    })
    .await
}

/// The facts of this node for the renderer.
fn node_facts(cfg: &ProxyConfig, node_ips: Vec<Ipv4Addr>, pod_cidr: Option<Ipv4Cidr>) -> NodeFacts {
    let mut facts = NodeFacts::new(&cfg.node_name, node_ips);
    facts.cluster_cidr = cfg.cluster_cidr;
    facts.service_cidr = cfg.service_cidr;
    facts.local_dns = cfg.cluster_dns;
    facts.localhost_nodeports = cfg.localhost_nodeports;
    facts.pod_cidr = pod_cidr;
    facts
}

/// Runs `f` on the kernel state on the blocking pool.
async fn blocking<T: Send + 'static>(
    kernel: &Arc<Mutex<Kernel>>,
    f: impl FnOnce(&mut Kernel) -> Result<T> + Send + 'static,
) -> Result<T> {
    let kernel = kernel.clone();
    tokio::task::spawn_blocking(move || {
        let mut k = kernel.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut k)
    })
    .await
    .context("service proxy task")?
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
