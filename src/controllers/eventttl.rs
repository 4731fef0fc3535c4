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

/// When `e` last happened.
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
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
