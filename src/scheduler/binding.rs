//! The binding cycle, off the scheduling path as in kube-scheduler: once a node is
//! picked the pod is assumed there (see [`super::cache`]) and this task assigns its
//! WaitForFirstConsumer claims, then creates its `pods/binding`, while the next pod is
//! already being scheduled. Many bindings in flight share the store's group commit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;

use super::cache::NodeCache;
use super::volumes::PodVolumes;
use crate::events::{Kind, Recorder};

/// How many bindings may be in flight at once; the scheduling loop waits for a slot.
pub const MAX_IN_FLIGHT: usize = 128;

/// How long a pod whose binding failed waits before it is scheduled again.
const RETRY: Duration = Duration::from_secs(1);

/// What the binding task needs besides the pod and its node.
#[derive(Clone)]
pub struct Binder {
    /// Client of the API server.
    pub client: Client,
    /// The cache holding the assumption, forgotten when the binding fails.
    pub cache: Arc<Mutex<NodeCache>>,
    /// Queues a pod for scheduling again.
    pub retry: UnboundedSender<ObjectRef<Pod>>,
}

/// One picked placement to carry out.
pub struct Binding {
    /// The pod, assumed on `node`.
    pub pod: Arc<Pod>,
    /// The node's name.
    pub node: String,
    /// The node, for its claims (None: not in the cache, no claims assigned).
    pub target: Option<Arc<Node>>,
    /// The pod's claims.
    pub claims: PodVolumes,
}

/// Locks the cache (a panicked holder leaves it usable: every change is a whole step).
pub fn lock(cache: &Mutex<NodeCache>) -> std::sync::MutexGuard<'_, NodeCache> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

/// The scheduler's Events are those of `default-scheduler`, as kube-scheduler's.
pub fn recorder(client: &Client) -> Recorder {
    Recorder::new(client.clone(), "default-scheduler", None)
}

impl Binder {
    /// Carries out `b`, holding `permit` (a slot of [`MAX_IN_FLIGHT`]) until done.
    pub async fn bind(self, b: Binding, permit: OwnedSemaphorePermit) {
        let name = b.pod.name_any();
        let ns = b.pod.namespace().unwrap_or_default();
        let uid = b.pod.metadata.uid.clone().unwrap_or_default();
        let claims = match &b.target {
            Some(node) => b.claims.assign(&self.client, node).await,
            None => Ok(()),
        };
        let result = match claims {
            Err(e) => Err((e, false)),
            Ok(()) => {
                let binding = json!({
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": name, "uid": b.pod.metadata.uid},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": b.node},
                });
                Api::<Pod>::namespaced(self.client.clone(), &ns)
                    .create_subresource::<_, serde_json::Value>(
                        "binding",
                        &name,
                        &PostParams::default(),
                        &binding,
                    )
                    .await
                    .map(drop)
                    .map_err(|e| (e, true))
            }
        };
        drop(permit);
        match result {
            Ok(()) => {
                recorder(&self.client).record(
                    b.pod.as_ref(),
                    None,
                    Kind::Normal,
                    "Scheduled",
                    &format!("Successfully assigned {ns}/{name} to {}", b.node),
                );
                tracing::debug!(pod = %format!("{ns}/{name}"), node = %b.node, "bound");
            }
            // Deleted, or bound by someone else meanwhile: the pod cache shows which.
            Err((kube::Error::Api(e), true)) if matches!(e.code, 404 | 409) => {
                lock(&self.cache).forget(&uid);
            }
            Err((e, _)) => {
                lock(&self.cache).forget(&uid);
                let why = match &e {
                    kube::Error::Api(s) => s.message.clone(),
                    other => other.to_string(),
                };
                let message = format!("Binding rejected: {why}");
                tracing::debug!(pod = %format!("{ns}/{name}"), %message, "binding failed");
                if let Err(e) = mark(&self.client, &b.pod, "SchedulerError", &message).await {
                    tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "marking failed");
                }
                tokio::time::sleep(RETRY).await;
                let _ = self
                    .retry
                    .unbounded_send(ObjectRef::from_obj(b.pod.as_ref()));
            }
        }
    }
}

/// Records a FailedScheduling Event and sets PodScheduled=False with `reason` and
/// `message` (as kube-scheduler does on a scheduling or binding failure), unless the pod
/// already shows that message. Errors the API server answered are ignored (the pod may
/// be gone); others are returned.
pub async fn mark(
    client: &Client,
    pod: &Pod,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    let current = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .and_then(|c| c.message.as_deref());
    if current == Some(message) {
        return Ok(());
    }
    recorder(client).record(pod, None, Kind::Warning, "FailedScheduling", message);
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": reason,
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": crate::api::objects::now_rfc3339(),
    }]}});
    let api = Api::<Pod>::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    match api
        .patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Strategic(patch),
        )
        .await
    {
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
