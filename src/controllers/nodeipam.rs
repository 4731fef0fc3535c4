//! The node IPAM controller: every Node gets one pod CIDR (a /24 of the cluster CIDR by
//! default) in `spec.podCIDR` / `spec.podCIDRs`, as kube-controller-manager's range
//! allocator hands them out. The node's agent writes its CNI config for that range; the
//! service proxy routes other nodes' ranges to them.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{watch_config, Context, Error, Result};

/// An IPv4 CIDR split into per-node subnets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CidrPlan {
    base: u32,
    cluster_bits: u32,
    node_bits: u32,
}

impl CidrPlan {
    /// The plan for `cluster_cidr` (`a.b.c.d/n`) with node subnets of `/node_bits`.
    pub fn new(cluster_cidr: &str, node_bits: u32) -> Result<CidrPlan, String> {
        let (addr, bits) = cluster_cidr
            .split_once('/')
            .ok_or_else(|| format!("cluster CIDR {cluster_cidr:?} is not of the form a.b.c.d/n"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("cluster CIDR {cluster_cidr:?} has a bad address"))?;
        let cluster_bits: u32 = bits
            .parse()
            .ok()
            .filter(|b| (8..=30).contains(b))
            .ok_or_else(|| {
                format!("cluster CIDR {cluster_cidr:?} needs a prefix from /8 to /30")
            })?;
        if node_bits < cluster_bits || node_bits > 30 {
            return Err(format!(
                "node subnets of /{node_bits} do not fit the cluster CIDR {cluster_cidr}"
            ));
        }
        let mask = u32::MAX << (32 - cluster_bits);
        Ok(CidrPlan {
            base: u32::from(addr) & mask,
            cluster_bits,
            node_bits,
        })
    }

    /// How many node subnets the cluster CIDR holds.
    pub fn len(&self) -> u32 {
        1 << (self.node_bits - self.cluster_bits)
    }

    /// Whether the plan holds no subnet (never: a plan has at least one).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`-th node subnet as `a.b.c.d/n`.
    pub fn subnet(&self, i: u32) -> String {
        let addr = Ipv4Addr::from(self.base + (i << (32 - self.node_bits)));
        format!("{addr}/{}", self.node_bits)
    }

    /// The first subnet not in `taken`.
    pub fn first_free(&self, taken: &BTreeSet<String>) -> Option<String> {
        (0..self.len())
            .map(|i| self.subnet(i))
            .find(|s| !taken.contains(s))
    }
}

struct Ipam {
    ctx: Arc<Context>,
    plan: CidrPlan,
    /// One allocation at a time, so two new nodes never get the same range.
    lock: tokio::sync::Mutex<()>,
}

/// Runs the controller until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    plan: CidrPlan,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let nodes = Api::<Node>::all(ctx.client.clone());
    let ipam = Arc::new(Ipam {
        ctx: ctx.clone(),
        plan,
        lock: tokio::sync::Mutex::new(()),
    });
    let controller = Controller::new(nodes, watch_config());
    super::run(
        "nodeipam",
        controller,
        move |node, _ctx| reconcile(node, ipam.clone()),
        ctx,
        shutdown,
    )
    .await;
}

async fn reconcile(node: Arc<Node>, ipam: Arc<Ipam>) -> Result<Action> {
    let has_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty());
    if has_cidr || node.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let _guard = ipam.lock.lock().await;
    let api = Api::<Node>::all(ipam.ctx.client.clone());
    let taken: BTreeSet<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .collect();
    let cidr = ipam.plan.first_free(&taken).ok_or_else(|| {
        Error::Object(format!(
            "no pod CIDR left for node {}: all {} ranges are taken",
            node.name_any(),
            ipam.plan.len()
        ))
    })?;
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})),
    )
    .await?;
    tracing::info!(node = %node.name_any(), %cidr, "assigned pod CIDR");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_node_subnets() {
        let plan = CidrPlan::new("10.42.0.0/16", 24).unwrap();
        assert_eq!(plan.len(), 256);
        assert_eq!(plan.subnet(0), "10.42.0.0/24");
        assert_eq!(plan.subnet(255), "10.42.255.0/24");
        let taken: BTreeSet<String> = ["10.42.0.0/24".to_string(), "10.42.2.0/24".to_string()]
            .into_iter()
            .collect();
        assert_eq!(plan.first_free(&taken).as_deref(), Some("10.42.1.0/24"));
        let small = CidrPlan::new("10.42.7.9/23", 24).unwrap();
        assert_eq!(small.subnet(1), "10.42.7.0/24");
        assert_eq!(small.subnet(0), "10.42.6.0/24");
        let all: BTreeSet<String> = (0..2).map(|i| small.subnet(i)).collect();
        assert_eq!(small.first_free(&all), None);
    }

    #[test]
    fn refuses_bad_plans() {
        assert!(CidrPlan::new("10.42.0.0", 24).is_err());
        assert!(CidrPlan::new("10.42.0.0/25", 24).is_err());
        assert!(CidrPlan::new("10.42.0.x/16", 24).is_err());
        assert!(CidrPlan::new("10.42.0.0/16", 31).is_err());
    }
}
