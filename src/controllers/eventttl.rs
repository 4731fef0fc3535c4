//! Deletes Events older than [`crate::events::TTL`], as kube-apiserver's `--event-ttl`
//! does through etcd leases: what happened an hour ago no longer clutters `describe`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams};
use kube::ResourceExt;

use super::{Context, Result};

/// How often old Events are looked for.
const EVERY: Duration = Duration::from_secs(300);

/// When `e` last happened (an events.k8s.io/v1 Event that recurs has a series).
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref())
        .map(|t| t.0)
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Deletes the Events last seen before `cutoff`; returns how many.
pub async fn sweep(client: &kube::Client, cutoff: Timestamp) -> Result<usize> {
    let all: Api<Event> = Api::all(client.clone());
    let mut deleted = 0;
    let mut params = ListParams::default().limit(500);
    loop {
        let page = all.list(&params).await?;
        for e in page
            .items
            .iter()
            .filter(|e| last_seen(e).is_some_and(|t| t < cutoff))
        {
            let api: Api<Event> =
                Api::namespaced(client.clone(), &e.namespace().unwrap_or_default());
            super::delete(&api, &e.name_any(), &DeleteParams::default()).await?;
            deleted += 1;
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(deleted),
        }
    }
}

/// Sweeps every [`EVERY`] until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let ttl = SignedDuration::try_from(crate::events::TTL).unwrap_or(SignedDuration::ZERO);
        let cutoff = Timestamp::now()
            .checked_sub(ttl)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        match sweep(&ctx.client, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired events deleted"),
            Err(e) => tracing::debug!(error = %e, "cannot delete expired events"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Kind, Recorder};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::PostParams;

    #[tokio::test]
    async fn repeats_count_up_and_old_events_are_swept() {
        let api = super::super::client::TestApi::start().await;
        let client = api.client("test");
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "c"}})).expect("cm");
        let cm = cms
            .create(&PostParams::default(), &cm)
            .await
            .expect("create");
        let rec = Recorder::new(client.clone(), "tester", Some("n1"));
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let counted = |want: i32| {
            let events = events.clone();
            async move {
                for _ in 0..100 {
                    let list = events.list(&ListParams::default()).await.expect("list");
                    if list.items.iter().any(|e| e.count == Some(want)) {
                        return list.items;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!("no event with count {want}");
            }
        };
        rec.record(&cm, None, Kind::Warning, "Broken", "it broke");
        let first = counted(1).await;
        rec.record(&cm, None, Kind::Warning, "Broken", "it broke");
        let items = counted(2).await;
        assert_eq!(items.len(), 1, "a repeat is the same Event");
        assert_eq!(first[0].metadata.name, items[0].metadata.name);
        let e = &items[0];
        assert_eq!(e.reason.as_deref(), Some("Broken"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.involved_object.name.as_deref(), Some("c"));
        assert_eq!(
            e.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("n1")
        );

        // Swept once it is older than the cutoff, kept before.
        let before = Timestamp::now()
            .checked_sub(SignedDuration::from_secs(60))
            .expect("time");
        assert_eq!(sweep(&client, before).await.expect("sweep"), 0);
        let after = Timestamp::now()
            .checked_add(SignedDuration::from_secs(1))
            .expect("time");
        assert_eq!(sweep(&client, after).await.expect("sweep"), 1);
        assert!(events
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty());
        api.shutdown().await;
    }
}
