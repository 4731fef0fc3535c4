//! `pikube check-config`: what this machine needs to run a pikube node, checked one item
//! at a time with a readable pass/fail line each, and the fix where there is a known one.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Present and usable.
    Pass(String),
    /// Works, but something is worth knowing.
    Warn(String),
    /// Missing or unusable: pikube will not work until it is fixed.
    Fail(String),
}

/// One named check and its outcome.
#[derive(Clone, Debug)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// What was found.
    pub outcome: Outcome,
}

/// Where the checks look (paths are parameters so tests can point them elsewhere).
#[derive(Clone, Debug)]
pub struct Environment {
    /// Root of the cgroup file systems.
    pub cgroup_root: PathBuf,
    /// `/proc` (for kernel version and sysctls).
    pub proc_root: PathBuf,
    /// Directory of the CNI plugins.
    pub cni_bin_dir: PathBuf,
    /// Data directory that must be writable.
    pub data_dir: PathBuf,
    /// Address the ports are checked on.
    pub bind_address: IpAddr,
    /// Ports that must be free.
    pub ports: Vec<u16>,
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
}

fn binary(name: &'static str, package: &str) -> Check {
    let outcome = match on_path(name) {
        Some(p) => Outcome::Pass(p.display().to_string()),
        None => Outcome::Fail(format!(
            "not found on PATH; install the Debian package `{package}`"
        )),
    };
    Check { name, outcome }
}

fn kernel(env: &Environment) -> Check {
    let release =
        std::fs::read_to_string(env.proc_root.join("sys/kernel/osrelease")).unwrap_or_default();
    let release = release.trim().to_string();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let outcome = match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) if (major, minor) >= (5, 4) => Outcome::Pass(release),
        (Some(_), Some(_)) => {
            Outcome::Warn(format!("{release}: kernels before 5.4 are not tested"))
        }
        _ => Outcome::Fail("cannot read the kernel version".into()),
    };
    Check {
        name: "kernel",
        outcome,
    }
}

fn memory_cgroup(env: &Environment) -> Check {
    let v2 = env.cgroup_root.join("cgroup.controllers");
    let unified = env.cgroup_root.join("unified/cgroup.controllers");
    let v1 = env.cgroup_root.join("memory");
    let controllers = std::fs::read_to_string(&v2)
        .ok()
        .or_else(|| std::fs::read_to_string(&unified).ok());
    let outcome = if v1.is_dir() {
        Outcome::Pass(format!("cgroup v1 memory controller at {}", v1.display()))
    } else if controllers
        .as_deref()
        .is_some_and(|c| c.split_whitespace().any(|x| x == "memory"))
    {
        Outcome::Pass("cgroup v2 with the memory controller".into())
    } else {
        Outcome::Fail(
            "the memory cgroup is not enabled. On Raspberry Pi OS add `cgroup_memory=1 cgroup_enable=memory` to the end of the single line in /boot/firmware/cmdline.txt (/boot/cmdline.txt on older releases) and reboot"
                .into(),
        )
    };
    Check {
        name: "memory cgroup",
        outcome,
    }
}

fn cni_plugins(env: &Environment) -> Check {
    let missing: Vec<&str> = ["bridge", "host-local", "portmap", "loopback"]
        .into_iter()
        .filter(|p| !env.cni_bin_dir.join(p).is_file())
        .collect();
    let outcome = if missing.is_empty() {
        Outcome::Pass(env.cni_bin_dir.display().to_string())
    } else {
        Outcome::Fail(format!(
            "missing {} in {}; install the Debian package `containernetworking-plugins`",
            missing.join(", "),
            env.cni_bin_dir.display()
        ))
    };
    Check {
        name: "CNI plugins",
        outcome,
    }
}

fn ip_forward(env: &Environment) -> Check {
    let v =
        std::fs::read_to_string(env.proc_root.join("sys/net/ipv4/ip_forward")).unwrap_or_default();
    let outcome = match v.trim() {
        "1" => Outcome::Pass("enabled".into()),
        "0" => Outcome::Warn(
            "disabled; pods on other nodes and services need it: sysctl -w net.ipv4.ip_forward=1"
                .into(),
        ),
        _ => Outcome::Fail("cannot read net.ipv4.ip_forward".into()),
    };
    Check {
        name: "ip_forward",
        outcome,
    }
}

fn port(addr: IpAddr, port: u16) -> Check {
    let outcome = match TcpListener::bind(SocketAddr::new(addr, port)) {
        Ok(_) => Outcome::Pass(format!("{addr}:{port} is free")),
        Err(e) => Outcome::Fail(format!("{addr}:{port} cannot be used: {e}")),
    };
    Check {
        name: "port",
        outcome,
    }
}

fn writable(dir: &Path) -> Check {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => break,
        }
    }
    let test = probe.join(format!(".pikube-check-{}", std::process::id()));
    let outcome = match std::fs::write(&test, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&test);
            Outcome::Pass(format!("{} can be created", dir.display()))
        }
        Err(e) => Outcome::Fail(format!("{} cannot be written: {e}", probe.display())),
    };
    Check {
        name: "data dir",
        outcome,
    }
}

/// Runs every check.
pub fn run(env: &Environment) -> Vec<Check> {
    let mut checks = vec![
        kernel(env),
        memory_cgroup(env),
        binary("containerd", "containerd"),
        binary("runc", "runc"),
        binary("nft", "nftables"),
        binary("ip", "iproute2"),
        cni_plugins(env),
        ip_forward(env),
        writable(&env.data_dir),
    ];
    checks.extend(env.ports.iter().map(|p| port(env.bind_address, *p)));
    checks
}

/// The report: one line per check; the second value is whether all passed.
pub fn report(checks: &[Check]) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    for c in checks {
        let (tag, text) = match &c.outcome {
            Outcome::Pass(t) => ("pass", t),
            Outcome::Warn(t) => ("warn", t),
            Outcome::Fail(t) => {
                ok = false;
                ("FAIL", t)
            }
        };
        out.push_str(&format!("[{tag}] {:<14} {text}\n", c.name));
    }
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(root: &Path) -> Environment {
        Environment {
            cgroup_root: root.join("cgroup"),
            proc_root: root.join("proc"),
            cni_bin_dir: root.join("cni"),
            data_dir: root.join("data/pikube"),
            bind_address: IpAddr::from([127, 0, 0, 1]),
            ports: vec![],
        }
    }

    #[test]
    fn missing_pieces_fail_with_their_fix() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(dir.path());
        std::fs::create_dir_all(dir.path().join("proc/sys/kernel")).unwrap();
        std::fs::write(
            dir.path().join("proc/sys/kernel/osrelease"),
            "6.1.0-rpi7-rpi-v8\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("cgroup")).unwrap();
        std::fs::write(
            dir.path().join("cgroup/cgroup.controllers"),
            "cpuset cpu io pids\n",
        )
        .unwrap();
        let checks = run(&e);
        let by_name = |n: &str| checks.iter().find(|c| c.name == n).unwrap().outcome.clone();
        assert!(matches!(by_name("kernel"), Outcome::Pass(v) if v.starts_with("6.1.0")));
        assert!(
            matches!(by_name("memory cgroup"), Outcome::Fail(m) if m.contains("cgroup_enable=memory") && m.contains("cmdline.txt"))
        );
        assert!(
            matches!(by_name("CNI plugins"), Outcome::Fail(m) if m.contains("containernetworking-plugins"))
        );
        assert!(matches!(by_name("data dir"), Outcome::Pass(_)));
        let (text, ok) = report(&checks);
        assert!(!ok);
        assert!(text.lines().all(|l| l.starts_with("[pass]")
            || l.starts_with("[warn]")
            || l.starts_with("[FAIL]")));

        std::fs::write(
            dir.path().join("cgroup/cgroup.controllers"),
            "cpuset cpu memory pids\n",
        )
        .unwrap();
        assert!(matches!(memory_cgroup(&e).outcome, Outcome::Pass(_)));
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = busy.local_addr().unwrap().port();
        assert!(matches!(
            port(IpAddr::from([127, 0, 0, 1]), p).outcome,
            Outcome::Fail(_)
        ));
    }
}
