//! The pod lifecycle event generator: containerd 1.6 has no CRI event stream, so the
//! runtime is relisted every second (as kubelet's generic PLEG does) and pods whose
//! sandboxes or containers changed state are handed to the pod worker at once.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use pikube_runtime::cri::Cri;

use super::observe::{containers_labelled, sandboxes_labelled};
use super::sandbox::{LABEL_NODE, LABEL_POD_NAME, LABEL_POD_NAMESPACE, LABEL_POD_UID};

/// Relist period.
const PERIOD: Duration = Duration::from_secs(1);

/// (pod name, namespace, uid) of a sandbox or container, from its labels.
fn pod_of(labels: &HashMap<String, String>) -> Option<(String, String, String)> {
    Some((
        labels.get(LABEL_POD_NAME)?.clone(),
        labels.get(LABEL_POD_NAMESPACE)?.clone(),
        labels.get(LABEL_POD_UID)?.clone(),
    ))
}

/// Per pod uid: the pod and the (id, state) of its sandboxes and containers.
type Snapshot = HashMap<String, (ObjectRef<Pod>, Vec<(String, i32)>)>;

/// One relist: per pod uid, its name and a fingerprint of its runtime state.
async fn relist(cri: &Cri, node: &str) -> Result<Snapshot, tonic::Status> {
    let sandboxes = sandboxes_labelled(cri, LABEL_NODE, node).await?;
    let containers = containers_labelled(cri, LABEL_NODE, node).await?;
    let mut out = Snapshot::new();
    let entries = sandboxes
        .iter()
        .map(|s| (&s.labels, s.id.clone(), s.state))
        .chain(
            containers
                .iter()
                .map(|c| (&c.labels, c.id.clone(), c.state)),
        );
    for (labels, id, state) in entries {
        let Some((name, ns, uid)) = pod_of(labels) else {
            continue;
        };
        out.entry(uid)
            .or_insert_with(|| (ObjectRef::new(&name).within(&ns), Vec::new()))
            .1
            .push((id, state));
    }
    for (_, states) in out.values_mut() {
        states.sort();
    }
    Ok(out)
}

/// Relists until the receiver goes away, sending the pods whose state changed.
pub async fn run(cri: Cri, node: String, changes: tokio::sync::mpsc::Sender<ObjectRef<Pod>>) {
    let mut last: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    loop {
        match relist(&cri, &node).await {
            Ok(now) => {
                for (uid, (pod, states)) in &now {
                    if last.get(uid) != Some(states) && changes.send(pod.clone()).await.is_err() {
                        return;
                    }
                }
                last = now.into_iter().map(|(uid, (_, s))| (uid, s)).collect();
            }
            Err(e) => tracing::debug!(error = %e, "runtime relist failed"),
        }
        tokio::time::sleep(PERIOD).await;
    }
}
