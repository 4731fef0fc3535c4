//! An in-process network of store nodes, for tests and simulations: a message is
//! delivered by calling the target's [`Store::handle_peer`] directly, and links can be cut
//! (partitions), slowed down or made lossy, in both directions independently.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::consensus::NodeId;
use crate::network::{Transport, TransportError, TransportFuture};
use crate::store::Store;

#[derive(Default)]
struct Inner {
    nodes: HashMap<NodeId, Store>,
    cut: HashSet<(NodeId, NodeId)>,
    delay: Duration,
    drop_rate: f64,
}

/// The network; clone it freely. A node must be [`MemNet::unregister`]ed when it stops,
/// since the network holds its handle.
#[derive(Clone, Default)]
pub struct MemNet {
    inner: Arc<Mutex<Inner>>,
}

impl MemNet {
    /// An empty network with perfect links.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    /// The transport node `from` sends with.
    pub fn transport(&self, from: NodeId) -> Arc<dyn Transport> {
        Arc::new(MemTransport {
            net: self.clone(),
            from,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Makes a started store reachable.
    pub fn register(&self, store: &Store) {
        let store = store.clone();
        self.with(|i| i.nodes.insert(store.node_id(), store));
    }

    /// Makes a node unreachable (it crashed or stopped) and drops its handle.
    pub fn unregister(&self, id: NodeId) -> Option<Store> {
        self.with(|i| i.nodes.remove(&id))
    }

    /// Cuts every link between different groups (both directions).
    pub fn partition(&self, groups: &[&[NodeId]]) {
        self.with(|i| {
            for (a, ga) in groups.iter().enumerate() {
                for (b, gb) in groups.iter().enumerate() {
                    if a != b {
                        for x in ga.iter() {
                            for y in gb.iter() {
                                i.cut.insert((*x, *y));
                            }
                        }
                    }
                }
            }
        })
    }

    /// Cuts the one-way link `from` → `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.with(|i| i.cut.insert((from, to)));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.with(|i| i.cut.clear());
    }

    /// Delays every message by `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.with(|i| i.delay = delay);
    }

    /// Loses each message (request or answer) with probability `rate`.
    pub fn set_drop_rate(&self, rate: f64) {
        self.with(|i| i.drop_rate = rate.clamp(0.0, 1.0));
    }

    fn link(&self, from: NodeId, to: NodeId) -> (bool, Duration, f64) {
        self.with(|i| (!i.cut.contains(&(from, to)), i.delay, i.drop_rate))
    }
}

struct MemTransport {
    net: MemNet,
    from: NodeId,
}

impl Transport for MemTransport {
    fn send(&self, to: NodeId, addr: &str, body: Vec<u8>) -> TransportFuture {
        let net = self.net.clone();
        let from = self.from;
        let addr = addr.to_string();
        Box::pin(async move {
            let unreachable = |reason: &str| TransportError::Unreachable {
                node: to,
                addr: addr.clone(),
                reason: reason.to_string(),
            };
            let (up, delay, drop_rate) = net.link(from, to);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if !up {
                return Err(unreachable("link cut"));
            }
            if drop_rate > 0.0 && rand::random::<f64>() < drop_rate {
                return Err(unreachable("message lost"));
            }
            let target = net.with(|i| i.nodes.get(&to).cloned());
            let Some(target) = target else {
                return Err(unreachable("node down"));
            };
            let reply = target.handle_peer(&body).await;
            let (up, _, drop_rate) = net.link(to, from);
            if !up || (drop_rate > 0.0 && rand::random::<f64>() < drop_rate) {
                return Err(TransportError::NoAnswer {
                    node: to,
                    addr: addr.clone(),
                    reason: "answer lost".into(),
                });
            }
            Ok(reply)
        })
    }
}
