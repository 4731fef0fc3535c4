//! OpenAPI v3, as kube-apiserver publishes it: `/openapi/v3` lists one document per
//! group-version (with a content hash in its URL, so clients cache it for good), and each
//! document holds the group's operations and schemas. kubectl needs them for `apply`,
//! `create -f`, `edit`, `diff` (field validation, patch computation) and `explain`.
//!
//! The schemas are generated at build time from k8s-openapi's and completed with the
//! merge facts of the vendored `.proto` files (`build/openapi.rs`); [`schema`] is their
//! structure, which field validation and strategic merge patch walk.

mod custom;
mod document;
pub mod schema;
mod v2;

mod generated {
    include!(concat!(env!("OUT_DIR"), "/openapi/generated.rs"));
}

use std::sync::OnceLock;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::status::ApiError;
use super::{ApiServer, Identity};

/// Upper-case hex SHA-256 of `bytes`: the hashes and ETags of the documents.
fn hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// Whether the request's `If-None-Match` names `etag`.
fn not_modified(req: &Request, etag: &str) -> bool {
    req.headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
}

/// Content hash of every document, by path (computed once: the documents are static).
fn hashes() -> &'static [(&'static str, String)] {
    static HASHES: OnceLock<Vec<(&'static str, String)>> = OnceLock::new();
    HASHES.get_or_init(|| {
        document::paths()
            .filter_map(|p| {
                let doc = document::build(p)?;
                Some((p, hash(doc.as_bytes())))
            })
            .collect()
    })
}

/// The custom resource documents served now, with their hashes (built per request:
/// definitions change while serving).
fn custom_documents(api: &ApiServer) -> Vec<(String, String, String)> {
    custom::paths(api.catalog())
        .into_iter()
        .filter_map(|p| {
            let doc = custom::build(api.catalog(), &p)?;
            let h = hash(doc.as_bytes());
            Some((p, h, doc))
        })
        .collect()
}

/// `GET /openapi/v3`: where each group-version's document is.
pub async fn index(State(api): State<ApiServer>, req: Request) -> Response {
    if req.extensions().get::<Identity>().is_none() {
        return ApiError::unauthorized().into_response();
    }
    let custom: Vec<(String, String)> = custom_documents(&api)
        .into_iter()
        .map(|(p, h, _)| (p, h))
        .collect();
    let paths: Map<String, Value> = hashes()
        .iter()
        .map(|(p, h)| (p.to_string(), h.clone()))
        .chain(custom)
        .map(|(p, h)| {
            (
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={h}")}),
            )
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "paths": paths }).to_string(),
    )
        .into_response()
}

/// `GET /openapi/v3/<path>`: one document; immutable when asked for by its hash.
pub async fn group_version(State(api): State<ApiServer>, req: Request) -> Response {
    if req.extensions().get::<Identity>().is_none() {
        return ApiError::unauthorized().into_response();
    }
    let path = req
        .uri()
        .path()
        .trim_start_matches("/openapi/v3/")
        .trim_end_matches('/')
        .to_string();
    let (hash, custom_doc) = match hashes().iter().find(|(p, _)| *p == path) {
        Some((_, h)) => (h.clone(), None),
        None => match custom::build(api.catalog(), &path) {
            Some(doc) => (hash(doc.as_bytes()), Some(doc)),
            None => return ApiError::no_route(req.uri().path()).into_response(),
        },
    };
    let hash = &hash;
    let asked = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<Vec<(String, String)>>(q).ok())
        .and_then(|q| q.into_iter().find(|(k, _)| k == "hash").map(|(_, v)| v));
    let current = format!("/openapi/v3/{path}?hash={hash}");
    if asked.as_deref().is_some_and(|h| h != hash) {
        // An outdated hash: kube-apiserver sends the client to the current document.
        return (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, current)]).into_response();
    }
    let etag = format!("\"{hash}\"");
    let cache = if asked.is_some() {
        "public, immutable, max-age=31536000"
    } else {
        "no-cache, private"
    };
    if not_modified(&req, &etag) {
        return (
            StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_string()),
            ],
        )
            .into_response();
    }
    match custom_doc.or_else(|| document::build(&path)) {
        Some(doc) => (
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_string()),
            ],
            doc,
        )
            .into_response(),
        None => ApiError::no_route(req.uri().path()).into_response(),
    }
}

/// `GET /openapi/v2`: every group in one document, in protobuf when asked for (as kubectl
/// up to 1.28 does), else JSON.
pub async fn swagger(req: Request) -> Response {
    if req.extensions().get::<Identity>().is_none() {
        return ApiError::unauthorized().into_response();
    }
    let wants_protobuf = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(v2::wants_protobuf);
    // The document is static: its ETag is kept once known, so a revalidation is answered
    // without building it; the body itself is built per request (rare: clients keep it
    // by its ETag) instead of being held in memory.
    static ETAGS: [OnceLock<String>; 2] = [OnceLock::new(), OnceLock::new()];
    let known = &ETAGS[usize::from(wants_protobuf)];
    if let Some(etag) = known.get().filter(|e| not_modified(&req, e)) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response();
    }
    let doc = tokio::task::spawn_blocking(move || {
        let doc = v2::json();
        if wants_protobuf {
            (v2::PROTOBUF, v2::protobuf(&doc))
        } else {
            ("application/json", doc.to_string().into_bytes())
        }
    })
    .await;
    let Ok((content_type, body)) = doc else {
        return ApiError::internal("cannot build the OpenAPI v2 document").into_response();
    };
    let etag = known.get_or_init(|| format!("\"{}\"", hash(&body))).clone();
    if not_modified(&req, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, "no-cache, private".to_string()),
        ],
        body,
    )
        .into_response()
}
