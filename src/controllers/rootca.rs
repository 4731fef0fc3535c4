//! The root CA publisher (kube-controller-manager's root-ca-cert-publisher): every active
//! namespace has a `kube-root-ca.crt` ConfigMap holding the cluster CA as `ca.crt`, which
//! pods' service-account volumes project; recreated if deleted, repaired if edited.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use super::{per_namespace, terminating, Context, Result};
use crate::api::pod_admission::ROOT_CA_CONFIG_MAP;

/// Runs the publisher of `ca_pem` until `shutdown`.
pub async fn run(
    client: Client,
    ca_pem: String,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let children =
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIG_MAP}"));
    let controller = per_namespace::<ConfigMap>(&client, children);
    let ca = Arc::new(ca_pem);
    let reconcile = move |ns: Arc<Namespace>, ctx: Arc<Context>| {
        let ca = ca.clone();
        async move { reconcile(ns, ctx, &ca).await }
    };
    super::run(
        "root-ca-publisher",
        controller,
        reconcile,
        Arc::new(Context { client }),
        shutdown,
    )
    .await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>, ca: &str) -> Result<Action> {
    if terminating(&ns) {
        return Ok(Action::await_change());
    }
    let api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns.name_any());
    let data = BTreeMap::from([("ca.crt".to_string(), ca.to_string())]);
    let written = match api.get_opt(ROOT_CA_CONFIG_MAP).await? {
        Some(cm) if cm.data.as_ref() == Some(&data) => return Ok(Action::await_change()),
        Some(mut cm) => {
            cm.data = Some(data);
            cm.binary_data = None;
            api.replace(ROOT_CA_CONFIG_MAP, &PostParams::default(), &cm)
                .await
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIG_MAP.into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(data),
                ..Default::default()
            };
            api.create(&PostParams::default(), &cm).await
        }
    };
    match written {
        Ok(_) => tracing::debug!(namespace = %ns.name_any(), "published the root CA"),
        // Raced with the namespace going away, or another writer: the next pass sees it.
        Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404 | 409) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
