//! The ServiceAccount controller: every active namespace has a `default`
//! ServiceAccount, recreated if someone deletes it.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{per_namespace, terminating, watch_config, Context, Result};

/// Runs the controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let controller = per_namespace::<ServiceAccount>(&ctx.client, watch_config());
    super::run("serviceaccount", controller, reconcile, ctx, shutdown).await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action> {
    if terminating(&ns) {
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
