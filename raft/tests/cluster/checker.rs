//! Records what concurrent clients did and saw, then checks it: no acknowledged write
//! lost, no stale read after an acknowledged write, revisions unique and increasing per
//! client, watch streams gap-free and in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pikube_raft::*;

/// How a write ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Acknowledged at this revision.
    Ok(Revision),
    /// Definitely not applied.
    Failed,
    /// The client does not know (timeout, lost answer).
    Unknown,
}

/// One write: a put of a unique key.
#[derive(Clone, Debug)]
pub struct WriteOp {
    pub client: usize,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub done: Instant,
    pub outcome: Outcome,
}

/// One linearizable read of a key some client wrote.
#[derive(Clone, Debug)]
pub struct ReadOp {
    pub key: Vec<u8>,
    pub invoked: Instant,
    /// The value read and the revision the read happened at.
    pub result: Option<(Option<Vec<u8>>, Revision)>,
}

/// The shared record of a run.
#[derive(Clone, Default)]
pub struct History {
    writes: Arc<Mutex<Vec<WriteOp>>>,
    reads: Arc<Mutex<Vec<ReadOp>>>,
}

/// Only a refusal before the write entered the log is a definite failure; a node that
/// shut down or timed out with the write in flight may still have had it committed.
fn classify(e: &Error) -> Outcome {
    match e {
        Error::NotLeader { .. } | Error::InvalidArgument(_) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

impl History {
    /// Acknowledged writes so far.
    pub fn acked(&self) -> Vec<WriteOp> {
        self.writes
            .lock()
            .expect("history lock")
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::Ok(_)))
            .cloned()
            .collect()
    }

    /// Number of acknowledged writes.
    pub fn acked_count(&self) -> usize {
        self.acked().len()
    }

    /// Puts `key` through `store` and records the outcome.
    pub async fn put(&self, client: usize, store: &Store, key: Vec<u8>, value: Vec<u8>) {
        let r = store.put(&key, &value, 0).await;
        let outcome = match &r {
            Ok(p) => Outcome::Ok(p.revision),
            Err(e) => classify(e),
        };
        self.writes.lock().expect("history lock").push(WriteOp {
            client,
            key,
            value,
            done: Instant::now(),
            outcome,
        });
    }

    /// Reads `key` linearizably through `store` and records what it saw.
    pub async fn read(&self, store: &Store, key: Vec<u8>) {
        let invoked = Instant::now();
        let result = store
            .range(RangeRequest::key(key.clone()))
            .await
            .ok()
            .map(|r| (r.kvs.into_iter().next().map(|kv| kv.value), r.revision));
        self.reads.lock().expect("history lock").push(ReadOp {
            key,
            invoked,
            result,
        });
    }

    /// Checks the history against the final state of the cluster (read from a healthy
    /// node after everything settled). Panics with every violation found.
    pub fn check(&self, final_state: &BTreeMap<Vec<u8>, KeyValue>) {
        let writes = self.writes.lock().expect("history lock").clone();
        let reads = self.reads.lock().expect("history lock").clone();
        let mut problems = Vec::new();
        let mut by_revision: HashMap<Revision, &WriteOp> = HashMap::new();
        let mut last_per_client: HashMap<usize, Revision> = HashMap::new();
        for w in &writes {
            if let Outcome::Ok(rev) = w.outcome {
                match final_state.get(&w.key) {
                    Some(kv) if kv.value == w.value && kv.mod_revision == rev => {}
                    Some(kv) => problems.push(format!(
                        "acknowledged write {:?}@{rev} reads back as @{}",
                        String::from_utf8_lossy(&w.key),
                        kv.mod_revision
                    )),
                    None => problems.push(format!(
                        "acknowledged write {:?}@{rev} is lost",
                        String::from_utf8_lossy(&w.key)
                    )),
                }
                if let Some(other) = by_revision.insert(rev, w) {
                    problems.push(format!(
                        "revision {rev} acknowledged twice ({:?} and {:?})",
                        String::from_utf8_lossy(&other.key),
                        String::from_utf8_lossy(&w.key)
                    ));
                }
                let last = last_per_client.entry(w.client).or_insert(0);
                if rev <= *last {
                    problems.push(format!(
                        "client {} saw revision {rev} after {}",
                        w.client, *last
                    ));
                }
                *last = rev;
            }
        }
        let known: HashMap<&[u8], &WriteOp> =
            writes.iter().map(|w| (w.key.as_slice(), w)).collect();
        for (key, kv) in final_state {
            match known.get(key.as_slice()) {
                Some(w) if matches!(w.outcome, Outcome::Failed) => problems.push(format!(
                    "write {:?} failed definitely but is in the store",
                    String::from_utf8_lossy(key)
                )),
                Some(w) if w.value != kv.value => problems.push(format!(
                    "{:?} holds a value nobody wrote",
                    String::from_utf8_lossy(key)
                )),
                Some(_) => {}
                None => problems.push(format!(
                    "{:?} is in the store but nobody wrote it",
                    String::from_utf8_lossy(key)
                )),
            }
        }
        for r in &reads {
            let Some((value, read_rev)) = &r.result else {
                continue;
            };
            let Some(w) = known.get(r.key.as_slice()) else {
                continue;
            };
            if let Outcome::Ok(rev) = w.outcome {
                if w.done < r.invoked {
                    if value.as_ref() != Some(&w.value) {
                        problems.push(format!(
                            "stale read of {:?}: acknowledged @{rev} before the read began, not seen",
                            String::from_utf8_lossy(&r.key)
                        ));
                    }
                    if *read_rev < rev {
                        problems.push(format!(
                            "read at revision {read_rev} after a write acknowledged @{rev}"
                        ));
                    }
                }
            }
        }
        assert!(
            problems.is_empty(),
            "{} violations:\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
}

/// Collects the events of a node's watch from revision 1, re-watching when cancelled as
/// fallen behind; the events are checked to be gap-free and in order.
pub struct WatchLog {
    events: Arc<Mutex<Vec<Event>>>,
    task: tokio::task::JoinHandle<Option<String>>,
}

impl WatchLog {
    /// Starts watching `prefix` on `store` from revision 1.
    pub fn start(store: Store, prefix: &[u8]) -> WatchLog {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let prefix = prefix.to_vec();
        let task = tokio::spawn(async move {
            let mut next = 1;
            loop {
                let mut w = match store
                    .watch(WatchRequest::prefix(prefix.clone(), next))
                    .await
                {
                    Ok(w) => w,
                    Err(Error::Shutdown) => return None,
                    Err(e) => return Some(format!("watch failed: {e}")),
                };
                while let Some(item) = w.next().await {
                    match item {
                        Ok(ev) => {
                            next = ev.kv.mod_revision + 1;
                            sink.lock().expect("watch log").push(ev);
                        }
                        Err(Error::WatchLagged) => break,
                        Err(Error::Shutdown) => return None,
                        Err(e) => return Some(format!("watch ended: {e}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        WatchLog { events, task }
    }

    /// Stops watching and checks the stream: strictly increasing, gap-free revisions (the
    /// tests write only single puts), each event one some client wrote.
    pub async fn check(self, history: &History, upto: Revision) {
        self.task.abort();
        if let Ok(Some(err)) = self.task.await {
            panic!("{err}");
        }
        let events = self.events.lock().expect("watch log").clone();
        let writes = history.writes.lock().expect("history lock").clone();
        let written: HashMap<&[u8], &[u8]> = writes
            .iter()
            .map(|w| (w.key.as_slice(), w.value.as_slice()))
            .collect();
        let mut expect = 1;
        for ev in &events {
            assert_eq!(
                ev.kv.mod_revision,
                expect,
                "watch stream jumped from revision {} to {}",
                expect - 1,
                ev.kv.mod_revision
            );
            assert_eq!(
                written.get(ev.kv.key.as_slice()).copied(),
                Some(ev.kv.value.as_slice()),
                "watch event for a write nobody made"
            );
            expect += 1;
        }
        assert!(
            expect > upto,
            "watch stream stopped at revision {} before {upto}",
            expect - 1
        );
    }
}
