//! The container runtime's health as the node reports it, as kubelet's runtimeState: a
//! runtime that stops answering is reported down only after [`DOWN_AFTER`] without a good
//! answer, so a containerd restart does not flap the node's Ready condition.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pikube_runtime::cri::{v1 as cri, Cri};
use tokio::time::Instant;

/// How long the runtime may go unanswered before the node says it is down (kubelet's
/// maxWaitForContainerRuntime).
pub const DOWN_AFTER: Duration = Duration::from_secs(30);

/// How long one question to the runtime may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the runtime last said.
#[derive(Default)]
struct Last {
    /// When its status last answered.
    ok_at: Option<Instant>,
    /// The problem that answer reported (None: ready).
    problem: Option<String>,
    /// `<name>://<version>` from the last version answer.
    version: String,
}

/// The runtime's last good answers, shared by whatever posts the node status.
#[derive(Clone, Default)]
pub struct RuntimeState(Arc<Mutex<Last>>);

/// What the node reports about its runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `<name>://<version>` (empty until the runtime has answered once).
    pub version: String,
    /// None when ready, else the Ready condition's message.
    pub problem: Option<String>,
}

impl RuntimeState {
    /// Asks the runtime for its version and status and folds in the answers; a runtime
    /// that does not answer within [`CALL_TIMEOUT`] has not answered.
    pub async fn check(&self, cri: &Cri) -> Report {
        let version = tokio::time::timeout(
            CALL_TIMEOUT,
            cri.runtime().version(cri::VersionRequest {
                version: "v1".into(),
            }),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|v| {
            let v = v.into_inner();
            format!("{}://{}", v.runtime_name, v.runtime_version)
        });
        let status = match tokio::time::timeout(
            CALL_TIMEOUT,
            cri.runtime().status(cri::StatusRequest { verbose: false }),
        )
        .await
        {
            Ok(Ok(s)) => Ok(problems(&s.into_inner().status.unwrap_or_default())),
            Ok(Err(e)) => Err(e.message().to_string()),
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        self.record(Instant::now(), version, status)
    }

    /// Folds one round of answers (`status`: the problem, or why the call failed) in.
    fn record(
        &self,
        now: Instant,
        version: Option<String>,
        status: Result<Option<String>, String>,
    ) -> Report {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(v) = version {
            last.version = v;
        }
        let problem = match status {
            Ok(problem) => {
                last.ok_at = Some(now);
                last.problem = problem.clone();
                problem
            }
            Err(_) if last.ok_at.is_some_and(|t| now - t < DOWN_AFTER) => last.problem.clone(),
            Err(e) => Some(format!("container runtime is down: {e}")),
        };
        Report {
            version: last.version.clone(),
            problem,
        }
    }
}

/// The runtime's own conditions that are not met, as kubelet words them.
fn problems(status: &cri::RuntimeStatus) -> Option<String> {
    let mut problems = Vec::new();
    for kind in ["RuntimeReady", "NetworkReady"] {
        match status.conditions.iter().find(|c| c.r#type == kind) {
            Some(c) if c.status => {}
            Some(c) => problems.push(format!(
                "container runtime {} not ready: {kind}=false reason:{} message:{}",
                if kind == "NetworkReady" {
                    "network"
                } else {
                    "status"
                },
                c.reason,
                c.message
            )),
            None => problems.push(format!("container runtime did not report {kind}")),
        }
    }
    (!problems.is_empty()).then(|| problems.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_outage_keeps_the_last_report_and_a_long_one_says_down() {
        let state = RuntimeState::default();
        let t0 = Instant::now();
        // Never answered: down at once, as kubelet before its first runtime sync.
        let first = state.record(t0, None, Err("connection refused".into()));
        assert_eq!(
            first.problem.as_deref(),
            Some("container runtime is down: connection refused")
        );
        assert_eq!(first.version, "");
        let ok = state.record(t0, Some("containerd://1.6".into()), Ok(None));
        assert_eq!(
            ok,
            Report {
                version: "containerd://1.6".into(),
                problem: None
            }
        );
        // A restart: unanswered for less than DOWN_AFTER, still ready, version kept.
        let blip = state.record(t0 + Duration::from_secs(20), None, Err("refused".into()));
        assert_eq!(blip, ok);
        let down = state.record(t0 + DOWN_AFTER, None, Err("refused".into()));
        assert_eq!(
            down.problem.as_deref(),
            Some("container runtime is down: refused")
        );
        assert_eq!(down.version, "containerd://1.6");
        // A network problem answered by the runtime is reported at once, and kept
        // through a blip.
        let net = Some("container runtime network not ready: x".to_string());
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(state.record(t1, None, Ok(net.clone())).problem, net);
        let later = t1 + Duration::from_secs(5);
        assert_eq!(state.record(later, None, Err("x".into())).problem, net);
    }

    #[test]
    fn unmet_runtime_conditions_are_named() {
        let cond = |t: &str, ok: bool| cri::RuntimeCondition {
            r#type: t.into(),
            status: ok,
            reason: "R".into(),
            message: "M".into(),
        };
        let ready = cri::RuntimeStatus {
            conditions: vec![cond("RuntimeReady", true), cond("NetworkReady", true)],
        };
        assert_eq!(problems(&ready), None);
        let no_net = cri::RuntimeStatus {
            conditions: vec![cond("RuntimeReady", true), cond("NetworkReady", false)],
        };
        assert_eq!(
            problems(&no_net).as_deref(),
            Some("container runtime network not ready: NetworkReady=false reason:R message:M")
        );
        let silent = cri::RuntimeStatus { conditions: vec![] };
        assert_eq!(
            problems(&silent).as_deref(),
            Some(
                "container runtime did not report RuntimeReady, \
                 container runtime did not report NetworkReady"
            )
        );
    }
}
