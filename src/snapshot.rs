//! `pikube snapshot save|restore`: a consistent copy of the store, taken by a running
//! server into `<data-dir>/server/snapshots/` (asked by an admin, as k3s's
//! `etcd-snapshot save`), and a new one-node server's store created from such a copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use pikube_raft::Store;
use serde::{Deserialize, Serialize};

use crate::api::router::Identity;
use crate::api::status::ApiError;

/// Where an admin asks the server for a snapshot.
pub const SNAPSHOTS_PATH: &str = "/v1-pikube/snapshots";

/// The request: an optional name prefix.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SaveRequest {
    /// Name prefix of the file (default `on-demand`).
    #[serde(default)]
    pub name: Option<String>,
}

/// The answer: where the file is on the server's machine, and its revision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    /// Path of the snapshot file.
    pub path: PathBuf,
    /// Store revision the snapshot was taken at.
    pub revision: i64,
}

struct Snapshots {
    store: Store,
    dir: PathBuf,
}

/// The snapshot endpoint, merged into the API server's router; `dir` receives the files.
pub fn router(store: Store, dir: PathBuf) -> Router {
    Router::new()
        .route(SNAPSHOTS_PATH, post(save))
        .with_state(Arc::new(Snapshots { store, dir }))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
}

async fn save(State(s): State<Arc<Snapshots>>, req: Request) -> Response {
    let Some(identity) = req.extensions().get::<Identity>().cloned() else {
        return ApiError::unauthorized().into_response();
    };
    if !identity.groups.iter().any(|g| g == "system:masters") {
        return ApiError::forbidden(format!(
            "user {:?} may not take store snapshots (cluster admins only)",
            identity.user
        ))
        .into_response();
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 << 10).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(e.to_string()).into_response(),
    };
    let ask: SaveRequest = if body.is_empty() {
        SaveRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return ApiError::bad_request(format!("invalid snapshot request: {e}"))
                    .into_response()
            }
        }
    };
    let name = ask.name.unwrap_or_else(|| "on-demand".to_string());
    if !valid_name(&name) {
        return ApiError::bad_request(format!(
            "snapshot name {name:?} may only use letters, digits, '-', '_' and '.'"
        ))
        .into_response();
    }
    if let Err(e) = tokio::fs::create_dir_all(&s.dir).await {
        tracing::warn!(dir = %s.dir.display(), error = %e, "cannot create the snapshot directory");
        return ApiError::internal(format!("cannot create {}: {e}", s.dir.display()))
            .into_response();
    }
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let path = s.dir.join(format!("{name}-{seconds}.db"));
    match s.store.save_snapshot(&path).await {
        Ok(revision) => {
            tracing::info!(path = %path.display(), revision, "store snapshot saved");
            Json(Saved { path, revision }).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Asks the server of `kubeconfig` for a snapshot named `name`.
pub async fn save_via(kubeconfig: &Path, name: Option<String>) -> Result<Saved> {
    let client = crate::cli::kube_client(kubeconfig).await?;
    let body = serde_json::to_vec(&SaveRequest { name })?;
    let req = http::Request::post(SNAPSHOTS_PATH)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .context("request")?;
    client
        .request::<Saved>(req)
        .await
        .map_err(|e| anyhow::anyhow!("the server did not take the snapshot: {e}"))
}

/// Creates the store of a new one-node cluster in `<data_dir>/server/db` from the
/// snapshot `file`. The store directory must not hold a store: a restore never
/// overwrites one.
pub async fn restore(data_dir: &Path, file: &Path) -> Result<()> {
    let server = data_dir.join("server");
    let db = server.join("db");
    let config = pikube_raft::Config::single_node(&db);
    Store::restore(&config, file)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot restore {} into {}", file.display(), db.display()))?;
    // The restored store is a one-node cluster: no peer port until --cluster-init.
    let _ = std::fs::remove_file(server.join("clustered"));
    Ok(())
}
