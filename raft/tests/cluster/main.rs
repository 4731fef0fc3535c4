//! Several store nodes in one process on an injectable network: replication, forwarding,
//! leader crashes, partitions, restarts and snapshot catch-up, with every client history
//! checked for lost writes, stale reads, bad revisions and broken watch streams.

mod checker;
mod harness;
mod https;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pikube_raft::*;

use checker::{History, WatchLog};
use harness::Cluster;

/// Concurrent clients writing unique keys and reading back other clients' writes, each
/// through a random node of a set the test changes as nodes come and go.
struct Load {
    history: History,
    targets: Arc<Mutex<Vec<Store>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(clients: usize, targets: Vec<Store>) -> Load {
        let history = History::default();
        let targets = Arc::new(Mutex::new(targets));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (history, targets, stop) = (history.clone(), targets.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let pick = {
                            let t = targets.lock().expect("targets");
                            if t.is_empty() {
                                None
                            } else {
                                Some(t[rand::random::<usize>() % t.len()].clone())
                            }
                        };
                        let Some(store) = pick else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        if i % 4 == 3 {
                            let acked = history.acked();
                            if !acked.is_empty() {
                                let w = &acked[rand::random::<usize>() % acked.len()];
                                history.read(&store, w.key.clone()).await;
                            }
                        } else {
                            let key = format!("/h/{c}/{i}").into_bytes();
                            let value = format!("v{c}-{i}").into_bytes();
                            history.put(c, &store, key, value).await;
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Load {
            history,
            targets,
            stop,
            tasks,
        }
    }

    fn set_targets(&self, targets: Vec<Store>) {
        *self.targets.lock().expect("targets") = targets;
    }

    async fn wait_acked(&self, more: usize) {
        let want = self.history.acked_count() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.history.acked_count() < want {
            assert!(
                Instant::now() < deadline,
                "only {} of {want} writes acknowledged",
                self.history.acked_count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("client task");
        }
        self.history
    }
}

async fn final_state(store: &Store) -> BTreeMap<Vec<u8>, KeyValue> {
    let r = store
        .range(RangeRequest::prefix(b"/h/".to_vec()))
        .await
        .expect("final read");
    r.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect()
}

fn all(c: &Cluster) -> Vec<Store> {
    c.nodes.values().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_followers_reach_every_node_and_their_watchers() {
    let c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    let follower = *c
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let mut w = c
        .node(follower)
        .watch(WatchRequest::prefix(b"/x/".to_vec(), 0))
        .await
        .expect("watch");
    let put = c.node(follower).put(b"/x/a", b"1", 0).await.expect("put");
    for id in c.nodes.keys() {
        // A linearizable read on any node sees an acknowledged write at once.
        let kv = c.node(*id).get(b"/x/a").await.expect("get").expect("key");
        assert_eq!(kv.value, b"1");
        assert_eq!(kv.mod_revision, put.revision);
    }
    let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event");
    assert_eq!(ev.kv.key, b"/x/a");
    let txn = TxnRequest {
        compare: vec![Compare::mod_revision_is(b"/x/a".to_vec(), put.revision)],
        success: vec![Op::Put {
            key: b"/x/a".to_vec(),
            value: b"2".to_vec(),
            lease: 0,
        }],
        failure: vec![],
    };
    assert!(
        c.node(follower)
            .txn(txn.clone())
            .await
            .expect("txn")
            .succeeded
    );
    assert!(!c.node(leader).txn(txn).await.expect("txn").succeeded);
    let members = c.node(follower).members();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.voter));
    // Leases: granted and kept alive through a follower, expired by the leader.
    let lease = c.node(follower).lease_grant(1).await.expect("lease");
    c.node(follower)
        .put(b"/x/leased", b"v", lease.id)
        .await
        .expect("leased put");
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.node(follower)
            .lease_keep_alive(lease.id)
            .await
            .expect("keep alive");
    }
    assert!(c
        .node(leader)
        .get(b"/x/leased")
        .await
        .expect("get")
        .is_some());
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .node(follower)
        .get(b"/x/leased")
        .await
        .expect("get")
        .is_some()
    {
        assert!(Instant::now() < deadline, "lease did not expire");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_crash_during_writes_loses_nothing_acknowledged() {
    let mut c = Cluster::start(3, 10_000).await;
    let watch_node = c.leader().await % 3 + 1;
    let watch = WatchLog::start(c.node(watch_node).clone(), b"/h/");
    let load = Load::start(8, all(&c));
    load.wait_acked(200).await;
    let old = c.leader().await;
    assert_ne!(old, watch_node);
    c.crash(old).await;
    load.set_targets(all(&c));
    let new = c.leader().await;
    assert_ne!(new, old, "a new leader is elected");
    load.wait_acked(200).await;
    c.restart(old).await;
    load.set_targets(all(&c));
    load.wait_acked(100).await;
    let history = load.stop().await;
    let state = final_state(c.node(new)).await;
    history.check(&state);
    let top = c.node(new).current_revision();
    for id in c.nodes.keys() {
        c.wait_revision(*id, top).await;
    }
    watch.check(&history, top).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_leader_cannot_ack_and_the_majority_goes_on() {
    let c = Cluster::start(3, 10_000).await;
    let old = c.leader().await;
    let majority: Vec<NodeId> = c.nodes.keys().copied().filter(|id| *id != old).collect();
    let load = Load::start(8, all(&c));
    load.wait_acked(100).await;
    c.net.partition(&[&[old], &majority]);
    // The old leader may not acknowledge anything now; it is asked directly.
    let isolated = c.node(old).clone();
    let r = isolated.put(b"/h/isolated", b"x", 0).await;
    assert!(r.is_err(), "a leader without quorum acknowledged a write");
    let read = isolated.get(b"/h/isolated").await;
    assert!(
        read.is_err(),
        "a leader without quorum served a linearizable read"
    );
    load.set_targets(majority.iter().map(|id| c.node(*id).clone()).collect());
    load.wait_acked(200).await;
    let new = c.node(majority[0]).leader().expect("majority leader");
    assert!(majority.contains(&new));
    c.net.heal();
    load.set_targets(all(&c));
    load.wait_acked(100).await;
    let history = load.stop().await;
    let state = final_state(c.node(new)).await;
    // The isolated write was never acknowledged; whether it survived is not promised,
    // but it must not show up as acknowledged elsewhere.
    history.check(
        &state
            .into_iter()
            .filter(|(k, _)| k != b"/h/isolated")
            .collect(),
    );
    let top = c.node(new).current_revision();
    c.wait_revision(old, top).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_follower_catches_up() {
    let mut c = Cluster::start(3, 10_000).await;
    let leader = c.leader().await;
    let follower = *c.nodes.keys().find(|id| **id != leader).expect("follower");
    let load = Load::start(8, all(&c));
    load.wait_acked(100).await;
    c.crash(follower).await;
    load.set_targets(all(&c));
    load.wait_acked(500).await;
    c.restart(follower).await;
    let history = load.stop().await;
    let top = c.node(leader).current_revision();
    c.wait_revision(follower, top).await;
    let state = final_state(c.node(follower)).await;
    history.check(&state);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_missed_10k_entries_catches_up_from_a_snapshot() {
    let mut c = Cluster::start(3, 1000).await;
    let leader = c.leader().await;
    let lagging = *c.nodes.keys().find(|id| **id != leader).expect("follower");
    c.crash(lagging).await;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let s = c.node(leader).clone();
            tokio::spawn(async move {
                for i in 0..625 {
                    let key = format!("/snap/{w}/{i}");
                    s.put(key.as_bytes(), &[7u8; 256], 0).await.expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let top = c.node(leader).current_revision();
    assert!(top >= 10_000);
    c.restart(lagging).await;
    c.wait_revision(lagging, top).await;
    let r = c
        .node(lagging)
        .range(RangeRequest::prefix(b"/snap/".to_vec()).serializable())
        .await
        .expect("read");
    assert_eq!(r.kvs.len(), 10_000);
    // The log before the snapshot is gone on the leader, so only a snapshot could do it.
    let snap = c
        .dir
        .path()
        .join(format!("node-{lagging}/snapshots/current.snap"));
    assert!(snap.exists(), "the lagging node installed a snapshot");
    // The node keeps following after the install.
    c.node(leader)
        .put(b"/snap/after", b"1", 0)
        .await
        .expect("put");
    c.wait_revision(lagging, top + 1).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_lossy_network_loses_nothing_and_a_removed_node_leaves() {
    let mut c = Cluster::start(3, 10_000).await;
    c.net.set_delay(Duration::from_millis(3));
    c.net.set_drop_rate(0.05);
    let load = Load::start(8, all(&c));
    load.wait_acked(300).await;
    c.net.set_drop_rate(0.0);
    c.net.set_delay(Duration::ZERO);
    let history = load.stop().await;
    let leader = c.leader().await;
    history.check(&final_state(c.node(leader)).await);

    // Removing a member: the other two go on as a two-node cluster.
    let gone = *c.nodes.keys().find(|id| **id != leader).expect("follower");
    c.node(leader).remove_node(gone).await.expect("remove node");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.node(leader).members().iter().any(|m| m.id == gone) {
        assert!(Instant::now() < deadline, "node {gone} is still a member");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.crash(gone).await;
    let put = c
        .node(leader)
        .put(b"/h/after-removal", b"1", 0)
        .await
        .expect("put");
    for id in c.nodes.keys() {
        c.wait_revision(*id, put.revision).await;
    }
    // Removing a node that is not a member is a clear error.
    let err = c
        .node(leader)
        .remove_node(999)
        .await
        .expect_err("not a member");
    assert!(err.to_string().contains("not a member"), "{err}");
    c.stop().await;
}
