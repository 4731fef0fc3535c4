//! The node's network setup around the ruleset: a port-less bridge that the service
//! CIDR is routed to (so service traffic never follows the default route off the node,
//! even before the first sync), an `unreachable` route for the cluster CIDR (the parts
//! no node owns fail at once; known nodes' pod CIDRs are more specific routes), host-gw
//! routes to other nodes' pod CIDRs via their node IPs, and the forwarding sysctls.
//!
//! Driven through `ip` (iproute2) rather than netlink: the same [`NetNs`] mechanism as
//! `nft` runs it inside a test namespace, it needs no netlink dependency, and it runs a
//! handful of times per node change. Every route pikube adds carries protocol
//! [`ROUTE_PROTO`], so leftovers of a crashed run are found and removed by protocol.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::host::NetNs;
use crate::model::Ipv4Cidr;
use crate::Error;

/// The routing protocol number tagging pikube's routes (`ip route … proto 152`).
pub const ROUTE_PROTO: &str = "152";
/// Metric of the cluster range's `unreachable` route, so any other route for the same
/// range takes precedence.
const UNREACHABLE_METRIC: &str = "4096";

/// What the node network looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNetworkConfig {
    /// Name of the port-less bridge the service CIDR is routed to (`pikube0`).
    pub bridge: String,
    /// The service CIDR.
    pub service_cidr: Ipv4Cidr,
    /// The cluster (pod) CIDR.
    pub cluster_cidr: Ipv4Cidr,
    /// Whether node ports answer on 127.0.0.1 (sets `route_localnet`).
    pub localhost_nodeports: bool,
}

impl NodeNetworkConfig {
    /// pikube's defaults: bridge `pikube0`, services 10.43.0.0/16, pods 10.42.0.0/16.
    pub fn new() -> Self {
        Self {
            bridge: "pikube0".to_owned(),
            service_cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 43, 0, 0), 16).expect("constant"),
            cluster_cidr: Ipv4Cidr::new(Ipv4Addr::new(10, 42, 0, 0), 16).expect("constant"),
            localhost_nodeports: false,
        }
    }
}

impl Default for NodeNetworkConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Another node: its pod CIDR is reached via its node IP (host-gw).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PeerNode {
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// The node's IP, on a network this node reaches directly.
    pub node_ip: Ipv4Addr,
}

/// The node network of one namespace; [`install`](Self::install) sets it up,
/// [`set_peers`](Self::set_peers) keeps the host-gw routes in step with the node list,
/// [`uninstall`](Self::uninstall) removes the routes and the bridge (and restores the
/// sysctls if this same instance changed them).
#[derive(Debug)]
pub struct NodeNetwork {
    ns: NetNs,
    cfg: NodeNetworkConfig,
    peers: BTreeMap<Ipv4Cidr, Ipv4Addr>,
    saved_sysctls: Vec<(String, String)>,
}

fn ignore_exists(r: Result<String, Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(Error::Failed { stderr, .. }) if stderr.contains("File exists") => Ok(()),
        Err(e) => Err(e),
    }
}

fn ignore_missing(r: Result<String, Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(Error::Failed { stderr, .. })
            if stderr.contains("Cannot find device")
                || stderr.contains("No such process")
                || stderr.contains("No such file")
                || stderr.contains("FIB table does not exist") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl NodeNetwork {
    /// The node network of `ns` described by `cfg` (nothing is changed yet).
    pub fn new(ns: NetNs, cfg: NodeNetworkConfig) -> Self {
        Self {
            ns,
            cfg,
            peers: BTreeMap::new(),
            saved_sysctls: Vec::new(),
        }
    }

    fn ip(&self, args: &[&str]) -> Result<String, Error> {
        self.ns.run("ip", args, None)
    }

    fn set_sysctl(&mut self, key: &str, value: &str) -> Result<(), Error> {
        let Some(old) = self.ns.read_sysctl(key) else {
            tracing::warn!(key, "sysctl not available here; skipped");
            return Ok(());
        };
        if old != value {
            self.ns.sysctl(key, value)?;
            if !self.saved_sysctls.iter().any(|(k, _)| k == key) {
                self.saved_sysctls.push((key.to_owned(), old));
            }
        }
        Ok(())
    }

    /// Sets sysctls, creates the bridge, routes the service CIDR to it and makes the
    /// cluster CIDR unreachable except where more specific routes exist. Idempotent;
    /// removes leftover pikube routes of an earlier run first.
    pub fn install(&mut self) -> Result<(), Error> {
        self.set_sysctl("net.ipv4.ip_forward", "1")?;
        self.set_sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
        if self.cfg.localhost_nodeports {
            self.set_sysctl("net.ipv4.conf.all.route_localnet", "1")?;
        }
        ignore_missing(self.ip(&["route", "flush", "proto", ROUTE_PROTO]))?;
        let bridge = self.cfg.bridge.clone();
        ignore_exists(self.ip(&["link", "add", &bridge, "type", "bridge"]))?;
        self.ip(&["link", "set", &bridge, "up"])?;
        let svc = self.cfg.service_cidr.to_string();
        let cluster = self.cfg.cluster_cidr.to_string();
        self.ip(&[
            "route",
            "replace",
            &svc,
            "dev",
            &bridge,
            "proto",
            ROUTE_PROTO,
        ])?;
        // A high metric: a route for exactly the same range (the node's own pod bridge
        // when the cluster is one node's range) wins over it.
        self.ip(&[
            "route",
            "replace",
            "unreachable",
            &cluster,
            "proto",
            ROUTE_PROTO,
            "metric",
            UNREACHABLE_METRIC,
        ])?;
        self.peers.clear();
        Ok(())
    }

    /// Makes the host-gw routes match `peers`: adds or changes routes to their pod
    /// CIDRs via their node IPs, removes routes of nodes no longer listed (their range
    /// falls back to unreachable).
    pub fn set_peers(&mut self, peers: &[PeerNode]) -> Result<(), Error> {
        let wanted: BTreeMap<Ipv4Cidr, Ipv4Addr> =
            peers.iter().map(|p| (p.pod_cidr, p.node_ip)).collect();
        let gone: Vec<Ipv4Cidr> = self
            .peers
            .keys()
            .filter(|c| !wanted.contains_key(c))
            .copied()
            .collect();
        for cidr in gone {
            ignore_missing(self.ip(&["route", "del", &cidr.to_string(), "proto", ROUTE_PROTO]))?;
            self.peers.remove(&cidr);
        }
        for (cidr, via) in wanted {
            if self.peers.get(&cidr) == Some(&via) {
                continue;
            }
            self.ip(&[
                "route",
                "replace",
                &cidr.to_string(),
                "via",
                &via.to_string(),
                "proto",
                ROUTE_PROTO,
            ])?;
            self.peers.insert(cidr, via);
        }
        Ok(())
    }

    /// Removes pikube's routes and bridge; restores the sysctls this instance changed (an
    /// instance made afresh, as by `pikube killall`, knows no old values and leaves them).
    pub fn uninstall(&mut self) -> Result<(), Error> {
        ignore_missing(self.ip(&["route", "flush", "proto", ROUTE_PROTO]))?;
        ignore_missing(self.ip(&["link", "del", &self.cfg.bridge]))?;
        self.peers.clear();
        for (key, value) in std::mem::take(&mut self.saved_sysctls).into_iter().rev() {
            self.ns.sysctl(&key, &value)?;
        }
        Ok(())
    }
}
