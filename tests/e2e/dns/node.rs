//! The node-local cluster DNS address, in a network namespace of the test's own.

use std::process::Command;
use std::time::{Duration, Instant};

use super::wait_for;

/// A network namespace of the test's own, deleted (with what runs in it) when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("pkdns-{:08x}", rand::random::<u32>());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(args);
        cmd
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("run");
    assert!(status.success(), "{args:?}");
}

#[test]
fn dns_answers_on_the_cluster_dns_address_on_lo_and_removes_it() {
    // In a namespace of its own, so the host's addresses stay untouched.
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let child = ns
        .cmd(&[
            env!("CARGO_BIN_EXE_pikube"),
            "server",
            "--config",
            "/dev/null",
            "--disable-agent",
        ])
        .args(["--bind-address", "127.0.0.1", "--https-listen-port", "6443"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .arg("--resolv-conf")
        .arg(&resolv)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pikube in the namespace");
    let mut server = crate::harness::ChildGuard(child);
    let dig = || {
        ns.exec(&[
            "dig",
            "@10.43.0.10",
            "+short",
            "+tries=1",
            "+time=1",
            "kube-dns.kube-system.svc.cluster.local",
        ])
    };
    wait_for(30, "the DNS on 10.43.0.10:53", || {
        (dig().trim() == "10.43.0.10").then_some(())
    });
    assert!(
        ns.exec(&["ip", "-o", "addr", "show", "dev", "lo"])
            .contains("10.43.0.10/32"),
        "the cluster DNS address is on lo"
    );
    let pid = server.0.id().to_string();
    run(&["kill", "-TERM", &pid]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.0.try_wait().ok().flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "pikube did not stop; log:\n{}",
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        !ns.exec(&["ip", "-o", "addr", "show", "dev", "lo"])
            .contains("10.43.0.10"),
        "the address is removed at shutdown; log:\n{log}"
    );
}
