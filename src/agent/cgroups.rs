//! Pod cgroups: runc creates `<pod cgroup>/<container>` in every hierarchy, but nothing
//! removes the pod's own cgroup when the pod goes, so the agent does.

use std::path::Path;

/// Mount point of the cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes cgroup `path` (e.g. `/kubepods/pod<uid>`) from every hierarchy (cgroup v1 and
/// v2), deepest first; what is still busy or absent is left.
pub async fn remove(path: &str) {
    let rel = path.trim_start_matches('/').to_string();
    if rel.is_empty() || rel.contains("..") {
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        let mut dirs = vec![Path::new(CGROUP_ROOT).join(&rel)];
        if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
            for e in entries.flatten() {
                dirs.push(e.path().join(&rel));
            }
        }
        for dir in dirs {
            remove_tree(&dir);
        }
    })
    .await;
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
