//! The ServiceAccount controller: every active namespace has a `default`
//! ServiceAccount, recreated if someone deletes it.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{watch_config, Context, Result};

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let namespaces = Api::<Namespace>::all(ctx.client.clone());
    let accounts = Api::<ServiceAccount>::all(ctx.client.clone());
    let controller = Controller::new(namespaces, watch_config()).watches(
        accounts,
        watch_config(),
        |sa: ServiceAccount| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
    );
    super::run("serviceaccount", controller, reconcile, ctx, shutdown).await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    let terminating = ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Ok(Action::await_change());
    }
    let api = Api::<ServiceAccount>::namespaced(ctx.client.clone(), &ns.name_any());
    if api.get_opt("default").await?.is_none() {
        let sa = ServiceAccount {
            metadata: kube::api::ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => tracing::debug!(namespace = %ns.name_any(), "created default ServiceAccount"),
            // Raced with a namespace being deleted, or another writer: both fine.
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404 | 409) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Action::await_change())
}
