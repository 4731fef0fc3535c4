//! The service load balancer, the k3s servicelb way: a `LoadBalancer` Service is answered
//! on every node's address by the service proxy, so its `status.loadBalancer.ingress`
//! lists the Ready nodes' InternalIPs (what `kubectl get svc` shows as EXTERNAL-IP).
//! Services with a `loadBalancerClass` belong to another implementation and are left alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{watch_config, Context, Result};

/// How often a LoadBalancer Service's addresses are checked against the nodes.
const RECHECK: Duration = Duration::from_secs(10);

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let services = Api::<Service>::all(ctx.client.clone());
    let controller = Controller::new(services, watch_config());
    super::run("servicelb", controller, reconcile, ctx, shutdown).await;
}

/// The InternalIPs of the Ready nodes, sorted.
pub fn ingress_ips(nodes: &[Node]) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| {
            n.status
                .as_ref()?
                .addresses
                .as_ref()?
                .iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address.clone())
        })
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.load_balancer_class.is_some()
        || svc.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let wanted = ingress_ips(&nodes);
    let current: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default();
    if current != wanted {
        let ingress: Vec<_> = wanted
            .iter()
            .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
            .collect();
        Api::<Service>::namespaced(ctx.client.clone(), &svc.namespace().unwrap_or_default())
            .patch_status(
                &svc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}})),
            )
            .await?;
        tracing::info!(service = %svc.name_any(), ingress = ?wanted, "load balancer addresses");
    }
    Ok(Action::requeue(RECHECK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {
                "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}],
                "conditions": [{"type": "Ready", "status": ready}],
            },
        }))
        .unwrap()
    }

    #[test]
    fn ready_nodes_internal_ips() {
        let nodes = [
            node("b", "192.0.2.2", "True"),
            node("a", "192.0.2.1", "True"),
            node("c", "192.0.2.3", "Unknown"),
        ];
        assert_eq!(ingress_ips(&nodes), vec!["192.0.2.1", "192.0.2.2"]);
        assert!(ingress_ips(&[]).is_empty());
    }
}
