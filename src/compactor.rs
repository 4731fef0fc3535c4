//! Periodic compaction of the store, as kube-apiserver does for etcd: every interval, the
//! history older than the revision seen one interval ago is dropped. Watchers and
//! paginated lists can resume from anything newer; older resourceVersions get 410 Gone.

use std::time::Duration;

use pikube_raft::Store;

/// Compacts `store` every `interval` until the task is dropped.
pub async fn run(store: Store, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    let mut previous = store.current_revision();
    loop {
        tick.tick().await;
        let target = previous;
        previous = store.current_revision();
        if target <= store.compacted_revision() {
            continue;
        }
        match store.compact(target).await {
            Ok(()) => tracing::debug!(revision = target, "compacted the store"),
            Err(pikube_raft::Error::Shutdown) => return,
            Err(e) => tracing::warn!(revision = target, error = %e, "compaction failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_one_interval_of_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(pikube_raft::Config::single_node(dir.path().join("db")))
            .await
            .unwrap();
        let task = tokio::spawn(run(store.clone(), Duration::from_millis(200)));
        for i in 0..5 {
            store
                .put(format!("/k{i}").as_bytes(), b"v", 0)
                .await
                .unwrap();
        }
        // First tick records revision 5; the next compacts to it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.compacted_revision() < 5 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no compaction happened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        store.put(b"/k5", b"v", 0).await.unwrap();
        assert_eq!(
            store.compacted_revision(),
            5,
            "history newer than one interval is kept"
        );
        task.abort();
        store.shutdown().await.unwrap();
    }
}
