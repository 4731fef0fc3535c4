//! `pikube killall`: stops everything a node agent left running (as k3s-killall.sh):
//! the processes of every pod cgroup, the containerd shims and the managed containerd,
//! the mounts under the data and run dirs, the pods' bridge and the pod cgroups. Used
//! before an uninstall, and by tests to leave the machine clean whatever happened.

use std::path::{Path, PathBuf};

/// What to clean up.
#[derive(Clone, Debug)]
pub struct Targets {
    /// The agent's data dir (mounts below it are removed).
    pub data_dir: PathBuf,
    /// The run dir (containerd socket and state).
    pub run_dir: PathBuf,
    /// Parent cgroup of the pods (`/kubepods`).
    pub cgroup_root: String,
    /// The pods' bridge.
    pub bridge: String,
    /// Also remove the service proxy's host state: its nftables table, its bridge and
    /// routes (left in place at shutdown so Services keep working across restarts).
    pub proxy: bool,
}

fn pids_in(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            pids_in(&e.path(), out);
        }
    }
}

/// Process ids whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| String::from_utf8_lossy(&b).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

fn kill(pids: &[i32]) {
    for pid in pids {
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
}

/// Unmounts every mount point below `dir` (deepest first, detached).
fn unmount_below(dir: &Path) {
    let Ok(canon) = dir.canonicalize() else {
        return;
    };
    let prefix = canon.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|m| m.replace("\\040", " "))
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Ok(c) = std::ffi::CString::new(t) {
            // SAFETY: a valid NUL-terminated path.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Stops and removes what the agent described by `t` left behind. Blocking.
pub fn run(t: &Targets) {
    let rel = t.cgroup_root.trim_matches('/');
    if !rel.is_empty() && !rel.contains("..") {
        let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(rel)];
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            dirs.push(e.path().join(rel));
        }
        // Twice: processes forked while the first pass ran are caught by the second.
        for _ in 0..2 {
            let mut pids = Vec::new();
            for d in &dirs {
                pids_in(d, &mut pids);
            }
            kill(&pids);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // Shims and the managed containerd name the run dir (socket, state) on their
    // command lines or in their config.
    kill(&pids_mentioning(&t.run_dir.to_string_lossy()));
    kill(&pids_mentioning(
        &t.data_dir.join("agent").to_string_lossy(),
    ));
    std::thread::sleep(std::time::Duration::from_millis(200));
    unmount_below(&t.run_dir);
    unmount_below(&t.data_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "delete", &t.bridge])
        .stderr(std::process::Stdio::null())
        .status();
    if !rel.is_empty() {
        let _ = pikube_runtime::cgroups::remove(rel);
    }
    if t.proxy {
        use pikube_netfilter::{NetNs, NodeNetwork, NodeNetworkConfig, Proxier};
        let mut cfg = NodeNetworkConfig::new();
        cfg.bridge = crate::proxy::BRIDGE.into();
        if let Err(e) = Proxier::new(NetNs::host(), crate::proxy::TABLE).uninstall() {
            eprintln!("pikube: cannot remove the nftables table: {e}");
        }
        if let Err(e) = NodeNetwork::new(NetNs::host(), cfg).uninstall() {
            eprintln!("pikube: cannot remove the service routes: {e}");
        }
    }
    // The CNI plugins' own state for this node's network (`pikube-<bridge>`).
    let network = format!("pikube-{}", t.bridge);
    let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&network));
    for e in std::fs::read_dir("/var/lib/cni/results")
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name()
            .to_string_lossy()
            .starts_with(&format!("{network}-"))
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
