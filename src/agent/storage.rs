//! The node's side of the local-path provisioner: publishes where this node keeps
//! local-path volumes (the [`STORAGE_DIR`] annotation on its Node, `<data-dir>/storage`
//! as k3s's `/var/lib/rancher/k3s/storage`), creates the directory of each volume
//! provisioned on this node, and — once such a volume is Released with reclaim policy
//! Delete — removes its directory and then the volume. Only this node touches its disk.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, PersistentVolume};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::controllers::persistentvolume::provisioner::VOLUME_NODE;
use crate::controllers::persistentvolume::{LOCAL_PATH_PROVISIONER, PROVISIONED_BY, STORAGE_DIR};
use crate::controllers::{self, Context, Error, Result};

/// What the volume loop knows about its node.
struct Local {
    node: String,
    dir: PathBuf,
}

/// The directory of `pv` when it is a local-path volume of `node` inside `dir`; None
/// for anything else (so a volume that names some other path is never touched).
fn local_dir(pv: &PersistentVolume, node: &str, dir: &Path) -> Option<PathBuf> {
    let ann = pv.metadata.annotations.as_ref()?;
    if ann.get(PROVISIONED_BY).map(String::as_str) != Some(LOCAL_PATH_PROVISIONER)
        || ann.get(VOLUME_NODE).map(String::as_str) != Some(node)
    {
        return None;
    }
    let path = PathBuf::from(&pv.spec.as_ref()?.host_path.as_ref()?.path);
    let name = path.file_name()?.to_str()?;
    let inside = path.parent() == Some(dir)
        && name.starts_with(&format!("{}_", pv.name_any()))
        && !name.contains('/');
    inside.then_some(path)
}

/// Creates a local-path volume's directory, writable by any container user (as k3s's
/// provisioner makes it); an existing directory is left as it is.
pub fn create_open_dir(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(p) {
        Ok(()) => std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Publishes the storage directory on the Node, then keeps the local volumes' directories
/// until `shutdown`.
pub async fn run(
    client: Client,
    node: String,
    dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    std::fs::create_dir_all(&dir).map_err(|e| Error::Object(format!("{}: {e}", dir.display())))?;
    // The provisioner places volumes only on nodes that publish their directory: keep
    // trying (the Node may not be registered yet, the server may be restarting).
    let patch = json!({"metadata": {"annotations": {STORAGE_DIR: dir.to_string_lossy()}}});
    let mut shutdown = Box::pin(shutdown);
    let mut wait = std::time::Duration::from_millis(200);
    while let Err(e) = Api::<Node>::all(client.clone())
        .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "cannot publish the local-path storage directory yet");
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
    let local = Arc::new(Local { node, dir });
    let ctx = Arc::new(Context {
        client: client.clone(),
    });
    let controller = Controller::new(
        Api::<PersistentVolume>::all(client),
        controllers::watch_config(),
    );
    controllers::run(
        "local-path-volumes",
        controller,
        move |pv, ctx| reconcile(pv, ctx, local.clone()),
        ctx,
        shutdown,
    )
    .await;
    Ok(())
}

async fn reconcile(
    pv: Arc<PersistentVolume>,
    ctx: Arc<Context>,
    local: Arc<Local>,
) -> Result<Action> {
    let Some(path) = local_dir(&pv, &local.node, &local.dir) else {
        return Ok(Action::await_change());
    };
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    let io = |e: std::io::Error| Error::Object(format!("{}: {e}", path.display()));
    if released && delete {
        let p = path.clone();
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await
        .map_err(|e| Error::Object(e.to_string()))?
        .map_err(io)?;
        tracing::info!(volume = %pv.name_any(), path = %path.display(), "removed released volume");
        match Api::<PersistentVolume>::all(ctx.client.clone())
            .delete(&pv.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    } else if pv.metadata.deletion_timestamp.is_none() && !released {
        let p = path.clone();
        tokio::task::spawn_blocking(move || create_open_dir(&p))
            .await
            .map_err(|e| Error::Object(e.to_string()))?
            .map_err(io)?;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_nodes_volumes_inside_its_directory_are_touched() {
        let pv = |node: &str, path: &str| -> PersistentVolume {
            serde_json::from_value(json!({
                "metadata": {"name": "pvc-1", "annotations": {PROVISIONED_BY: LOCAL_PATH_PROVISIONER, VOLUME_NODE: node}},
                "spec": {"hostPath": {"path": path}},
            }))
            .expect("pv")
        };
        let dir = Path::new("/data/storage");
        assert_eq!(
            local_dir(&pv("a", "/data/storage/pvc-1_ns_c"), "a", dir),
            Some(PathBuf::from("/data/storage/pvc-1_ns_c"))
        );
        assert_eq!(
            local_dir(&pv("b", "/data/storage/pvc-1_ns_c"), "a", dir),
            None
        );
        assert_eq!(local_dir(&pv("a", "/etc"), "a", dir), None);
        assert_eq!(
            local_dir(&pv("a", "/data/storage/../x/pvc-1_ns_c"), "a", dir),
            None
        );
        assert_eq!(
            local_dir(&pv("a", "/data/storage/pvc-2_ns_c"), "a", dir),
            None
        );
    }
}
