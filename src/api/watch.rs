//! Watch: a newline-delimited stream of `{"type", "object"}` events, as client-go's
//! reflector and `kubectl get -w` read it.
//!
//! A watch of a built-in resource is served by the list cache (one decode and one JSON
//! encoding per write, shared by all watches); one that starts further back than the
//! cache's kept changes, or of a custom resource, follows the store from the requested
//! revision. A revision that was compacted gives one ERROR event with a 410 Expired
//! Status, after which clients relist.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use pikube_raft::{EventKind, WatchRequest};
use serde_json::{json, Value};

use super::cache::{Change, Progress, Subscription};
use super::objects::read_stored;
use super::resources::Def;
use super::rest::{self, ListOptions, Registry, Target};
use super::status::ApiError;
use super::table::{self, IncludeObject};

/// Longest watch when the client names no timeout (kube-apiserver picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Interval of BOOKMARK events for clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// How soon a cached watch tries again to place a bookmark that had to wait for queued
/// changes.
const BOOKMARK_RETRY: Duration = Duration::from_millis(250);

/// How objects are written into events.
#[derive(Clone)]
struct Encoding {
    def: Def,
    table: Option<IncludeObject>,
}

impl Encoding {
    fn event(&self, kind: &str, object: &Value) -> Bytes {
        match self.table {
            Some(include) => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let t = table::to_table(
                    &self.def,
                    std::slice::from_ref(object),
                    include,
                    json!({"resourceVersion": rv}),
                );
                line(kind, &t)
            }
            None => line(kind, object),
        }
    }

    /// The event for a cached change: its shared JSON when no Table is wanted.
    fn change_event(&self, kind: &str, change: &Change) -> Bytes {
        if self.table.is_some() {
            return self.event(kind, &change.object);
        }
        let object = change.object_json();
        let mut out = Vec::with_capacity(object.len() + kind.len() + 24);
        out.extend_from_slice(b"{\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\",\"object\":");
        out.extend_from_slice(object);
        out.extend_from_slice(b"}\n");
        Bytes::from(out)
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut s = json!({"type": kind, "object": object}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// Options of one watch request.
pub struct WatchParams {
    /// resourceVersion ("" / "0" = current state first, then changes).
    pub resource_version: String,
    /// timeoutSeconds.
    pub timeout: Option<Duration>,
    /// allowWatchBookmarks.
    pub bookmarks: bool,
    /// Selectors.
    pub opts: ListOptions,
    /// Send each object as a one-row Table (kubectl's human output).
    pub table: Option<IncludeObject>,
}

/// Starts a watch and returns the stream of encoded events.
pub async fn watch(
    reg: Registry,
    target: Target,
    params: WatchParams,
) -> Result<impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send, ApiError> {
    let store = reg.store.clone();
    let enc = Encoding {
        def: target.def.clone(),
        table: params.table,
    };
    let opts = params.opts;
    let prefix = target.collection_prefix();
    let cached = match (
        target.def.custom.is_none(),
        params.resource_version.as_str(),
    ) {
        (false, _) => None,
        (true, "" | "0") => {
            reg.cache
                .watch_current(&target.def, &prefix, |o| opts.matches(o))
                .await?
        }
        (true, rv) => {
            reg.cache
                .watch_from(&target.def, super::objects::parse_rv(rv)?)
                .await?
        }
    };
    let mut initial: Vec<Bytes> = Vec::new();
    let events = match cached {
        Some(sub) => {
            for item in &sub.initial {
                initial.push(enc.event("ADDED", item));
            }
            let events = cached_events(sub, prefix, opts, enc, params.bookmarks);
            return Ok(finish(initial, events, params.timeout));
        }
        None => {
            let from = match params.resource_version.as_str() {
                "" | "0" => {
                    let listed = rest::list(
                        &reg,
                        &target,
                        &ListOptions {
                            limit: 0,
                            continue_token: None,
                            ..opts.clone()
                        },
                    )
                    .await?;
                    for item in &listed.items {
                        initial.push(enc.event("ADDED", item));
                    }
                    listed.revision()? + 1
                }
                rv => super::objects::parse_rv(rv)? + 1,
            };
            stored_events(&store, prefix, from, opts, enc).await?
        }
    };
    let bookmarks = params.bookmarks;
    let bookmark = bookmark_object(&target.def);
    let ticks = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(BOOKMARK_EVERY).await;
        Some(((), ()))
    })
    .filter_map(move |()| {
        let mut obj = bookmark.clone();
        obj["metadata"]["resourceVersion"] = json!(store.current_revision().to_string());
        futures::future::ready(bookmarks.then(|| line("BOOKMARK", &obj)))
    });
    Ok(finish(
        initial,
        futures::stream::select(events, ticks).boxed(),
        params.timeout,
    ))
}

/// The whole watch: its initial events, then `events` until the timeout.
fn finish(
    initial: Vec<Bytes>,
    events: BoxStream<'static, Bytes>,
    timeout: Option<Duration>,
) -> BoxStream<'static, Result<Bytes, std::convert::Infallible>> {
    futures::stream::iter(initial)
        .chain(events)
        .take_until(tokio::time::sleep(timeout.unwrap_or(DEFAULT_TIMEOUT)))
        .map(Ok)
        .boxed()
}

/// The events of a watch served by the list cache: its kept changes, then the live
/// ones, with a BOOKMARK every [`BOOKMARK_EVERY`] when `bookmarks` (at a revision whose
/// changes it has all sent). It ends when the cache's watch does or it falls too far
/// behind; its client then watches again from the last revision it saw.
fn cached_events(
    sub: Subscription,
    prefix: String,
    opts: ListOptions,
    enc: Encoding,
    bookmarks: bool,
) -> BoxStream<'static, Bytes> {
    struct State {
        recent: std::vec::IntoIter<Arc<Change>>,
        live: tokio::sync::broadcast::Receiver<Arc<Change>>,
        progress: Progress,
        ticks: tokio::time::Interval,
    }
    let after = sub.revision;
    let mut ticks = tokio::time::interval(BOOKMARK_EVERY);
    ticks.reset();
    let state = State {
        recent: sub.recent.into_iter(),
        live: sub.live,
        progress: sub.progress,
        ticks,
    };
    let bookmark = bookmark_object(&enc.def);
    let changes = futures::stream::unfold(state, move |mut st| {
        let bookmark = bookmark.clone();
        async move {
            if let Some(change) = st.recent.next() {
                return Some((Item::Change(change), st));
            }
            loop {
                tokio::select! {
                    received = st.live.recv() => match received {
                        Ok(change) => return Some((Item::Change(change), st)),
                        Err(e) => {
                            tracing::debug!(error = %e, "cached watch closed");
                            return None;
                        }
                    },
                    _ = st.ticks.tick(), if bookmarks => {
                        if let Some(rv) = st.progress.settled(&st.live).await {
                            let mut obj = bookmark;
                            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                            return Some((Item::Bookmark(obj), st));
                        }
                        // Changes are queued for this watch: try again once it has
                        // caught up, not a whole period later.
                        st.ticks.reset_after(BOOKMARK_RETRY);
                    }
                }
            }
        }
    });
    changes
        .filter_map(move |item| {
            let out = match item {
                Item::Bookmark(obj) => Some(line("BOOKMARK", &obj)),
                Item::Change(change) => (change.revision > after
                    && change.key.starts_with(&prefix))
                .then(|| translate_change(&change, &opts, &enc))
                .flatten(),
            };
            futures::future::ready(out)
        })
        .boxed()
}

/// What a cached watch yields before encoding.
enum Item {
    Change(Arc<Change>),
    Bookmark(Value),
}

/// A BOOKMARK's object, without its resourceVersion.
fn bookmark_object(def: &Def) -> Value {
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {}})
}

/// A cached change as a watch event for a client with selectors, as [`translate`].
fn translate_change(change: &Change, opts: &ListOptions, enc: &Encoding) -> Option<Bytes> {
    if change.deleted {
        return opts
            .matches(&change.object)
            .then(|| enc.change_event("DELETED", change));
    }
    let now = opts.matches(&change.object);
    let before = change.prev.as_deref().is_some_and(|p| opts.matches(p));
    let kind = match (before, now) {
        (false, true) => "ADDED",
        (true, true) => "MODIFIED",
        (true, false) => "DELETED",
        (false, false) => return None,
    };
    Some(enc.change_event(kind, change))
}

/// The events of a watch that follows the store from revision `from`.
async fn stored_events(
    store: &pikube_raft::Store,
    prefix: String,
    from: i64,
    opts: ListOptions,
    enc: Encoding,
) -> Result<BoxStream<'static, Bytes>, ApiError> {
    let watcher = store
        .watch(WatchRequest::prefix(prefix.into_bytes(), from))
        .await;
    Ok(match watcher {
        Err(pikube_raft::Error::Compacted { .. }) => {
            let status = ApiError::gone(format!(
                "too old resource version: {} ({})",
                from - 1,
                store.compacted_revision() + 1
            ));
            futures::stream::iter(vec![line("ERROR", &status.to_status())]).boxed()
        }
        Err(e) => return Err(e.into()),
        Ok(w) => w
            .filter_map(move |ev| {
                let out = match ev {
                    Err(e) => {
                        let status = match e {
                            pikube_raft::Error::Compacted { .. } => ApiError::gone(e.to_string()),
                            other => ApiError::from(other),
                        };
                        Some(line("ERROR", &status.to_status()))
                    }
                    Ok(ev) => translate(&ev, &opts, &enc),
                };
                futures::future::ready(out)
            })
            .boxed(),
    })
}

/// Turns a store event into a watch event for a client with selectors: an object that
/// stops matching is DELETED for it, one that starts matching is ADDED.
fn translate(ev: &pikube_raft::Event, opts: &ListOptions, enc: &Encoding) -> Option<Bytes> {
    let prev = ev
        .prev_kv
        .as_ref()
        .and_then(|p| read_stored(&enc.def, &p.value, p.mod_revision).ok());
    match ev.kind {
        EventKind::Delete => {
            let mut obj = prev?;
            super::objects::meta(&mut obj).insert(
                "resourceVersion".into(),
                json!(ev.kv.mod_revision.to_string()),
            );
            opts.matches(&obj).then(|| enc.event("DELETED", &obj))
        }
        EventKind::Put => {
            let obj = read_stored(&enc.def, &ev.kv.value, ev.kv.mod_revision).ok()?;
            let now = opts.matches(&obj);
            let before = prev.as_ref().map(|p| opts.matches(p)).unwrap_or(false);
            match (before, now) {
                (false, true) => Some(enc.event("ADDED", &obj)),
                (true, true) => Some(enc.event("MODIFIED", &obj)),
                (true, false) => Some(enc.event("DELETED", &obj)),
                (false, false) => None,
            }
        }
    }
}
