//! Watch: a newline-delimited stream of `{"type", "object"}` events, as client-go's
//! reflector and `kubectl get -w` read it.
//!
//! Each watch follows the store from the requested revision; a revision that was
//! compacted gives one ERROR event with a 410 Expired Status, after which clients relist.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pikube_raft::{EventKind, WatchRequest};
use serde_json::{json, Value};

use super::objects::read_stored;
use super::resources::Def;
use super::rest::{self, ListOptions, Registry, Target};
use super::status::ApiError;
use super::table::{self, IncludeObject};

/// Longest watch when the client names no timeout (kube-apiserver picks 30-60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// Interval of BOOKMARK events for clients that allow them.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

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
    let mut initial: Vec<Bytes> = Vec::new();
    let from = match params.resource_version.as_str() {
        "" | "0" => {
            let listed = rest::list(
                &reg,
                &target,
                &ListOptions {
                    limit: 0,
                    continue_token: None,
                    ..params.opts.clone()
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
    let prefix = match (&target.namespace, target.def.namespaced) {
        (Some(ns), true) => format!("{}{ns}/", target.def.storage_prefix()),
        _ => target.def.storage_prefix(),
    };
    let single = target.name.clone();
    let opts = params.opts;
    let watcher = store
        .watch(WatchRequest::prefix(prefix.clone().into_bytes(), from))
        .await;
    let events: futures::stream::BoxStream<'static, Bytes> = match watcher {
        Err(pikube_raft::Error::Compacted { .. }) => {
            let status = ApiError::gone(format!(
                "too old resource version: {} ({})",
                from - 1,
                store.compacted_revision() + 1
            ));
            futures::stream::iter(vec![line("ERROR", &status.to_status())]).boxed()
        }
        Err(e) => return Err(e.into()),
        Ok(w) => {
            let name_key = single.map(|n| format!("{prefix}{n}"));
            w.filter_map(move |ev| {
                let out = match ev {
                    Err(e) => {
                        let status = match e {
                            pikube_raft::Error::Compacted { .. } => ApiError::gone(e.to_string()),
                            other => ApiError::from(other),
                        };
                        Some(line("ERROR", &status.to_status()))
                    }
                    Ok(ev) => {
                        if name_key
                            .as_deref()
                            .is_some_and(|k| k.as_bytes() != ev.kv.key.as_slice())
                        {
                            None
                        } else {
                            translate(&ev, &opts, &enc)
                        }
                    }
                };
                futures::future::ready(out)
            })
            .boxed()
        }
    };
    let timeout = params.timeout.unwrap_or(DEFAULT_TIMEOUT);
    let bookmarks = params.bookmarks;
    let kind = target.def.kind.clone();
    let api_version = target.def.api_version();
    let store_for_bookmarks = store.clone();
    let ticks = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(BOOKMARK_EVERY).await;
        Some(((), ()))
    })
    .filter_map(move |()| {
        let rv = store_for_bookmarks.current_revision();
        let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}});
        futures::future::ready(bookmarks.then(|| line("BOOKMARK", &obj)))
    });
    let merged = futures::stream::select(events, ticks);
    let stream = futures::stream::iter(initial)
        .chain(merged)
        .take_until(tokio::time::sleep(timeout))
        .map(Ok);
    Ok(stream)
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
