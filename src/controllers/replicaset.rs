//! The ReplicaSet controller: keeps as many active pods as `spec.replicas` asks for,
//! adopting matching orphans, releasing pods whose labels no longer match, and
//! reporting counts in the status that Deployments and `kubectl get rs` read.

use crate::controllers::owner_index::Feed;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{Action, Controller};
use kube::{Api, ResourceExt};

use super::expectations::Expectations;
use super::owner_index::OwnerIndex;
use super::{pods, watch_config, Context, Error, Result};
use crate::events::Recorder;

/// What reconciles share: the pods by owner, from one watch, and the creates and
/// deletes the cache has yet to show.
struct State {
    pods: OwnerIndex<Pod>,
    expectations: Expectations,
}

/// Runs the controller until `shutdown`. Pods come from the shared reflector indexed by
/// owner (`pods`, fed by `pod_events`), so a reconcile lists nothing; expectations keep
/// it from acting on a cache that has not yet seen its own last creates and deletes.
pub async fn run(
    ctx: Arc<Context>,
    pods: OwnerIndex<Pod>,
    pod_events: Feed<Pod>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let rs = Api::<ReplicaSet>::all(ctx.client.clone());
    let controller = Controller::new(rs, watch_config()).owns_stream(pod_events);
    let state = Arc::new(State {
        pods,
        expectations: Expectations::default(),
    });
    let reconcile = move |rs, ctx| reconcile(rs, ctx, state.clone());
    super::run("replicaset", controller, reconcile, ctx, shutdown).await;
}

/// The pods `rs` may claim, from the cache: its own and its namespace's orphans that
/// its selector matches.
fn candidates(state: &State, rs: &ReplicaSet, uid: &str) -> Vec<Arc<Pod>> {
    let ns = rs.metadata.namespace.as_deref();
    let selector = rs.spec.as_ref().map(|s| &s.selector);
    let mut pods = state.pods.children(uid);
    pods.extend(state.pods.all().into_iter().filter(|p| {
        p.metadata.namespace.as_deref() == ns
            && pods::controller_of(&p.metadata).is_none()
            && selector.is_some_and(|s| pods::selector_matches(s, p.metadata.labels.as_ref()))
    }));
    pods
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Context>, state: Arc<State>) -> Result<Action> {
    let ns = rs.namespace().unwrap_or_default();
    let api_pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let api_rs = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
    let spec = rs
        .spec
        .as_ref()
        .ok_or_else(|| Error::Object("replicaset has no spec".into()))?;
    state
        .pods
        .wait_until_ready()
        .await
        .map_err(|e| Error::Object(format!("pod cache: {e}")))?;
    let uid = rs.uid().unwrap_or_default();
    let synced = state
        .expectations
        .satisfied(&uid, &state.pods.children(&uid));
    let owned = super::ownership::claim_among(
        &api_pods,
        rs.as_ref(),
        &spec.selector,
        pods::is_active,
        candidates(&state, &rs, &uid),
    )
    .await?;
    let active: Vec<&Pod> = owned
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| pods::is_active(p))
        .collect();
    let want = spec.replicas.unwrap_or(1).max(0) as usize;
    let events = Recorder::new(ctx.client.clone(), "replicaset-controller", None);
    if rs.metadata.deletion_timestamp.is_some() {
        state.expectations.forget(&uid);
    } else if synced {
        if active.len() < want {
            let owner = pods::controller_ref(rs.as_ref())
                .ok_or_else(|| Error::Object("replicaset has no uid".into()))?;
            let template = spec
                .template
                .as_ref()
                .ok_or_else(|| Error::Object("replicaset has no pod template".into()))?;
            let pod = pods::from_template(template, owner, &rs.name_any());
            let new = vec![pod; want - active.len()];
            let noted = |p: &Pod| {
                state
                    .expectations
                    .created(&uid, &p.uid().unwrap_or_default())
            };
            pods::create_noted(&api_pods, new, rs.as_ref(), &events, noted).await?;
        } else if active.len() > want {
            let mut victims = active.clone();
            victims.sort_by_key(|p| pods::deletion_rank(p));
            for p in victims.iter().take(active.len() - want) {
                pods::delete_recorded(&api_pods, &p.name_any(), rs.as_ref(), &events).await?;
                state
                    .expectations
                    .deleted(&uid, &p.uid().unwrap_or_default());
            }
        }
    }

    let now = Timestamp::now();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(
            active
                .iter()
                .filter(|p| {
                    let l = p.labels();
                    template_labels.iter().all(|(k, v)| l.get(k) == Some(v))
                })
                .count() as i32,
        ),
        ready_replicas: Some(active.iter().filter(|p| pods::is_ready(p)).count() as i32),
        available_replicas: Some(
            active
                .iter()
                .filter(|p| pods::is_available(p, min_ready, now))
                .count() as i32,
        ),
        observed_generation: rs.metadata.generation,
        conditions: None,
        terminating_replicas: None,
    };
    super::write_status(&api_rs, &rs.name_any(), rs.status.as_ref(), &status).await?;
    // Pods that are ready but not yet available become available on their own.
    let pending = active
        .iter()
        .filter(|p| pods::is_ready(p) && !pods::is_available(p, min_ready, now))
        .count();
    Ok(if pending > 0 {
        Action::requeue(Duration::from_secs(1))
    } else if !synced {
        // The cache's events bring it back sooner; this covers expectations that time out.
        Action::requeue(Duration::from_secs(5))
    } else {
        Action::await_change()
    })
}
