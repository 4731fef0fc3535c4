//! A pod's status from what the runtime shows: container states with reasons and exit
//! codes, restart counts, phase and conditions, by kubelet's rules, so `kubectl get pods`
//! and `kubectl describe pod` read as on Kubernetes.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use pikube_runtime::cri::v1 as cri;

/// A waiting reason the agent holds for a container (image pull errors, config errors,
/// back-off), shown instead of what the runtime has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    /// Kubernetes reason (`ErrImagePull`, `CrashLoopBackOff`, …).
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// What the runtime and the agent know about one container of the pod.
#[derive(Clone, Debug, Default)]
pub struct ContainerFacts {
    /// The newest attempt in the runtime.
    pub latest: Option<cri::ContainerStatus>,
    /// The attempt before it, if the runtime still has it.
    pub previous: Option<cri::ContainerStatus>,
    /// A reason the agent holds (takes the place of a created/exited state).
    pub waiting: Option<Waiting>,
    /// Readiness (probe result; true without a readiness probe once running).
    pub ready: bool,
    /// Startup probe passed (true without one once running).
    pub started: bool,
}

/// Everything a pod's status is computed from.
pub struct Facts<'a> {
    /// The pod as last seen from the API.
    pub pod: &'a Pod,
    /// Per container name.
    pub containers: &'a HashMap<String, ContainerFacts>,
    /// The pod's IP, once its sandbox has one.
    pub pod_ip: Option<String>,
    /// The node's IP.
    pub host_ip: String,
    /// Whether the sandbox is up.
    pub sandbox_ready: bool,
    /// When the agent first started on the pod.
    pub start_time: Timestamp,
    /// Now.
    pub now: Timestamp,
}

fn time(ns: i64) -> Option<Time> {
    (ns > 0)
        .then(|| Timestamp::from_nanosecond(ns as i128).ok())
        .flatten()
        .map(Time)
}

/// The `terminated` state of a finished container.
pub fn terminated(s: &cri::ContainerStatus) -> ContainerStateTerminated {
    let reason = if !s.reason.is_empty() {
        s.reason.clone()
    } else if s.exit_code == 0 {
        "Completed".into()
    } else {
        "Error".into()
    };
    ContainerStateTerminated {
        exit_code: s.exit_code,
        reason: Some(reason),
        message: (!s.message.is_empty()).then(|| s.message.clone()),
        started_at: time(s.started_at),
        finished_at: time(s.finished_at),
        container_id: Some(format!("containerd://{}", s.id)),
        signal: None,
    }
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message,
        }),
        ..Default::default()
    }
}

fn is_exited(s: &cri::ContainerStatus) -> bool {
    s.state == cri::ContainerState::ContainerExited as i32
}

/// The status of one container; `blocked` names the reason it has not been created yet
/// (`PodInitializing` behind init containers, `ContainerCreating` otherwise).
pub fn container_status(c: &Container, f: &ContainerFacts, blocked: &str) -> ContainerStatus {
    let latest = f.latest.as_ref();
    let restart_count = latest
        .map(|s| s.metadata.as_ref().map_or(0, |m| m.attempt))
        .unwrap_or(0);
    let previous = f
        .previous
        .as_ref()
        .filter(|p| is_exited(p))
        .map(|p| ContainerState {
            terminated: Some(terminated(p)),
            ..Default::default()
        });
    let (state, last_state) = match (latest, &f.waiting) {
        (Some(s), Some(w)) if is_exited(s) => (
            waiting(&w.reason, Some(w.message.clone())),
            Some(ContainerState {
                terminated: Some(terminated(s)),
                ..Default::default()
            }),
        ),
        (None, Some(w)) => (waiting(&w.reason, Some(w.message.clone())), previous),
        (Some(s), _) if s.state == cri::ContainerState::ContainerRunning as i32 => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: time(s.started_at),
                }),
                ..Default::default()
            },
            previous,
        ),
        (Some(s), _) if is_exited(s) => (
            ContainerState {
                terminated: Some(terminated(s)),
                ..Default::default()
            },
            previous,
        ),
        (Some(s), _) if s.state == cri::ContainerState::ContainerCreated as i32 => {
            (waiting("ContainerCreating", None), previous)
        }
        (Some(_), _) => (waiting("ContainerStatusUnknown", None), previous),
        (None, None) => (waiting(blocked, None), previous),
    };
    let running = state.running.is_some();
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|s| s.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|s| format!("containerd://{}", s.id)),
        ready: running && f.ready,
        started: Some(running && f.started),
        restart_count: restart_count as i32,
        state: Some(state),
        last_state: Some(last_state.unwrap_or_default()),
        ..Default::default()
    }
}

fn has_failed_before(s: &ContainerStatus) -> Option<bool> {
    s.last_state
        .as_ref()
        .and_then(|l| l.terminated.as_ref())
        .map(|t| t.exit_code != 0)
}

/// The pod phase by kubelet's rules (`getPhase`).
pub fn phase(pod: &Pod, init: &[ContainerStatus], main: &[ContainerStatus]) -> &'static str {
    let policy = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    let mut pending_init = 0;
    let mut failed_init = 0;
    for s in init {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            pending_init += 1;
        } else if let Some(t) = &st.terminated {
            if t.exit_code != 0 {
                failed_init += 1;
            }
        } else if st.waiting.is_some() {
            match has_failed_before(s) {
                Some(true) => failed_init += 1,
                Some(false) => {}
                None => pending_init += 1,
            }
        } else {
            pending_init += 1;
        }
    }
    if failed_init > 0 && policy == "Never" {
        return "Failed";
    }
    if pending_init > 0 || failed_init > 0 {
        return "Pending";
    }
    let (mut running, mut waiting_n, mut stopped, mut succeeded, mut unknown) = (0, 0, 0, 0, 0);
    for s in main {
        let st = s.state.clone().unwrap_or_default();
        if st.running.is_some() {
            running += 1;
        } else if let Some(t) = &st.terminated {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if st.waiting.is_some() {
            if has_failed_before(s).is_some() {
                stopped += 1;
            } else {
                waiting_n += 1;
            }
        } else {
            unknown += 1;
        }
    }
    if waiting_n > 0 {
        "Pending"
    } else if running > 0 && unknown == 0 {
        "Running"
    } else if running == 0 && stopped > 0 && unknown == 0 {
        match policy {
            "Always" => "Running",
            _ if stopped == succeeded => "Succeeded",
            "Never" => "Failed",
            _ => "Running",
        }
    } else {
        "Pending"
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) -> PodCondition {
    PodCondition {
        type_: kind.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: (!ok).then(|| reason.map(String::from)).flatten(),
        message: (!ok).then_some(message).flatten(),
        ..Default::default()
    }
}

/// The pod's QoS class from its containers' cpu and memory requests and limits (the
/// API server's computation, on the typed spec).
pub fn qos_class(spec: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    crate::api::defaults::qos_class(serde_json::to_value(spec).ok().as_ref())
}

/// Whether a container finished with exit code 0.
fn succeeded(s: &ContainerStatus) -> bool {
    s.state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// The pod's whole status; conditions keep their transition times from `pod.status`
/// while they do not change.
pub fn pod_status(f: &Facts<'_>) -> PodStatus {
    let spec = f.pod.spec.clone().unwrap_or_default();
    let empty = ContainerFacts::default();
    let facts = |name: &str| f.containers.get(name).unwrap_or(&empty);
    let init: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container_status(c, facts(&c.name), "PodInitializing"))
        .collect();
    let initialized = init.iter().all(succeeded);
    let blocked = if initialized {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let main: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| container_status(c, facts(&c.name), blocked))
        .collect();
    let phase = phase(f.pod, &init, &main);
    let not_ready: Vec<&str> = main
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.as_str())
        .collect();
    let unfinished_init: Vec<&str> = init
        .iter()
        .filter(|s| !succeeded(s))
        .map(|s| s.name.as_str())
        .collect();
    let completed = phase == "Succeeded" || phase == "Failed";
    let ready_reason = if completed {
        "PodCompleted"
    } else {
        "ContainersNotReady"
    };
    let ready_message =
        (!completed).then(|| format!("containers with unready status: [{}]", not_ready.join(" ")));
    let init_message = format!(
        "containers with incomplete status: [{}]",
        unfinished_init.join(" ")
    );
    let ready = not_ready.is_empty() && !completed;
    let mut conditions = vec![
        condition("PodReadyToStartContainers", f.sandbox_ready, None, None),
        condition(
            "Initialized",
            initialized,
            Some("ContainersNotInitialized"),
            Some(init_message),
        ),
        condition("Ready", ready, Some(ready_reason), ready_message.clone()),
        condition("ContainersReady", ready, Some(ready_reason), ready_message),
        condition("PodScheduled", true, None, None),
    ];
    let old = f
        .pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(f.now);
    for c in &mut conditions {
        c.last_transition_time = match old.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
    }
    let old_status = f.pod.status.clone().unwrap_or_default();
    PodStatus {
        phase: Some(phase.to_string()),
        conditions: Some(conditions),
        host_ip: Some(f.host_ip.clone()),
        host_ips: Some(vec![HostIP {
            ip: f.host_ip.clone(),
        }]),
        pod_ip: f.pod_ip.clone(),
        pod_ips: f.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
        start_time: old_status.start_time.or(Some(Time(f.start_time))),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(main),
        // Set by the API server when the pod was created (it never changes); computed
        // here only for a pod that came without it.
        qos_class: old_status
            .qos_class
            .clone()
            .or_else(|| Some(qos_class(&spec).to_string())),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cri_status(attempt: u32, state: cri::ContainerState, exit: i32) -> cri::ContainerStatus {
        cri::ContainerStatus {
            id: format!("c{attempt}"),
            metadata: Some(cri::ContainerMetadata {
                name: "main".into(),
                attempt,
            }),
            state: state as i32,
            started_at: 1_700_000_000_000_000_000,
            finished_at: if state == cri::ContainerState::ContainerExited {
                1_700_000_001_000_000_000
            } else {
                0
            },
            exit_code: exit,
            ..Default::default()
        }
    }

    fn pod(policy: &str, init: bool) -> Pod {
        let mut spec =
            json!({"restartPolicy": policy, "containers": [{"name": "main", "image": "img"}]});
        if init {
            spec["initContainers"] = json!([{"name": "setup", "image": "img"}]);
        }
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "d", "uid": "u"}, "spec": spec}),
        )
        .unwrap()
    }

    fn status(pod: &Pod, containers: HashMap<String, ContainerFacts>) -> PodStatus {
        pod_status(&Facts {
            pod,
            containers: &containers,
            pod_ip: Some("10.42.0.5".into()),
            host_ip: "192.0.2.1".into(),
            sandbox_ready: true,
            start_time: Timestamp::UNIX_EPOCH,
            now: Timestamp::UNIX_EPOCH,
        })
    }

    fn one(f: ContainerFacts) -> HashMap<String, ContainerFacts> {
        [("main".to_string(), f)].into_iter().collect()
    }

    fn cond<'a>(s: &'a PodStatus, kind: &str) -> &'a PodCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == kind)
            .unwrap()
    }

    #[test]
    fn running_and_ready() {
        let p = pod("Always", false);
        let s = status(
            &p,
            one(ContainerFacts {
                latest: Some(cri_status(0, cri::ContainerState::ContainerRunning, 0)),
                ready: true,
                started: true,
                ..Default::default()
            }),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready").status, "True");
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready);
        assert_eq!(cs.container_id.as_deref(), Some("containerd://c0"));
        assert_eq!(s.pod_ip.as_deref(), Some("10.42.0.5"));
    }

    #[test]
    fn crash_loop_shows_back_off_and_last_state() {
        let p = pod("Always", false);
        let s = status(
            &p,
            one(ContainerFacts {
                latest: Some(cri_status(3, cri::ContainerState::ContainerExited, 2)),
                waiting: Some(Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: "back-off 40s restarting failed container".into(),
                }),
                ..Default::default()
            }),
        );
        let cs = &s.container_statuses.as_ref().unwrap()[0];
        assert_eq!(cs.restart_count, 3);
        let w = cs.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("CrashLoopBackOff"));
        let t = cs.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (2, Some("Error")));
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(
            cond(&s, "Ready").reason.as_deref(),
            Some("ContainersNotReady")
        );
    }

    #[test]
    fn finished_pods_by_restart_policy() {
        let exited = |code| {
            one(ContainerFacts {
                latest: Some(cri_status(0, cri::ContainerState::ContainerExited, code)),
                ..Default::default()
            })
        };
        assert_eq!(
            status(&pod("Never", false), exited(0)).phase.as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            status(&pod("Never", false), exited(1)).phase.as_deref(),
            Some("Failed")
        );
        assert_eq!(
            status(&pod("OnFailure", false), exited(0)).phase.as_deref(),
            Some("Succeeded")
        );
        assert_eq!(
            status(&pod("OnFailure", false), exited(1)).phase.as_deref(),
            Some("Running")
        );
        let done = status(&pod("Never", false), exited(0));
        assert_eq!(cond(&done, "Ready").reason.as_deref(), Some("PodCompleted"));
    }

    #[test]
    fn init_containers_gate_the_pod() {
        let p = pod("Always", true);
        let s = status(&p, HashMap::new());
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&s, "Initialized").status, "False");
        let main = &s.container_statuses.as_ref().unwrap()[0];
        let w = main.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(w.reason.as_deref(), Some("PodInitializing"));
        let mut facts = HashMap::new();
        facts.insert(
            "setup".to_string(),
            ContainerFacts {
                latest: Some(cri_status(0, cri::ContainerState::ContainerExited, 1)),
                ..Default::default()
            },
        );
        let failed = status(&pod("Never", true), facts);
        assert_eq!(failed.phase.as_deref(), Some("Failed"));
    }

    #[test]
    fn qos_classes() {
        let spec = |c: serde_json::Value| -> k8s_openapi::api::core::v1::PodSpec {
            serde_json::from_value(json!({"containers": [c]})).unwrap()
        };
        assert_eq!(qos_class(&spec(json!({"name": "a"}))), "BestEffort");
        assert_eq!(
            qos_class(&spec(
                json!({"name": "a", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}})
            )),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&spec(
                json!({"name": "a", "resources": {"requests": {"cpu": "100m"}}})
            )),
            "Burstable"
        );
    }

    #[test]
    fn image_errors_keep_the_pod_pending() {
        let p = pod("Always", false);
        let s = status(
            &p,
            one(ContainerFacts {
                waiting: Some(Waiting {
                    reason: "ErrImagePull".into(),
                    message: "pull failed".into(),
                }),
                ..Default::default()
            }),
        );
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let w = s.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .waiting
            .clone()
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImagePull"));
    }
}
