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
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use pikube_runtime::cri::{v1 as cri, Cri};

use super::backoff::Backoff;
use super::env::{self, EnvContext};
use super::images::{self, Pull};
use super::observe::{attempt, is_running, Observed};
use super::probes::Probes;
use super::sandbox::{self, NodeNetwork};
use super::status::{self, Facts, Waiting};
use super::teardown::{grace_seconds, housekeeping};
use super::tokens::ProjectedTokens;
use super::volumes;
use super::{container, Error};
use crate::events::{Kind, Recorder};

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
    /// The Events of this node's kubelet.
    pub events: Recorder,
    /// Service-account tokens of the pods' projected volumes.
    pub tokens: ProjectedTokens,
    state: std::sync::Mutex<State>,
}

/// `spec.containers{web}`: the part of a pod an Event of one container is about.
pub fn container_field(pod: &Pod, name: &str) -> String {
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.name == name));
    let list = if init { "initContainers" } else { "containers" };
    format!("spec.{list}{{{name}}}")
}

struct State {
    crash: Backoff,
    pulls: Backoff,
    waiting: HashMap<String, Waiting>,
    started: HashMap<String, Timestamp>,
}

/// The key of a container in the agent's bookkeeping.
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
        let events = Recorder::new(client.clone(), "kubelet", Some(&net.node_name));
        Worker {
            events,
            client,
            cri,
            net,
            host_ip,
            pods_dir,
            allocatable,
            probes,
            tokens: ProjectedTokens::default(),
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

    /// The pod's IP: its sandbox's, or the node's for host-network pods.
    fn pod_ip(&self, pod: &Pod, sandbox_ip: &str) -> String {
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            self.host_ip.clone()
        } else {
            sandbox_ip.to_string()
        }
    }

    async fn run_sandbox(&self, pod: &Pod, obs: &Observed) -> Result<(String, String), Error> {
        // Old sandboxes (a pod whose sandbox died) are stopped first.
        for (id, _, _) in &obs.sandboxes {
            self.stop_sandbox(id).await;
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
            tokens: &self.tokens,
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

    /// The waiting reason the agent holds for container `name` of pod `uid`.
    pub(super) fn held(&self, uid: &str, name: &str) -> Option<Waiting> {
        self.state().waiting.get(&key(uid, name)).cloned()
    }

    /// Forgets the back-off and waiting bookkeeping of pod `uid` (a pod that is gone).
    pub(super) fn forget(&self, uid: &str) {
        self.tokens.forget(uid);
        let prefix = format!("{uid}/");
        let mut st = self.state();
        st.crash.reset_prefix(&prefix);
        st.pulls.reset_prefix(&prefix);
        st.waiting.retain(|k, _| !k.starts_with(&prefix));
        st.started.remove(uid);
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
        let field = container_field(pod, &c.name);
        let event = |kind, reason: &str, message: &str| {
            self.events.record(pod, Some(&field), kind, reason, message)
        };
        let image = c.image.as_deref().unwrap_or("");
        match images::ensure(&self.cri, &self.client, pod, c, backing_off).await {
            Pull::Ready(None) => event(
                Kind::Normal,
                "Pulled",
                &format!("Container image \"{image}\" already present on machine"),
            ),
            Pull::Ready(Some(took)) => event(
                Kind::Normal,
                "Pulled",
                &format!("Successfully pulled image \"{image}\" in {took:.3?}"),
            ),
            Pull::Wait(w) => {
                self.hold(&uid, &c.name, Some(w));
                return Ok(());
            }
            Pull::Failed(w) => {
                tracing::warn!(pod = %ObjectRef::from_obj(pod), container = %c.name, error = %w.message, "image pull failed");
                event(
                    Kind::Warning,
                    "Failed",
                    &format!("Failed to pull image \"{image}\": {}", w.message),
                );
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
            tokens: &self.tokens,
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
            Ok(r) => {
                event(
                    Kind::Normal,
                    "Created",
                    &format!("Created container: {}", c.name),
                );
                r.into_inner().container_id
            }
            Err(status) => {
                event(
                    Kind::Warning,
                    "Failed",
                    &format!("Error: {}", status.message()),
                );
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
            event(
                Kind::Warning,
                "Failed",
                &format!("Error: {}", status.message()),
            );
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
            event(
                Kind::Normal,
                "Started",
                &format!("Started container {}", c.name),
            );
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
                let message = format!(
                    "back-off {} restarting failed container={name} pod={}_{}({uid})",
                    humanize(delay),
                    pod.name_any(),
                    pod.namespace().unwrap_or_default()
                );
                // Once per back-off period, not at every look at the pod.
                if state.waiting.get(&k).map(|w| &w.message) != Some(&message) {
                    self.events.record(
                        pod,
                        Some(&container_field(pod, name)),
                        Kind::Warning,
                        "BackOff",
                        &format!(
                            "Back-off restarting failed container {name} in pod {}_{}({uid})",
                            pod.name_any(),
                            pod.namespace().unwrap_or_default()
                        ),
                    );
                }
                state.waiting.insert(
                    k,
                    Waiting {
                        reason: "CrashLoopBackOff".into(),
                        message,
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
                let first = spec.containers.first().map_or("", |c| c.name.as_str());
                if self.held(&uid, first).is_none_or(|w| w.message != e.0) {
                    self.events
                        .record(pod, None, Kind::Warning, "FailedMount", &e.0);
                }
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
                            let field = container_field(pod, &c.name);
                            self.events.record(
                                pod,
                                Some(&field),
                                Kind::Normal,
                                "Killing",
                                &format!(
                                    "Container {} failed liveness probe, will be restarted",
                                    c.name
                                ),
                            );
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

    pub(super) async fn write_status(
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
