//! Lease expiry: the leader's clock decides when a lease ends, and its keys go with it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::mvcc::WriteRequest;
use crate::store::WeakStore;
use crate::types::LeaseId;

/// Expires leases whose deadline passed. Only the leader does; a node that becomes
/// leader first gives every lease a full TTL (its deadlines were not kept alive here).
pub(crate) async fn expiry_loop(weak: WeakStore) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut leading = false;
    loop {
        tick.tick().await;
        let Some(store) = weak.upgrade() else {
            return;
        };
        let shared = store.shared.clone();
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let now_leading = store.is_leader();
        if now_leading && !leading {
            if let Ok(mut leases) = shared.leases.lock() {
                let now = Instant::now();
                for (deadline, ttl) in leases.values_mut() {
                    *deadline = now + Duration::from_secs((*ttl).max(1) as u64);
                }
            }
        }
        leading = now_leading;
        if !leading {
            continue;
        }
        let now = Instant::now();
        let expired: Vec<LeaseId> = match shared.leases.lock() {
            Ok(leases) => leases
                .iter()
                .filter(|(_, (d, _))| *d <= now)
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => return,
        };
        for id in expired {
            match store.propose_local(WriteRequest::LeaseRevoke { id }).await {
                Ok(_) | Err(Error::LeaseNotFound(_)) => {
                    if let Ok(mut leases) = shared.leases.lock() {
                        leases.remove(&id);
                    }
                }
                Err(e) => tracing::debug!(lease = id, error = %e, "lease expiry deferred"),
            }
        }
    }
}
