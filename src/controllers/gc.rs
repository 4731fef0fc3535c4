//! The garbage collector: objects whose owners (ownerReferences) are all gone are
//! deleted (background propagation); an owner deleted with `propagationPolicy=Foreground`
//! waits, with its `foregroundDeletion` finalizer, until its dependents are gone; one
//! deleted with `Orphan` has its dependents' references to it removed first.
//!
//! It works on the store through the API registry rather than through a client, because
//! it has to see every kind at once: a scan of all objects after each change (debounced),
//! which is what kube-controller-manager's dependency graph gives it from informers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use pikube_raft::{RangeRequest, WatchRequest};
use serde_json::{json, Value};

use crate::api::objects::meta_str;
use crate::api::resources::Def;
use crate::api::rest::{self, PatchKind, Registry, Target};
use crate::api::status::ApiError;

/// Finalizer of an owner waiting for its dependents (foreground deletion).
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner whose dependents are orphaned before it goes.
pub const ORPHAN: &str = "orphan";

/// How long the collector waits for more changes before it scans.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// The wait before a scan is also at least this many times the last scan's duration, so
/// that scanning a large cluster under a steady stream of changes takes at most about a
/// fifth of a core.
const PACE: u32 = 4;
/// Scan at least this often, to catch anything a lost watch missed.
const RESYNC: Duration = Duration::from_secs(30);

struct Obj {
    def: Def,
    namespace: Option<String>,
    name: String,
    value: Arc<Value>,
    /// Revision of its last write.
    revision: i64,
}

impl Obj {
    fn target(&self) -> Target {
        Target {
            def: self.def.clone(),
            namespace: self.namespace.clone(),
            name: Some(self.name.clone()),
            subresource: None,
        }
    }

    fn uid(&self) -> &str {
        meta_str(&self.value, "uid").unwrap_or("")
    }

    fn owner_refs(&self) -> Vec<Value> {
        self.value
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.value
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|fs| fs.iter().any(|x| x == f))
    }

    fn deleting(&self) -> bool {
        self.value.pointer("/metadata/deletionTimestamp").is_some()
    }
}

/// Runs the collector until `shutdown` fires.
pub async fn run(reg: Registry, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        let from = reg.store.current_revision() + 1;
        let watch = reg
            .store
            .watch(WatchRequest::prefix(b"/registry/".to_vec(), from))
            .await;
        let mut watch = match watch {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector cannot watch the store");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let mut took = timed_sweep(&reg).await;
        loop {
            use futures::StreamExt;
            tokio::select! {
                _ = &mut stop => return,
                ev = tokio::time::timeout(RESYNC, watch.next()) => match ev {
                    Ok(Some(Ok(_))) => {
                        // Let a burst of changes settle, then scan once.
                        tokio::select! {
                            _ = &mut stop => return,
                            _ = tokio::time::sleep(DEBOUNCE.max(took * PACE)) => {}
                        }
                        while let Ok(Some(Ok(_))) =
                            tokio::time::timeout(Duration::ZERO, watch.next()).await
                        {}
                    }
                    Ok(_) => break,
                    Err(_) => {}
                },
            }
            took = timed_sweep(&reg).await;
        }
    }
}

/// One [`sweep`], failures logged; returns how long it took.
async fn timed_sweep(reg: &Registry) -> Duration {
    let start = tokio::time::Instant::now();
    if let Err(e) = sweep(reg).await {
        tracing::warn!(error = %e.message, "garbage collection failed");
    }
    start.elapsed()
}

/// Every object, and a revision R such that every object written at or before R is
/// among them as of R or later. Built-in resources come from the API server's list cache
/// (each consistent at its own revision, all at or after R); custom ones from the store
/// at R.
async fn load(reg: &Registry) -> Result<(Vec<Obj>, i64), ApiError> {
    let rev = reg.store.linearizable_revision().await?;
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    for def in reg.catalog.all().into_iter().filter(|d| !d.is_review()) {
        let prefix = def.storage_prefix();
        if !seen.insert(prefix.clone()) {
            continue;
        }
        let mut push = |value: Arc<Value>, revision: i64| {
            let Some(name) = meta_str(&value, "name").map(String::from) else {
                return;
            };
            all.push(Obj {
                def: def.clone(),
                namespace: meta_str(&value, "namespace").map(String::from),
                name,
                value,
                revision,
            });
        };
        if def.custom.is_none() {
            if let Some(listed) = reg
                .cache
                .list(&def, &prefix, 0, Some(rev), |_| true)
                .await?
            {
                for value in listed.items {
                    let revision = meta_str(&value, "resourceVersion")
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(i64::MAX);
                    push(value, revision);
                }
                continue;
            }
        }
        let r = reg
            .store
            .range(RangeRequest::prefix(prefix.into_bytes()).at_revision(rev))
            .await?;
        for kv in r.kvs {
            let Ok(value) = crate::api::objects::from_stored(&kv.value, kv.mod_revision) else {
                continue;
            };
            push(Arc::new(value), kv.mod_revision);
        }
    }
    Ok((all, rev))
}

/// Merge-patches `obj`, guarded by its resourceVersion; a conflict is left to the next
/// scan.
async fn patch(reg: &Registry, obj: &Obj, body: Value) -> Result<(), ApiError> {
    let raw = serde_json::to_vec(&body).unwrap_or_default();
    match rest::patch(
        reg,
        &obj.target(),
        &obj.name,
        PatchKind::Merge,
        &raw,
        rest::WriteOptions::default(),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One pass: collect orphans, finish foreground and orphan deletions.
pub async fn sweep(reg: &Registry) -> Result<(), ApiError> {
    let (all, rev) = load(reg).await?;
    let by_uid: HashMap<&str, &Obj> = all.iter().map(|o| (o.uid(), o)).collect();
    // Dependents of each owner uid.
    let mut dependents: HashMap<&str, Vec<&Obj>> = HashMap::new();
    for o in &all {
        for r in o
            .value
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(uid) = r.get("uid").and_then(Value::as_str) {
                if let Some(owner) = by_uid.get(uid) {
                    dependents.entry(owner.uid()).or_default().push(o);
                }
            }
        }
    }
    let rv = |o: &Obj| {
        meta_str(&o.value, "resourceVersion")
            .unwrap_or("")
            .to_string()
    };

    for o in &all {
        // The lists are not all at one revision: an object written after `rev` may have
        // owners another list was too early to show. The next pass acts on it.
        if o.revision > rev {
            continue;
        }
        // Owners being deleted in the foreground or with orphaning.
        if o.deleting() && o.has_finalizer(ORPHAN) {
            for d in dependents.get(o.uid()).into_iter().flatten() {
                let refs: Vec<Value> = d
                    .owner_refs()
                    .into_iter()
                    .filter(|r| r.get("uid").and_then(Value::as_str) != Some(o.uid()))
                    .collect();
                patch(
                    reg,
                    d,
                    json!({"metadata": {"ownerReferences": refs, "resourceVersion": rv(d)}}),
                )
                .await?;
            }
            remove_finalizer(reg, o, ORPHAN).await?;
            continue;
        }
        if o.deleting() && o.has_finalizer(FOREGROUND) {
            let deps = dependents.get(o.uid()).cloned().unwrap_or_default();
            let blocking = deps.iter().any(|d| {
                d.owner_refs().iter().any(|r| {
                    r.get("uid").and_then(Value::as_str) == Some(o.uid())
                        && r.get("blockOwnerDeletion") == Some(&json!(true))
                })
            });
            for d in &deps {
                if !d.deleting() {
                    delete(reg, d, "Foreground").await?;
                }
            }
            if !blocking {
                remove_finalizer(reg, o, FOREGROUND).await?;
            }
            continue;
        }
        // Dependents whose owners are gone.
        let refs = o.owner_refs();
        if refs.is_empty() || o.deleting() {
            continue;
        }
        let live: Vec<&Value> = refs
            .iter()
            .filter(|r| {
                r.get("uid")
                    .and_then(Value::as_str)
                    .is_some_and(|u| by_uid.contains_key(u))
            })
            .collect();
        if live.is_empty() {
            // An owner in the foreground deletes its dependents in the foreground too.
            delete(reg, o, "Background").await?;
        } else if live.len() < refs.len() {
            let kept: Vec<&Value> = live;
            patch(
                reg,
                o,
                json!({"metadata": {"ownerReferences": kept, "resourceVersion": rv(o)}}),
            )
            .await?;
        }
    }
    Ok(())
}

async fn delete(reg: &Registry, o: &Obj, policy: &str) -> Result<(), ApiError> {
    let opts = json!({"propagationPolicy": policy, "preconditions": {"uid": o.uid()}});
    match rest::delete(reg, &o.target(), &o.name, &opts, false).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code, 404 | 409) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn remove_finalizer(reg: &Registry, o: &Obj, f: &str) -> Result<(), ApiError> {
    let rest: Vec<Value> = o
        .value
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| x != f)
        .collect();
    let rv = meta_str(&o.value, "resourceVersion")
        .unwrap_or("")
        .to_string();
    patch(
        reg,
        o,
        json!({"metadata": {"finalizers": rest, "resourceVersion": rv}}),
    )
    .await
}
