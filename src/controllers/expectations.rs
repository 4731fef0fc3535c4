//! Expectations, as kube-controller-manager's ControllerExpectations: the children a
//! controller created or deleted that its cache has not shown yet. A controller that
//! counts its children from a cache acts on the count only once the cache has caught up
//! with its own last writes; otherwise it would create the same pods twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Resource;

/// How long unobserved expectations hold an owner back (kube's 5 minutes): past that the
/// controller acts on what its cache shows.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    since: Option<Instant>,
}

/// Owner uid → the uids of the children it created or deleted, not yet seen so.
#[derive(Default)]
pub struct Expectations {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Expectations {
    /// Notes that `owner` created a child with uid `child`.
    pub fn created(&self, owner: &str, child: &str) {
        self.note(owner, |p| p.created.insert(child.to_string()));
    }

    /// Notes that `owner` deleted its child with uid `child`.
    pub fn deleted(&self, owner: &str, child: &str) {
        self.note(owner, |p| p.deleted.insert(child.to_string()));
    }

    fn note(&self, owner: &str, f: impl FnOnce(&mut Pending) -> bool) {
        let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = all.entry(owner.to_string()).or_default();
        f(p);
        p.since = Some(Instant::now());
    }

    /// Whether the cache's `children` of `owner` show every create and delete it noted
    /// (a deleted child is gone or being deleted), or they are older than
    /// [`EXPECTATIONS_TIMEOUT`]. What has been seen is forgotten.
    pub fn satisfied<C: Resource>(&self, owner: &str, children: &[Arc<C>]) -> bool {
        let mut all = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = all.get_mut(owner) else {
            return true;
        };
        let live: HashMap<&str, bool> = children
            .iter()
            .filter_map(|c| {
                let m = c.meta();
                Some((m.uid.as_deref()?, m.deletion_timestamp.is_none()))
            })
            .collect();
        p.created.retain(|uid| !live.contains_key(uid.as_str()));
        p.deleted
            .retain(|uid| live.get(uid.as_str()) == Some(&true));
        let expired = p.since.is_some_and(|t| t.elapsed() >= EXPECTATIONS_TIMEOUT);
        if expired || (p.created.is_empty() && p.deleted.is_empty()) {
            all.remove(owner);
            return true;
        }
        false
    }

    /// Forgets `owner` (deleted).
    pub fn forget(&self, owner: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn pod(uid: &str, deleting: bool) -> Arc<Pod> {
        let mut meta = json!({"name": uid, "uid": uid});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        Arc::new(serde_json::from_value(json!({"metadata": meta})).expect("pod"))
    }

    #[test]
    fn waits_for_the_cache_to_show_creates_and_deletes() {
        let e = Expectations::default();
        assert!(e.satisfied::<Pod>("rs", &[]));
        e.created("rs", "a");
        e.created("rs", "b");
        assert!(!e.satisfied("rs", &[pod("a", false)]));
        assert!(e.satisfied("rs", &[pod("a", false), pod("b", false)]));
        // Seen creates are forgotten: later lists without them do not hold back.
        assert!(e.satisfied::<Pod>("rs", &[]));
        e.deleted("rs", "a");
        assert!(!e.satisfied("rs", &[pod("a", false)]));
        assert!(e.satisfied("rs", &[pod("a", true)]));
        e.deleted("rs", "b");
        assert!(e.satisfied::<Pod>("rs", &[]));
        e.created("rs", "c");
        e.forget("rs");
        assert!(e.satisfied::<Pod>("rs", &[]));
        // Another owner's expectations are its own.
        e.created("other", "x");
        assert!(e.satisfied::<Pod>("rs", &[]));
        assert!(!e.satisfied::<Pod>("other", &[]));
    }
}
