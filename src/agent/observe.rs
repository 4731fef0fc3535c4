//! What the runtime holds of a pod: its sandboxes and containers (through CRI), and the
//! per-container facts its status is computed from.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use pikube_runtime::cri::{v1 as cri, Cri};

use super::pods::Worker;
use super::sandbox::LABEL_POD_UID;
use super::status::ContainerFacts;
use super::Error;

/// What the runtime holds of one pod.
#[derive(Default)]
pub(super) struct Observed {
    /// The newest ready sandbox: id and IP.
    pub(super) sandbox: Option<(String, String)>,
    /// Every sandbox of the pod (id, attempt, ready).
    pub(super) sandboxes: Vec<(String, u32, bool)>,
    /// Every container of the pod, newest attempt first per name.
    pub(super) containers: BTreeMap<String, Vec<cri::Container>>,
}

impl Observed {
    pub(super) fn latest(&self, name: &str) -> Option<&cri::Container> {
        self.containers.get(name).and_then(|v| v.first())
    }
}

pub(super) fn attempt(c: &cri::Container) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

pub(super) fn is_running(c: &cri::Container) -> bool {
    c.state == cri::ContainerState::ContainerRunning as i32
}

/// The sandboxes whose label `key` is `value` (a pod's uid, a node's name).
pub(super) async fn sandboxes_labelled(
    cri: &Cri,
    key: &str,
    value: &str,
) -> Result<Vec<cri::PodSandbox>, tonic::Status> {
    let filter = cri::PodSandboxFilter {
        label_selector: [(key.to_string(), value.to_string())].into_iter().collect(),
        ..Default::default()
    };
    let request = cri::ListPodSandboxRequest {
        filter: Some(filter),
    };
    Ok(cri
        .runtime()
        .list_pod_sandbox(request)
        .await?
        .into_inner()
        .items)
}

/// The containers whose label `key` is `value`.
pub(super) async fn containers_labelled(
    cri: &Cri,
    key: &str,
    value: &str,
) -> Result<Vec<cri::Container>, tonic::Status> {
    let filter = cri::ContainerFilter {
        label_selector: [(key.to_string(), value.to_string())].into_iter().collect(),
        ..Default::default()
    };
    let request = cri::ListContainersRequest {
        filter: Some(filter),
    };
    Ok(cri
        .runtime()
        .list_containers(request)
        .await?
        .into_inner()
        .containers)
}

impl Worker {
    pub(super) async fn observe(&self, uid: &str) -> Result<Observed, Error> {
        let sandboxes = sandboxes_labelled(&self.cri, LABEL_POD_UID, uid).await?;
        let mut obs = Observed::default();
        let mut newest: Option<(i64, String)> = None;
        for s in &sandboxes {
            let ready = s.state == cri::PodSandboxState::SandboxReady as i32;
            obs.sandboxes.push((
                s.id.clone(),
                s.metadata.as_ref().map_or(0, |m| m.attempt),
                ready,
            ));
            if ready && newest.as_ref().is_none_or(|(t, _)| s.created_at > *t) {
                newest = Some((s.created_at, s.id.clone()));
            }
        }
        if let Some((_, id)) = newest {
            let ip = self.sandbox_ip(&id).await?;
            obs.sandbox = Some((id, ip));
        }
        let containers = containers_labelled(&self.cri, LABEL_POD_UID, uid).await?;
        for c in containers {
            let name = c
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            obs.containers.entry(name).or_default().push(c);
        }
        for list in obs.containers.values_mut() {
            list.sort_by_key(|c| std::cmp::Reverse(attempt(c)));
        }
        Ok(obs)
    }

    /// The IP CNI gave sandbox `id` (empty for host-network sandboxes).
    pub(super) async fn sandbox_ip(&self, id: &str) -> Result<String, Error> {
        Ok(self
            .cri
            .runtime()
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.to_string(),
                verbose: false,
            })
            .await?
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default())
    }

    pub(super) async fn container_status(&self, id: &str) -> Option<cri::ContainerStatus> {
        self.cri
            .runtime()
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .ok()?
            .into_inner()
            .status
    }

    /// Facts per container name: the two newest attempts with full status, probe results
    /// and the waiting reason the agent holds.
    pub(super) async fn facts(&self, pod: &Pod, obs: &Observed) -> HashMap<String, ContainerFacts> {
        let uid = pod.uid().unwrap_or_default();
        let mut out = HashMap::new();
        let spec = pod.spec.clone().unwrap_or_default();
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
        {
            let list = obs.containers.get(&c.name);
            let latest = match list.and_then(|l| l.first()) {
                Some(x) => self.container_status(&x.id).await,
                None => None,
            };
            let previous = match list.and_then(|l| l.get(1)) {
                Some(x) => self.container_status(&x.id).await,
                None => None,
            };
            let running_id = latest
                .as_ref()
                .filter(|s| s.state == cri::ContainerState::ContainerRunning as i32)
                .map(|s| s.id.clone());
            let (ready, started) = match &running_id {
                Some(id) => self.probes.results(id, c),
                None => (false, false),
            };
            let waiting = self.held(&uid, &c.name);
            out.insert(
                c.name.clone(),
                ContainerFacts {
                    latest,
                    previous,
                    waiting,
                    ready,
                    started,
                },
            );
        }
        out
    }

    pub(super) async fn exit_code(&self, c: &cri::Container) -> Option<i32> {
        self.container_status(&c.id).await.map(|s| s.exit_code)
    }
}
