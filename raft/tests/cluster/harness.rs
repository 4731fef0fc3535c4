//! In-process clusters of store nodes on an injectable network: each node has its own
//! sled directory, can crash (its handle dropped without a goodbye) and restart on it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pikube_raft::memnet::MemNet;
use pikube_raft::*;

/// Timing fast enough for tests, slow enough for a loaded 2-core machine.
pub fn test_timing() -> Timing {
    Timing {
        heartbeat_ms: 50,
        election_min_ms: 300,
        election_max_ms: 600,
    }
}

/// A cluster under test.
pub struct Cluster {
    pub net: MemNet,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<NodeId, Store>,
    pub cluster_id: String,
    pub snapshot_every: u64,
}

impl Cluster {
    fn config(&self, id: NodeId, bootstrap: bool) -> Config {
        let mut c = Config::single_node(self.data_dir(id));
        c.node_id = id;
        c.advertise_addr = format!("node-{id}");
        c.bootstrap = bootstrap;
        c.transport = self.net.transport(id);
        c.timing = test_timing();
        c.snapshot_every = self.snapshot_every;
        c.request_timeout = Duration::from_secs(3);
        if !self.cluster_id.is_empty() {
            c.cluster_id = Some(self.cluster_id.clone());
        }
        c
    }

    fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// A cluster of `n` voters: node 1 bootstraps, the others are added one by one.
    pub async fn start(n: u64, snapshot_every: u64) -> Cluster {
        let mut c = Cluster {
            net: MemNet::new(),
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            cluster_id: String::new(),
            snapshot_every,
        };
        let first = Store::open(c.config(1, true)).await.expect("open node 1");
        c.cluster_id = first.cluster_id().to_string();
        c.net.register(&first);
        c.nodes.insert(1, first);
        for id in 2..=n {
            c.add(id).await;
        }
        c
    }

    /// Starts node `id` with an empty directory and adds it as a voter.
    pub async fn add(&mut self, id: NodeId) {
        let store = Store::open(self.config(id, false))
            .await
            .unwrap_or_else(|e| panic!("open node {id}: {e}"));
        self.net.register(&store);
        self.nodes.insert(id, store);
        let any = self.nodes.get(&1).or_else(|| self.nodes.values().next());
        any.expect("a running node")
            .add_voter(id, &format!("node-{id}"))
            .await
            .unwrap_or_else(|e| panic!("add node {id}: {e}"));
    }

    /// A running node.
    pub fn node(&self, id: NodeId) -> &Store {
        self.nodes.get(&id).expect("node is running")
    }

    /// Waits until the running nodes agree on a leader and returns it.
    pub async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let leaders: Vec<Option<NodeId>> = self.nodes.values().map(|s| s.leader()).collect();
            if let Some(Some(l)) = leaders.first() {
                if self.nodes.contains_key(l)
                    && leaders.iter().all(|x| *x == Some(*l))
                    && self.node(*l).is_leader()
                {
                    return *l;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Crashes node `id`: unreachable at once, stopped without flushing anything more.
    pub async fn crash(&mut self, id: NodeId) {
        self.net.unregister(id);
        if let Some(s) = self.nodes.remove(&id) {
            let _ = s.shutdown().await;
        }
    }

    /// Restarts node `id` on its existing directory.
    pub async fn restart(&mut self, id: NodeId) {
        let store = Store::open(self.config(id, false))
            .await
            .unwrap_or_else(|e| panic!("reopen node {id}: {e}"));
        self.net.register(&store);
        self.nodes.insert(id, store);
    }

    /// Waits until node `id` has applied at least `revision`.
    pub async fn wait_revision(&self, id: NodeId, revision: Revision) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.node(id).current_revision() < revision {
            assert!(
                Instant::now() < deadline,
                "node {id} stuck at revision {} < {revision}",
                self.node(id).current_revision()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every node and disconnects them from the network.
    pub async fn stop(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.crash(id).await;
        }
    }
}
