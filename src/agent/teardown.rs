//! Stopping pods: graceful termination (preStop, SIGTERM, SIGKILL after the grace
//! period), removal of everything the node holds for a pod, and the housekeeping pass
//! that removes pods which no longer exist.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use pikube_runtime::cri::v1 as cri;

use super::observe::{is_running, sandboxes_labelled, Observed};
use super::pods::Worker;
use super::sandbox::{self, LABEL_NODE, LABEL_POD_UID};
use super::{volumes, Error};

impl Worker {
    /// Stops sandbox `id` (idempotent in CRI; failures are left to the next pass).
    pub(super) async fn stop_sandbox(&self, id: &str) {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        if let Err(e) = self.cri.runtime().stop_pod_sandbox(request).await {
            tracing::debug!(sandbox = %id, error = %e.message(), "cannot stop sandbox");
        }
    }

    pub(super) async fn stop_container(
        &self,
        pod: &Pod,
        c: &Container,
        x: &cri::Container,
        grace: i64,
    ) {
        let started = Instant::now();
        if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
            let timeout = Duration::from_secs(grace.max(1) as u64);
            if let Err(e) = self.probes.run_hook(hook, &x.id, timeout).await {
                tracing::info!(pod = %ObjectRef::from_obj(pod), container = %c.name, error = %e, "preStop hook failed");
            }
        }
        let left = (grace - started.elapsed().as_secs() as i64).max(0);
        self.probes.stop(&x.id);
        let _ = self
            .cri
            .runtime()
            .stop_container(cri::StopContainerRequest {
                container_id: x.id.clone(),
                timeout: left,
            })
            .await;
    }

    /// Stops every running container of the pod (preStop hooks first, then SIGTERM and
    /// SIGKILL after `grace` seconds), then the sandbox.
    pub(super) async fn stop_all(&self, pod: &Pod, obs: &Observed, grace: i64) {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut stops = Vec::new();
        for (name, list) in &obs.containers {
            let c = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| &c.name == name)
                .cloned()
                .unwrap_or_default();
            for x in list.iter().filter(|x| is_running(x)) {
                let c = c.clone();
                self.events.record(
                    pod,
                    Some(&super::pods::container_field(pod, name)),
                    crate::events::Kind::Normal,
                    "Killing",
                    &format!("Stopping container {name}"),
                );
                stops.push(async move { self.stop_container(pod, &c, x, grace).await });
            }
        }
        futures::future::join_all(stops).await;
        for (id, _, ready) in &obs.sandboxes {
            if *ready {
                self.stop_sandbox(id).await;
            }
        }
    }

    /// Removes everything the node holds for pod `uid`: sandboxes (with their
    /// containers), volumes, logs, cgroup, agent state.
    pub async fn remove(&self, uid: &str, log_dir: Option<PathBuf>) {
        if let Ok(obs) = self.observe(uid).await {
            for list in obs.containers.values() {
                for x in list {
                    self.probes.stop(&x.id);
                }
            }
            for (id, _, _) in &obs.sandboxes {
                self.stop_sandbox(id).await;
                let _ = self
                    .cri
                    .runtime()
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
            }
        }
        volumes::remove_pod_dir(&volumes::pod_dir(&self.pods_dir, uid)).await;
        if let Some(dir) = log_dir {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        let cgroup = format!("{}/pod{uid}", self.net.cgroup_root.trim_end_matches('/'));
        let removed = tokio::task::spawn_blocking(move || pikube_runtime::cgroups::remove(&cgroup));
        if let Ok(Err(e)) = removed.await {
            tracing::debug!(error = %e, "pod cgroup not removed");
        }
        self.forget(uid);
    }

    /// A pod being deleted: stop it within its grace period, clean up, and let the API
    /// server remove it.
    pub(super) async fn terminate(&self, pod: &Pod) -> Result<(), Error> {
        let uid = pod.uid().unwrap_or_default();
        let grace = pod
            .metadata
            .deletion_grace_period_seconds
            .unwrap_or_else(|| grace_seconds(pod));
        let obs = self.observe(&uid).await?;
        self.stop_all(pod, &obs, grace).await;
        let obs = self.observe(&uid).await?;
        self.write_status(pod, &obs, false).await?;
        self.remove(&uid, Some(sandbox::log_dir(&self.net.log_root, pod)))
            .await;
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(pod = %ObjectRef::from_obj(pod), "pod stopped and removed");
        Ok(())
    }
}

pub(super) fn grace_seconds(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// Every few seconds: sandboxes of this node whose pod no longer exists (deleted while
/// the agent was down, or force-deleted) are removed with everything they hold.
pub(super) async fn housekeeping(worker: Arc<Worker>, store: kube::runtime::reflector::Store<Pod>) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|p| p.uid()).collect();
        let listed = sandboxes_labelled(&worker.cri, LABEL_NODE, &worker.net.node_name).await;
        let Ok(listed) = listed else { continue };
        let mut gone = HashMap::new();
        for s in listed {
            if let Some(uid) = s.labels.get(LABEL_POD_UID) {
                if !live.contains(uid) {
                    gone.insert(uid.clone(), s.metadata.clone());
                }
            }
        }
        for (uid, meta) in gone {
            let log_dir = meta.map(|m| {
                worker
                    .net
                    .log_root
                    .join(format!("{}_{}_{}", m.namespace, m.name, m.uid))
            });
            tracing::info!(%uid, "removing the containers of a pod that no longer exists");
            worker.remove(&uid, log_dir).await;
        }
    }
}
