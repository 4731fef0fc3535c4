//! Watch events filtered down to the changes a consumer uses. Every write to an object
//! reaches every watcher of its kind, yet most consumers read only a few of its fields:
//! the service proxy reads a Node's address and pod CIDR, not its heartbeat times;
//! cluster DNS reads a Pod's IPs, not its conditions. Each consumer names what it reads
//! as a *fingerprint* (a hash of those fields) and [`relevant`] passes an event on only
//! when that fingerprint changed, as controller-runtime's predicates and kube-runtime's
//! `predicate_filter` do — but over whole watcher events, so deletions and re-lists
//! (after a dropped watch) are never swallowed.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use kube::Resource;

/// Hash of the fields a consumer reads of an object (stable within one process).
pub fn fingerprint<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Identity of one object: namespace, name and uid (a re-created object is a new one).
type Key = (Option<String>, String, Option<String>);

fn key<K: Resource>(obj: &K) -> Key {
    let meta = obj.meta();
    (
        meta.namespace.clone(),
        meta.name.clone().unwrap_or_default(),
        meta.uid.clone(),
    )
}

/// What a consumer has seen of each object: the fingerprint of the fields it uses.
/// Memory is one entry per live object; deleted objects are forgotten.
pub struct Seen<K, F> {
    fingerprint: F,
    known: HashMap<Key, u64>,
    /// Fingerprints gathered while the watch re-lists (between `Init` and `InitDone`).
    relisting: Option<HashMap<Key, u64>>,
    /// Whether the re-list so far found anything new or changed.
    relist_changed: bool,
    _kind: std::marker::PhantomData<fn(&K)>,
}

impl<K: Resource, F: Fn(&K) -> u64> Seen<K, F> {
    /// Nothing seen yet; `fingerprint` hashes what the consumer reads of an object.
    pub fn new(fingerprint: F) -> Self {
        Seen {
            fingerprint,
            known: HashMap::new(),
            relisting: None,
            relist_changed: false,
            _kind: std::marker::PhantomData,
        }
    }

    /// Whether `event` changes anything the consumer uses; remembers what it saw.
    /// Updates that keep the fingerprint are not relevant; a deletion always is. During
    /// a re-list, an object is relevant when it is new or changed, and the end of the
    /// re-list when objects vanished meanwhile (or when anything changed, so consumers
    /// that rebuild from a cache on any event rebuild once more at the end).
    pub fn relevant(&mut self, event: &Event<K>) -> bool {
        match event {
            Event::Apply(obj) => {
                let fp = (self.fingerprint)(obj);
                self.known.insert(key(obj), fp) != Some(fp)
            }
            Event::Delete(obj) => {
                self.known.remove(&key(obj));
                true
            }
            Event::Init => {
                self.relisting = Some(HashMap::with_capacity(self.known.len()));
                self.relist_changed = false;
                false
            }
            Event::InitApply(obj) => {
                let (k, fp) = (key(obj), (self.fingerprint)(obj));
                let changed = self.known.get(&k) != Some(&fp);
                self.relisting
                    .get_or_insert_with(HashMap::new)
                    .insert(k, fp);
                self.relist_changed |= changed;
                changed
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let vanished = self.known.keys().any(|k| !listed.contains_key(k));
                self.known = listed;
                // The first list always counts: consumers learn the cache is complete.
                std::mem::take(&mut self.relist_changed) || vanished || self.known.is_empty()
            }
        }
    }
}

/// `stream` with the events that change nothing `fingerprint` covers left out (errors
/// pass through, so back-off and logging still see them).
pub fn relevant<S, K, F>(stream: S, fingerprint: F) -> impl Stream<Item = S::Item> + Send
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    K: Resource + Send + 'static,
    F: Fn(&K) -> u64 + Send + 'static,
{
    let mut seen = Seen::new(fingerprint);
    stream.filter(move |event| {
        std::future::ready(match event {
            Ok(e) => seen.relevant(e),
            Err(_) => true,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    fn cm(name: &str, uid: &str, data: &str, noise: &str) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "uid": uid,
                "resourceVersion": noise, "annotations": {"beat": noise}},
            "data": {"v": data},
        }))
        .unwrap()
    }

    fn data(c: &ConfigMap) -> u64 {
        fingerprint(&c.data)
    }

    #[test]
    fn only_changes_of_the_fingerprint_pass() {
        let mut seen = Seen::new(data);
        assert!(!seen.relevant(&Event::Init));
        assert!(seen.relevant(&Event::InitApply(cm("a", "1", "x", "1"))));
        assert!(seen.relevant(&Event::InitDone), "the first list completes");
        assert!(
            !seen.relevant(&Event::Apply(cm("a", "1", "x", "2"))),
            "heartbeat-like update"
        );
        assert!(seen.relevant(&Event::Apply(cm("a", "1", "y", "3"))));
        assert!(!seen.relevant(&Event::Apply(cm("a", "1", "y", "4"))));
        assert!(seen.relevant(&Event::Apply(cm("b", "2", "y", "5"))), "new");
        assert!(
            seen.relevant(&Event::Delete(cm("b", "2", "y", "5"))),
            "deletions always pass"
        );
        assert!(
            seen.relevant(&Event::Apply(cm("b", "3", "y", "6"))),
            "a re-created object is new even with the same fields"
        );
    }

    #[test]
    fn a_relist_reports_only_what_changed_meanwhile() {
        let mut seen = Seen::new(data);
        for e in [
            Event::Init,
            Event::InitApply(cm("a", "1", "x", "1")),
            Event::InitApply(cm("b", "2", "x", "1")),
            Event::InitDone,
        ] {
            seen.relevant(&e);
        }
        // The watch dropped; nothing changed while it was down.
        assert!(!seen.relevant(&Event::Init));
        assert!(!seen.relevant(&Event::InitApply(cm("a", "1", "x", "9"))));
        assert!(!seen.relevant(&Event::InitApply(cm("b", "2", "x", "9"))));
        assert!(!seen.relevant(&Event::InitDone));
        // Dropped again; meanwhile `b` was deleted: the end of the re-list tells.
        assert!(!seen.relevant(&Event::Init));
        assert!(!seen.relevant(&Event::InitApply(cm("a", "1", "x", "10"))));
        assert!(seen.relevant(&Event::InitDone));
        // And `b` is forgotten: seeing it again is new.
        assert!(seen.relevant(&Event::Apply(cm("b", "2", "x", "11"))));
        // A change found by a re-list passes, and so does its end.
        seen.relevant(&Event::Init);
        assert!(seen.relevant(&Event::InitApply(cm("a", "1", "z", "12"))));
        seen.relevant(&Event::InitApply(cm("b", "2", "x", "12")));
        assert!(seen.relevant(&Event::InitDone));
    }

    #[tokio::test]
    async fn the_stream_adapter_filters_and_keeps_errors() {
        let events = vec![
            Ok(Event::Apply(cm("a", "1", "x", "1"))),
            Ok(Event::Apply(cm("a", "1", "x", "2"))),
            Err(watcher::Error::NoResourceVersion),
            Ok(Event::Apply(cm("a", "1", "y", "3"))),
        ];
        let out: Vec<_> = relevant(futures::stream::iter(events), data)
            .collect()
            .await;
        assert_eq!(out.len(), 3);
        assert!(out[1].is_err());
    }
}
