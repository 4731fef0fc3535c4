//! The service load balancer, the k3s servicelb way: a `LoadBalancer` Service is answered
//! on every node's address by the service proxy, so its `status.loadBalancer.ingress`
//! lists the Ready nodes' InternalIPs (what `kubectl get svc` shows as EXTERNAL-IP).
//! Services with a `loadBalancerClass` belong to another implementation and are left alone.
//!
//! Driven by watch events, not a poll: a Node change that changes its readiness or
//! address (not its heartbeats) reconciles every Service, with the nodes read from the
//! controller's own reflector.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{watch_config, Context, Error, Result};
use crate::watch_filter;

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let services = Api::<Service>::all(ctx.client.clone());
    let controller = Controller::new(services, watch_config());
    let (nodes, writer) = reflector::store();
    let node_events = watch_filter::relevant(
        reflector::reflector(
            writer,
            watcher(Api::<Node>::all(ctx.client.clone()), watch_config()),
        ),
        address,
    )
    .touched_objects();
    let services = controller.store();
    let controller =
        controller.watches_stream(node_events, super::reconcile_all::<_, Node>(services));
    let reconcile = move |svc, ctx| reconcile(svc, ctx, nodes.clone());
    super::run("servicelb", controller, reconcile, ctx, shutdown).await;
}

/// The InternalIP of a node that may serve load balancer traffic: Ready and not being
/// deleted.
fn serving_ip(n: &Node) -> Option<&str> {
    if n.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = n.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status
        .addresses
        .iter()
        .flatten()
        .find(|a| a.type_ == "InternalIP")?;
    ready.then_some(ip.address.as_str())
}

/// Fingerprint of what this controller reads of a Node (heartbeats do not count).
fn address(n: &Node) -> u64 {
    watch_filter::fingerprint(&serving_ip(n))
}

/// The InternalIPs of the Ready nodes, sorted.
pub fn ingress_ips<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut ips: Vec<String> = nodes
        .into_iter()
        .filter_map(serving_ip)
        .map(str::to_string)
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>, nodes: Store<Node>) -> Result<Action> {
    let spec = svc.spec.clone().unwrap_or_default();
    if spec.type_.as_deref() != Some("LoadBalancer")
        || spec.load_balancer_class.is_some()
        || svc.metadata.deletion_timestamp.is_some()
    {
        return Ok(Action::await_change());
    }
    nodes
        .wait_until_ready()
        .await
        .map_err(|e| Error::Object(format!("node cache: {e}")))?;
    let wanted = ingress_ips(nodes.state().iter().map(Arc::as_ref));
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
    Ok(Action::await_change())
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
        assert_eq!(
            address(&node("a", "192.0.2.1", "True")),
            address(&node("b", "192.0.2.1", "True"))
        );
        assert_ne!(
            address(&node("a", "192.0.2.1", "True")),
            address(&node("a", "192.0.2.1", "False"))
        );
    }

    /// The ingress IPs of Service `default/lb` once they equal `want` (or a failure).
    async fn ingress_becomes(services: &Api<Service>, want: &[&str]) {
        let t = std::time::Instant::now();
        loop {
            let svc = services.get("lb").await.expect("get service");
            let ips: Vec<String> = svc
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip)
                .collect();
            if ips == want {
                return;
            }
            // Well under the old 10 s recheck: a node change must be seen at once.
            assert!(
                t.elapsed() < std::time::Duration::from_secs(3),
                "ingress {ips:?}, want {want:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_changes_reach_the_ingress_without_polling() {
        use kube::api::PostParams;
        let api = crate::controllers::client::TestApi::start().await;
        let client = api.client("system:kube-controller-manager");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ctx = Arc::new(Context {
            client: client.clone(),
        });
        let controller = tokio::spawn(run(ctx, async {
            let _ = stop_rx.await;
        }));
        let nodes: Api<Node> = Api::all(client.clone());
        let pp = PatchParams::default();
        let set_status = |name: &'static str, ip: &'static str, ready: &'static str| {
            let nodes = nodes.clone();
            let pp = pp.clone();
            async move {
                let n = node(name, ip, ready);
                nodes
                    .patch_status(name, &pp, &Patch::Merge(json!({"status": n.status})))
                    .await
                    .expect("node status");
            }
        };
        for name in ["a", "b"] {
            let n: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            nodes
                .create(&PostParams::default(), &n)
                .await
                .expect("node");
        }
        set_status("a", "192.0.2.1", "True").await;
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "lb"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
        }))
        .unwrap();
        services
            .create(&PostParams::default(), &svc)
            .await
            .expect("service");
        ingress_becomes(&services, &["192.0.2.1"]).await;
        // Let the first reconcile go by, so only watch events can bring the next ones.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        set_status("b", "192.0.2.2", "True").await;
        ingress_becomes(&services, &["192.0.2.1", "192.0.2.2"]).await;
        set_status("a", "192.0.2.1", "Unknown").await;
        ingress_becomes(&services, &["192.0.2.2"]).await;
        nodes
            .delete("b", &Default::default())
            .await
            .expect("delete node");
        ingress_becomes(&services, &[]).await;

        let _ = stop_tx.send(());
        let _ = controller.await;
        api.shutdown().await;
    }
}
