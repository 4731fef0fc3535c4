//! Liveness, readiness and startup probes (exec, tcpSocket, httpGet over HTTP or HTTPS,
//! gRPC health) with their timings and thresholds, one task per probe of each running
//! container; lifecycle hooks (postStart, preStop) use the same handlers. A changed
//! result wakes the pod's worker; failures and warnings become the pod's Events
//! (`Unhealthy`, `ProbeWarning`) as kubelet's prober writes them.

pub mod grpc;
pub mod http;
#[cfg(test)]
#[path = "../../tests/support/probe_servers.rs"]
mod test_servers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ExecAction, HTTPGetAction, LifecycleHandler, Pod, Probe,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::runtime::reflector::ObjectRef;
use pikube_runtime::cri::{v1 as cri, Cri};

use super::pods::container_field;
use crate::events::{Kind as EventKind, Recorder};

#[derive(Default)]
struct State {
    /// None: no readiness probe.
    ready: Option<bool>,
    /// None: no startup probe.
    started: Option<bool>,
    liveness_failed: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Probe workers of the node's running containers, by container id.
#[derive(Clone)]
pub struct Probes {
    cri: Cri,
    states: Arc<Mutex<HashMap<String, State>>>,
    notify: tokio::sync::mpsc::Sender<ObjectRef<Pod>>,
    events: Recorder,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// How one probe action is carried out.
enum Action {
    Exec(ExecAction),
    Tcp(String, u16),
    Http(http::Probe),
    Grpc {
        host: String,
        port: u16,
        service: String,
    },
}

impl Kind {
    /// The probe's name in kubelet's event messages.
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Readiness => "Readiness",
            Kind::Liveness => "Liveness",
        }
    }
}

fn port_of(c: &Container, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn action_of(
    c: &Container,
    pod_ip: &str,
    exec: Option<&ExecAction>,
    tcp: Option<(&Option<String>, &IntOrString)>,
    http: Option<&HTTPGetAction>,
) -> Result<Action, String> {
    if let Some(e) = exec {
        return Ok(Action::Exec(e.clone()));
    }
    if let Some((host, port)) = tcp {
        let port = port_of(c, port).ok_or("the probe names an unknown port")?;
        let host = host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        return Ok(Action::Tcp(host, port));
    }
    if let Some(h) = http {
        let port = port_of(c, &h.port).ok_or("the probe names an unknown port")?;
        let host = h
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| pod_ip.to_string());
        return Ok(Action::Http(http::Probe::new(h, host, port)));
    }
    Err("the probe has no handler this node supports (exec, tcpSocket, httpGet, grpc)".into())
}

fn probe_action(c: &Container, p: &Probe, pod_ip: &str) -> Result<Action, String> {
    if let Some(g) = &p.grpc {
        return Ok(Action::Grpc {
            host: pod_ip.to_string(),
            port: u16::try_from(g.port).map_err(|_| "the probe names an invalid port")?,
            service: g.service.clone().unwrap_or_default(),
        });
    }
    action_of(
        c,
        pod_ip,
        p.exec.as_ref(),
        p.tcp_socket.as_ref().map(|t| (&t.host, &t.port)),
        p.http_get.as_ref(),
    )
}

impl Probes {
    /// Probe workers that report changes for pods on `notify`.
    /// Failures and warnings are recorded through `events`.
    pub fn new(
        cri: Cri,
        notify: tokio::sync::mpsc::Sender<ObjectRef<Pod>>,
        events: Recorder,
    ) -> Probes {
        Probes {
            cri,
            states: Arc::new(Mutex::new(HashMap::new())),
            notify,
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Carries out `action` once; Ok(Some(warning)) is a success to warn about.
    async fn act(
        &self,
        action: &Action,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        match action {
            Action::Exec(e) => {
                let r = self
                    .cri
                    .runtime()
                    .exec_sync(cri::ExecSyncRequest {
                        container_id: id.to_string(),
                        cmd: e.command.clone().unwrap_or_default(),
                        timeout: timeout.as_secs().max(1) as i64,
                    })
                    .await
                    .map_err(|s| s.message().to_string())?
                    .into_inner();
                if r.exit_code == 0 {
                    Ok(None)
                } else {
                    Err(format!("command exited with {}", r.exit_code))
                }
            }
            Action::Tcp(host, port) => tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((host.as_str(), *port)),
            )
            .await
            .map_err(|_| "timeout".to_string())?
            .map(|_| None)
            .map_err(|e| e.to_string()),
            Action::Http(probe) => match probe.run(timeout).await? {
                http::Outcome::Success => Ok(None),
                http::Outcome::Warning(w) => Ok(Some(w)),
            },
            Action::Grpc {
                host,
                port,
                service,
            } => grpc::check(host, *port, service, timeout)
                .await
                .map(|()| None),
        }
    }

    /// Runs a lifecycle hook (exec or httpGet) against container `id`.
    pub async fn run_hook(
        &self,
        hook: &LifecycleHandler,
        id: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        if let Some(sleep) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(timeout)).await;
            return Ok(());
        }
        let c = Container::default();
        let action = action_of(
            &c,
            "127.0.0.1",
            hook.exec.as_ref(),
            hook.tcp_socket.as_ref().map(|t| (&t.host, &t.port)),
            hook.http_get.as_ref(),
        )?;
        self.act(&action, id, timeout).await.map(|_| ())
    }

    /// Starts the probe workers of a running container (once per container id).
    pub fn start(&self, pod: &Pod, c: &Container, id: &str, pod_ip: &str) {
        let mut states = self.lock();
        if states.contains_key(id) {
            return;
        }
        let mut state = State {
            ready: c.readiness_probe.as_ref().map(|_| false),
            started: c.startup_probe.as_ref().map(|_| false),
            ..Default::default()
        };
        let pod = Arc::new(pod.clone());
        for (kind, probe) in [
            (Kind::Startup, &c.startup_probe),
            (Kind::Readiness, &c.readiness_probe),
            (Kind::Liveness, &c.liveness_probe),
        ] {
            let Some(probe) = probe.clone() else { continue };
            let this = self.clone();
            let (c, id, ip, pod) = (c.clone(), id.to_string(), pod_ip.to_string(), pod.clone());
            state.tasks.push(tokio::spawn(async move {
                this.probe_loop(kind, probe, c, id, ip, pod).await;
            }));
        }
        states.insert(id.to_string(), state);
    }

    async fn probe_loop(
        &self,
        kind: Kind,
        p: Probe,
        c: Container,
        id: String,
        ip: String,
        pod: Arc<Pod>,
    ) {
        let pod_ref = ObjectRef::from_obj(pod.as_ref());
        let field = container_field(&pod, &c.name);
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let success_threshold = p.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = p.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep(Duration::from_secs(
            p.initial_delay_seconds.unwrap_or(0).max(0) as u64,
        ))
        .await;
        let action = probe_action(&c, &p, &ip);
        let (mut successes, mut failures) = (0, 0);
        loop {
            let gated = kind != Kind::Startup
                && self
                    .lock()
                    .get(&id)
                    .is_some_and(|s| s.started == Some(false));
            if !gated {
                let result = match &action {
                    Ok(a) => self.act(a, &id, timeout).await,
                    Err(e) => Err(e.clone()),
                };
                // Every failed or warned attempt is an Event (they aggregate by count).
                let note = match &result {
                    Ok(None) => None,
                    Ok(Some(w)) => Some(("ProbeWarning", "warning", w)),
                    Err(e) => Some(("Unhealthy", "failed", e)),
                };
                if let Some((reason, what, detail)) = note {
                    self.events.record(
                        pod.as_ref(),
                        Some(&field),
                        EventKind::Warning,
                        reason,
                        &format!("{} probe {what}: {detail}", kind.name()),
                    );
                }
                if result.is_ok() {
                    successes += 1;
                    failures = 0;
                } else {
                    failures += 1;
                    successes = 0;
                }
                let verdict = if successes >= success_threshold {
                    Some(true)
                } else if failures >= failure_threshold {
                    Some(false)
                } else {
                    None
                };
                if let Some(ok) = verdict {
                    if let Err(e) = &result {
                        tracing::info!(pod = %pod_ref, container = %c.name, probe = ?kind, error = %e, "probe failed");
                    }
                    if self.record(kind, &id, ok) {
                        let _ = self.notify.try_send(pod_ref.clone());
                    }
                    if kind == Kind::Startup && ok {
                        return;
                    }
                    if kind == Kind::Liveness && !ok {
                        return;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    /// Stores a probe verdict; returns whether it changed anything.
    fn record(&self, kind: Kind, id: &str, ok: bool) -> bool {
        let mut states = self.lock();
        let Some(s) = states.get_mut(id) else {
            return false;
        };
        let slot = match kind {
            Kind::Startup => &mut s.started,
            Kind::Readiness => &mut s.ready,
            Kind::Liveness => {
                let changed = s.liveness_failed == ok;
                s.liveness_failed = !ok;
                return changed;
            }
        };
        let changed = *slot != Some(ok);
        *slot = Some(ok);
        changed
    }

    /// (ready, started) of a running container; a container without probe workers yet
    /// (just adopted) counts as not ready only if it has a readiness or startup probe.
    pub fn results(&self, id: &str, c: &Container) -> (bool, bool) {
        let states = self.lock();
        match states.get(id) {
            Some(s) => {
                let started = s.started.unwrap_or(true);
                (started && s.ready.unwrap_or(true), started)
            }
            None => {
                let started = c.startup_probe.is_none();
                (started && c.readiness_probe.is_none(), started)
            }
        }
    }

    /// Whether the liveness probe of container `id` has failed.
    pub fn liveness_failed(&self, id: &str) -> bool {
        self.lock().get(id).is_some_and(|s| s.liveness_failed)
    }

    /// Stops the probe workers of container `id`.
    pub fn stop(&self, id: &str) {
        if let Some(s) = self.lock().remove(id) {
            for t in s.tasks {
                t.abort();
            }
        }
    }
}
