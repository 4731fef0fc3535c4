//! The pod worker: turns each pod bound to this node into a CRI sandbox and containers
//! (init containers in order, then the rest), restarts them by `restartPolicy` with
//! back-off, stops them gracefully when the pod is deleted, and writes the pod's status.
//! One kube-runtime `Controller` over the node's pods; runtime changes reach it from the
//! relister in `pleg.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use pikube_runtime::cri::{v1 as cri, Cri};

use super::backoff::Backoff;
use super::env::{self, EnvContext};
use super::images::{self, Pull};
use super::probes::Probes;
use super::sandbox::{self, NodeNetwork, LABEL_NODE, LABEL_POD_UID};
use super::status::{self, ContainerFacts, Facts, Waiting};
use super::volumes;
use super::{container, Error};

/// How often every pod is looked at even when nothing signals a change.
const RESYNC: Duration = Duration::from_secs(10);
/// A container that ran this long has its crash back-off forgotten.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// What the pod worker needs; shared by every reconcile.
pub struct Worker {
    /// API client.
    pub client: Client,
    /// CRI client.
    pub cri: Cri,
    /// Node facts for sandboxes.
    pub net: NodeNetwork,
    /// The node's IP (status.hostIP).
    pub host_ip: String,
    /// Root of the pods' volume directories.
    pub pods_dir: PathBuf,
    /// What the node offers (for resource env values and downward API files).
    pub allocatable: Allocatable,
    /// Probe workers of running containers.
    pub probes: Probes,
    state: std::sync::Mutex<State>,
}

struct State {
    crash: Backoff,
    pulls: Backoff,
    waiting: HashMap<String, Waiting>,
    started: HashMap<String, Timestamp>,
}

fn key(uid: &str, container: &str) -> String {
    format!("{uid}/{container}")
}

/// Where and with what a pod's containers start: its sandbox, IP, runtime state,
/// prepared volumes and managed hosts file.
#[derive(Clone, Copy)]
struct Launch<'a> {
    pod: &'a Pod,
    sandbox_id: &'a str,
    pod_ip: &'a str,
    obs: &'a Observed,
    volumes: &'a BTreeMap<String, PathBuf>,
    hosts: Option<&'a std::path::Path>,
}

/// Node allocatable CPU and memory.
#[derive(Clone, Copy, Debug)]
pub struct Allocatable {
    /// CPU in millicores.
    pub cpu_millis: i64,
    /// Memory in bytes.
    pub memory: i64,
}

/// What the runtime holds of one pod.
#[derive(Default)]
struct Observed {
    /// The newest ready sandbox: id and IP.
    sandbox: Option<(String, String)>,
    /// Every sandbox of the pod (id, attempt, ready).
    sandboxes: Vec<(String, u32, bool)>,
    /// Every container of the pod, newest attempt first per name.
    containers: BTreeMap<String, Vec<cri::Container>>,
}

impl Observed {
    fn latest(&self, name: &str) -> Option<&cri::Container> {
        self.containers.get(name).and_then(|v| v.first())
    }
}

fn attempt(c: &cri::Container) -> u32 {
    c.metadata.as_ref().map_or(0, |m| m.attempt)
}

fn is_running(c: &cri::Container) -> bool {
    c.state == cri::ContainerState::ContainerRunning as i32
}

/// Wall-clock nanoseconds → the matching `Instant` (for back-off bookkeeping).
fn instant_of(ns: i64) -> Instant {
    let now_ns = Timestamp::now().as_nanosecond();
    let ago = (now_ns - ns as i128).clamp(0, u64::MAX as i128) as u64;
    Instant::now()
        .checked_sub(Duration::from_nanos(ago))
        .unwrap_or_else(Instant::now)
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

impl Worker {
    /// A worker with empty back-off and waiting state.
    pub fn new(
        client: Client,
        cri: Cri,
        net: NodeNetwork,
        host_ip: String,
        pods_dir: PathBuf,
        allocatable: Allocatable,
        probes: Probes,
    ) -> Worker {
        Worker {
            client,
            cri,
            net,
            host_ip,
            pods_dir,
            allocatable,
            probes,
            state: std::sync::Mutex::new(State {
                crash: Backoff::new(Duration::from_secs(10), Duration::from_secs(300)),
                pulls: Backoff::new(Duration::from_secs(10), Duration::from_secs(300)),
                waiting: HashMap::new(),
                started: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn observe(&self, uid: &str) -> Result<Observed, Error> {
        let labels: HashMap<String, String> = [(LABEL_POD_UID.to_string(), uid.to_string())]
            .into_iter()
            .collect();
        let sandboxes = self
            .cri
            .runtime()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: labels.clone(),
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .items;
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
        let containers = self
            .cri
            .runtime()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    label_selector: labels,
                    ..Default::default()
                }),
            })
            .await?
            .into_inner()
            .containers;
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

    /// The pod's IP: its sandbox's, or the node's for host-network pods.
    fn pod_ip(&self, pod: &Pod, sandbox_ip: &str) -> String {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            self.host_ip.clone()
        } else {
            sandbox_ip.to_string()
        }
    }

    /// The IP CNI gave sandbox `id` (empty for host-network sandboxes).
    async fn sandbox_ip(&self, id: &str) -> Result<String, Error> {
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

    async fn container_status(&self, id: &str) -> Option<cri::ContainerStatus> {
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
    async fn facts(&self, pod: &Pod, obs: &Observed) -> HashMap<String, ContainerFacts> {
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
            let waiting = self.state().waiting.get(&key(&uid, &c.name)).cloned();
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

    async fn run_sandbox(&self, pod: &Pod, obs: &Observed) -> Result<(String, String), Error> {
        // Old sandboxes (a pod whose sandbox died) are stopped first.
        for (id, _, _) in &obs.sandboxes {
            let _ = self
                .cri
                .runtime()
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
        }
        let attempt = obs.sandboxes.iter().map(|s| s.1 + 1).max().unwrap_or(0);
        let config = sandbox::config(&self.net, pod, attempt);
        std::fs::create_dir_all(&config.log_directory)?;
        let id = self
            .cri
            .runtime()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let ip = self.sandbox_ip(&id).await?;
        tracing::info!(pod = %ObjectRef::from_obj(pod), sandbox = %id, %ip, "sandbox started");
        Ok((id, ip))
    }

    /// Prepares every volume of the pod; name → host dir.
    async fn volumes(
        &self,
        pod: &Pod,
        pod_ip: &str,
    ) -> Result<BTreeMap<String, PathBuf>, env::ConfigError> {
        let ctx = EnvContext {
            client: &self.client,
            host_ip: &self.host_ip,
            pod_ip,
            node_cpu_millis: self.allocatable.cpu_millis,
            node_memory: self.allocatable.memory,
        };
        let dir = volumes::pod_dir(&self.pods_dir, &pod.uid().unwrap_or_default());
        let mut out = BTreeMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let path = volumes::prepare(&ctx, pod, &dir, v).await.map_err(|e| {
                env::ConfigError(format!(
                    "MountVolume.SetUp failed for volume {:?}: {e}",
                    v.name
                ))
            })?;
            out.insert(v.name.clone(), path);
        }
        Ok(out)
    }

    fn hold(&self, uid: &str, name: &str, w: Option<Waiting>) {
        let mut st = self.state();
        match w {
            Some(w) => {
                st.waiting.insert(key(uid, name), w);
            }
            None => {
                st.waiting.remove(&key(uid, name));
            }
        }
    }

    /// Restarts an exited container unless its back-off holds it; returns the wait.
    async fn restart(
        &self,
        at: &Launch<'_>,
        c: &Container,
        last: &cri::Container,
    ) -> Result<Option<Duration>, Error> {
        match self.restart_allowed(at.pod, &c.name, last).await {
            Some(wait) => Ok(Some(wait)),
            None => self.start(at, c).await.map(|()| None),
        }
    }

    /// Creates and starts the next attempt of `c`; problems become its waiting reason.
    async fn start(&self, at: &Launch<'_>, c: &Container) -> Result<(), Error> {
        let Launch {
            pod,
            sandbox_id,
            pod_ip,
            obs,
            volumes,
            hosts,
        } = *at;
        let uid = pod.uid().unwrap_or_default();
        let k = key(&uid, &c.name);
        let backing_off = self
            .state()
            .pulls
            .remaining(&k, Instant::now(), Instant::now())
            .is_some();
        match images::ensure(&self.cri, &self.client, pod, c, backing_off).await {
            Pull::Ready => {}
            Pull::Wait(w) => {
                self.hold(&uid, &c.name, Some(w));
                return Ok(());
            }
            Pull::Failed(w) => {
                tracing::warn!(pod = %ObjectRef::from_obj(pod), container = %c.name, error = %w.message, "image pull failed");
                let now = Instant::now();
                self.state().pulls.next(&k, now, now);
                self.hold(&uid, &c.name, Some(w));
                return Ok(());
            }
        }
        self.state().pulls.reset(&k);
        let ectx = EnvContext {
            client: &self.client,
            host_ip: &self.host_ip,
            pod_ip,
            node_cpu_millis: self.allocatable.cpu_millis,
            node_memory: self.allocatable.memory,
        };
        let config_error = |message: String| Waiting {
            reason: "CreateContainerConfigError".into(),
            message,
        };
        let envs = match env::resolve(&ectx, pod, c).await {
            Ok(e) => e,
            Err(e) => {
                self.hold(&uid, &c.name, Some(config_error(e.0)));
                return Ok(());
            }
        };
        let hosts = hosts.filter(|_| pod.spec.as_ref().and_then(|s| s.host_network) != Some(true));
        let mounts = match volumes::mounts(c, pod, volumes, hosts) {
            Ok(m) => m,
            Err(e) => {
                self.hold(&uid, &c.name, Some(config_error(e.0)));
                return Ok(());
            }
        };
        let next = obs.latest(&c.name).map_or(0, |x| attempt(x) + 1);
        let config = container::config(container::Parts {
            pod,
            container: c,
            attempt: next,
            env: &envs,
            mounts,
            node: &self.net.node_name,
        });
        let sandbox_config = sandbox::config(&self.net, pod, 0);
        let created = self
            .cri
            .runtime()
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sandbox_id.to_string(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await;
        let id = match created {
            Ok(r) => r.into_inner().container_id,
            Err(status) => {
                self.hold(
                    &uid,
                    &c.name,
                    Some(Waiting {
                        reason: "CreateContainerError".into(),
                        message: status.message().to_string(),
                    }),
                );
                return Ok(());
            }
        };
        if let Err(status) = self
            .cri
            .runtime()
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
        {
            tracing::warn!(pod = %ObjectRef::from_obj(pod), container = %c.name, error = %status.message(), "container did not start");
            self.hold(
                &uid,
                &c.name,
                Some(Waiting {
                    reason: "RunContainerError".into(),
                    message: status.message().to_string(),
                }),
            );
        } else {
            self.hold(&uid, &c.name, None);
            tracing::info!(pod = %ObjectRef::from_obj(pod), container = %c.name, attempt = next, "container started");
            if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                if let Err(e) = self
                    .probes
                    .run_hook(hook, &id, Duration::from_secs(30))
                    .await
                {
                    tracing::info!(pod = %ObjectRef::from_obj(pod), container = %c.name, error = %e, "postStart hook failed; stopping the container");
                    let _ = self
                        .cri
                        .runtime()
                        .stop_container(cri::StopContainerRequest {
                            container_id: id.clone(),
                            timeout: grace_seconds(pod),
                        })
                        .await;
                }
            }
            self.probes.start(pod, c, &id, pod_ip);
        }
        // Keep the newest two attempts (for `kubectl logs --previous`).
        for old in obs.containers.get(&c.name).into_iter().flatten().skip(1) {
            let _ = self
                .cri
                .runtime()
                .remove_container(cri::RemoveContainerRequest {
                    container_id: old.id.clone(),
                })
                .await;
        }
        Ok(())
    }

    /// Whether an exited container may start again now; otherwise holds CrashLoopBackOff
    /// and returns the wait.
    async fn restart_allowed(
        &self,
        pod: &Pod,
        name: &str,
        last: &cri::Container,
    ) -> Option<Duration> {
        let uid = pod.uid().unwrap_or_default();
        let k = key(&uid, name);
        let st = self.container_status(&last.id).await?;
        let finished = instant_of(st.finished_at);
        let ran = Duration::from_nanos((st.finished_at - st.started_at).max(0) as u64);
        let now = Instant::now();
        let mut state = self.state();
        if ran >= BACKOFF_RESET_AFTER {
            state.crash.reset(&k);
        }
        match state.crash.remaining(&k, finished, now) {
            Some(wait) => {
                let delay = state.crash.delay(&k).unwrap_or_default();
                state.waiting.insert(
                    k,
                    Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message: format!(
                            "back-off {} restarting failed container={name} pod={}_{}({uid})",
                            humanize(delay),
                            pod.name_any(),
                            pod.namespace().unwrap_or_default()
                        ),
                    },
                );
                Some(wait)
            }
            None => {
                state.crash.next(&k, finished, now);
                None
            }
        }
    }

    async fn exit_code(&self, c: &cri::Container) -> Option<i32> {
        self.container_status(&c.id).await.map(|s| s.exit_code)
    }

    /// Brings the runtime in line with a live pod; returns when to look again.
    async fn sync(&self, pod: &Pod) -> Result<Duration, Error> {
        let uid = pod.uid().unwrap_or_default();
        let policy = restart_policy(pod).to_string();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut obs = self.observe(&uid).await?;
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        let mut requeue = RESYNC;
        if phase == "Succeeded" || phase == "Failed" {
            self.stop_all(pod, &obs, 0).await;
            return Ok(RESYNC);
        }
        self.state()
            .started
            .entry(uid.clone())
            .or_insert_with(Timestamp::now);
        let (sandbox_id, pod_ip) = match obs.sandbox.clone() {
            Some(s) => s,
            None => {
                let ran_before = !obs.containers.is_empty();
                if ran_before && policy == "Never" {
                    // A finished pod whose sandbox is gone stays finished.
                    self.write_status(pod, &obs, false).await?;
                    return Ok(RESYNC);
                }
                let s = self.run_sandbox(pod, &obs).await?;
                obs = self.observe(&uid).await?;
                s
            }
        };
        let pod_ip = self.pod_ip(pod, &pod_ip);
        let volumes = match self.volumes(pod, &pod_ip).await {
            Ok(v) => v,
            Err(e) => {
                for c in spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(spec.containers.iter())
                {
                    if obs.latest(&c.name).is_none() {
                        self.hold(
                            &uid,
                            &c.name,
                            Some(Waiting {
                                reason: "ContainerCreating".into(),
                                message: e.0.clone(),
                            }),
                        );
                    }
                }
                self.write_status(pod, &obs, true).await?;
                return Ok(Duration::from_secs(2));
            }
        };
        let hosts = volumes::pod_dir(&self.pods_dir, &uid).join("etc-hosts");
        let hosts_text = volumes::etc_hosts(pod, &pod_ip, &self.net.cluster_domain);
        if std::fs::read_to_string(&hosts).ok().as_deref() != Some(hosts_text.as_str()) {
            if let Some(parent) = hosts.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&hosts, hosts_text)?;
        }

        let at = Launch {
            pod,
            sandbox_id: &sandbox_id,
            pod_ip: &pod_ip,
            obs: &obs,
            volumes: &volumes,
            hosts: Some(&hosts),
        };
        let mut initialized = true;
        for c in spec.init_containers.iter().flatten() {
            let latest = obs
                .latest(&c.name)
                .filter(|x| x.pod_sandbox_id == sandbox_id);
            match latest {
                Some(x) if is_running(x) => {
                    initialized = false;
                    break;
                }
                Some(x) if x.state == cri::ContainerState::ContainerExited as i32 => {
                    if self.exit_code(x).await == Some(0) {
                        continue;
                    }
                    initialized = false;
                    if policy != "Never" {
                        if let Some(wait) = self.restart(&at, c, x).await? {
                            requeue = requeue.min(wait);
                        }
                    }
                    break;
                }
                _ => {
                    initialized = false;
                    self.start(&at, c).await?;
                    requeue = requeue.min(Duration::from_secs(2));
                    break;
                }
            }
        }
        if initialized {
            for c in &spec.containers {
                let latest = obs.latest(&c.name);
                let in_sandbox = latest.filter(|x| x.pod_sandbox_id == sandbox_id);
                match in_sandbox {
                    Some(x) if is_running(x) => {
                        self.probes.start(pod, c, &x.id, &pod_ip);
                        if self.probes.liveness_failed(&x.id) {
                            tracing::info!(pod = %ObjectRef::from_obj(pod), container = %c.name, "liveness probe failed; restarting");
                            self.stop_container(pod, c, x, grace_seconds(pod)).await;
                            requeue = Duration::from_millis(200);
                        }
                    }
                    Some(x) if x.state == cri::ContainerState::ContainerCreated as i32 => {}
                    Some(x) => {
                        let code = self.exit_code(x).await.unwrap_or(-1);
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => code != 0,
                            _ => true,
                        };
                        if restart {
                            if let Some(wait) = self.restart(&at, c, x).await? {
                                requeue = requeue.min(wait);
                            }
                        }
                    }
                    None => {
                        // First start, or the sandbox was replaced.
                        let finished_never = latest.is_some() && policy == "Never";
                        if !finished_never {
                            self.start(&at, c).await?;
                            requeue = requeue.min(Duration::from_secs(2));
                        }
                    }
                }
            }
        }
        let obs = self.observe(&uid).await?;
        self.write_status(pod, &obs, true).await?;
        let held = {
            let st = self.state();
            spec.containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .any(|c| st.waiting.contains_key(&key(&uid, &c.name)))
        };
        if held {
            requeue = requeue.min(Duration::from_secs(2));
        }
        Ok(requeue.max(Duration::from_millis(100)))
    }

    async fn write_status(
        &self,
        pod: &Pod,
        obs: &Observed,
        sandbox_ready: bool,
    ) -> Result<(), Error> {
        let facts = self.facts(pod, obs).await;
        let uid = pod.uid().unwrap_or_default();
        let start_time = self
            .state()
            .started
            .get(&uid)
            .copied()
            .unwrap_or_else(Timestamp::now);
        let new = status::pod_status(&Facts {
            pod,
            containers: &facts,
            pod_ip: obs
                .sandbox
                .as_ref()
                .map(|(_, ip)| self.pod_ip(pod, ip))
                .filter(|ip| !ip.is_empty()),
            host_ip: self.host_ip.clone(),
            sandbox_ready: sandbox_ready && obs.sandbox.is_some(),
            start_time,
            now: Timestamp::now(),
        });
        let new_json = serde_json::to_value(&new)?;
        let old_json = serde_json::to_value(pod.status.clone().unwrap_or_default())?;
        if merged_equal(&old_json, &new_json) {
            return Ok(());
        }
        let api = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": new_json })),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn stop_container(&self, pod: &Pod, c: &Container, x: &cri::Container, grace: i64) {
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
    async fn stop_all(&self, pod: &Pod, obs: &Observed, grace: i64) {
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
                stops.push(async move { self.stop_container(pod, &c, x, grace).await });
            }
        }
        futures::future::join_all(stops).await;
        for (id, _, ready) in &obs.sandboxes {
            if *ready {
                let _ = self
                    .cri
                    .runtime()
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
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
                let rt = self.cri.runtime();
                let _ = rt
                    .clone()
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await;
                let _ = rt
                    .clone()
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
        let mut st = self.state();
        st.crash.reset_prefix(&format!("{uid}/"));
        st.pulls.reset_prefix(&format!("{uid}/"));
        st.waiting.retain(|k, _| !k.starts_with(&format!("{uid}/")));
        st.started.remove(uid);
    }

    /// A pod being deleted: stop it within its grace period, clean up, and let the API
    /// server remove it.
    async fn terminate(&self, pod: &Pod) -> Result<(), Error> {
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

fn grace_seconds(pod: &Pod) -> i64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
}

/// "10s", "1m20s", "5m0s" as Go prints durations in kubelet's messages.
fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else {
        format!("{}m{}s", s / 60, s % 60)
    }
}

/// Whether applying `new` as a merge patch onto `old` changes nothing.
fn merged_equal(old: &serde_json::Value, new: &serde_json::Value) -> bool {
    match (old, new) {
        (serde_json::Value::Object(o), serde_json::Value::Object(n)) => n
            .iter()
            .all(|(k, v)| o.get(k).is_some_and(|ov| merged_equal(ov, v)) || v.is_null()),
        _ => old == new,
    }
}

async fn reconcile(pod: Arc<Pod>, worker: Arc<Worker>) -> Result<Action, Error> {
    if pod.metadata.deletion_timestamp.is_some() {
        worker.terminate(&pod).await?;
        return Ok(Action::await_change());
    }
    let next = worker.sync(&pod).await?;
    Ok(Action::requeue(next))
}

/// Runs the pod worker for this node's pods until `shutdown`; `changes` names pods whose
/// runtime state changed (from the relister) so they are looked at at once.
pub async fn run(
    worker: Arc<Worker>,
    changes: impl futures::Stream<Item = ObjectRef<Pod>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let pods = Api::<Pod>::all(worker.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", worker.net.node_name));
    let controller = Controller::new(pods, config).reconcile_on(changes);
    let store = controller.store();
    let housekeeping = housekeeping(worker.clone(), store);
    let w = worker.clone();
    let run = controller
        .graceful_shutdown_on(shutdown)
        .run(
            move |pod, _| reconcile(pod, w.clone()),
            |pod, err: &Error, _| {
                tracing::warn!(pod = %ObjectRef::from_obj(pod.as_ref()), error = %err, "pod sync failed; retrying");
                Action::requeue(Duration::from_secs(2))
            },
            Arc::new(()),
        )
        .for_each(|_| async {});
    tokio::select! {
        _ = run => {}
        _ = housekeeping => {}
    }
    tracing::info!("pod worker stopped");
}

/// Every few seconds: sandboxes of this node whose pod no longer exists (deleted while
/// the agent was down, or force-deleted) are removed with everything they hold.
async fn housekeeping(worker: Arc<Worker>, store: kube::runtime::reflector::Store<Pod>) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let live: std::collections::HashSet<String> =
            store.state().iter().filter_map(|p| p.uid()).collect();
        let listed = worker
            .cri
            .runtime()
            .list_pod_sandbox(cri::ListPodSandboxRequest {
                filter: Some(cri::PodSandboxFilter {
                    label_selector: [(LABEL_NODE.to_string(), worker.net.node_name.clone())]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
            })
            .await;
        let Ok(listed) = listed else { continue };
        let mut gone = HashMap::new();
        for s in listed.into_inner().items {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_equality_ignores_fields_the_patch_leaves_alone() {
        let old = json!({"phase": "Running", "qosClass": "BestEffort", "conditions": [{"type": "Ready"}]});
        assert!(merged_equal(
            &old,
            &json!({"phase": "Running", "conditions": [{"type": "Ready"}]})
        ));
        assert!(!merged_equal(&old, &json!({"phase": "Pending"})));
        assert!(!merged_equal(&old, &json!({"conditions": []})));
        assert!(merged_equal(&old, &json!({"podIP": null})));
    }

    #[test]
    fn durations_print_like_go() {
        assert_eq!(humanize(Duration::from_secs(10)), "10s");
        assert_eq!(humanize(Duration::from_secs(80)), "1m20s");
        assert_eq!(humanize(Duration::from_secs(300)), "5m0s");
    }
}
