//! Pod-level cgroups. runc creates `<cgroup_parent>/<container id>` in every hierarchy
//! and removes it again, but nothing removes the pod's parent: the agent does, with
//! [`remove`], once the pod's sandbox is gone. Works on cgroup v1 (one directory per
//! controller, as on Raspberry Pi OS and Debian without systemd) and on v2.

use std::path::{Component, Path};

use crate::Error;

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Removes the cgroup `parent` (e.g. `/pikube/pod<uid>`, the `cgroup_parent` given to
/// RunPodSandbox) and any empty child cgroups left in it, from every hierarchy. A cgroup
/// that still has processes is not removed (the kernel refuses) and is reported.
/// Missing directories are fine. Blocking: call it from spawn_blocking.
pub fn remove(parent: &str) -> Result<(), Error> {
    remove_under(Path::new(CGROUP_ROOT), parent)
}

fn remove_under(root: &Path, parent: &str) -> Result<(), Error> {
    let rel = Path::new(parent.trim_start_matches('/'));
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || rel.as_os_str().is_empty() {
        return Err(Error::Config(format!("cgroup parent {parent:?}")));
    }
    let mut dirs = vec![root.join(rel)];
    // cgroup v1: one directory per controller hierarchy (and v2's `unified`).
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path().join(rel));
            }
        }
    }
    let mut first_error = None;
    for dir in dirs {
        if let Err(e) = remove_tree(&dir) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// rmdir of a cgroup directory, children first (cgroup files cannot be unlinked and
/// vanish with their directory).
fn remove_tree(dir: &Path) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read cgroup", dir, e)),
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove cgroup", dir, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_hierarchy() {
        for bad in ["", "/", "/../etc", "/pikube/../../x", "./x"] {
            assert!(remove(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn removes_nested_dirs_in_every_hierarchy() {
        // A stand-in tree (plain directories behave like empty cgroups for rmdir).
        let root = tempfile::tempdir().unwrap();
        for h in ["cpu", "memory", "unified"] {
            std::fs::create_dir_all(root.path().join(h).join("pikube/podx/ctr")).unwrap();
        }
        remove_under(root.path(), "/pikube/podx").unwrap();
        for h in ["cpu", "memory", "unified"] {
            assert!(!root.path().join(h).join("pikube/podx").exists());
            assert!(root.path().join(h).join("pikube").exists(), "siblings kept");
        }
        // Idempotent.
        remove_under(root.path(), "/pikube/podx").unwrap();
    }
}
