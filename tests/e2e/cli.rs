//! The `pikube` command line: passthrough to kubectl, flag errors.

use std::process::Command;

use crate::harness::{s, Server};

#[test]
fn pikube_kubectl_uses_the_servers_kubeconfig_unless_told_otherwise() {
    let server = Server::start();
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["kubectl", "get", "namespaces", "-o", "name", "--cache-dir"])
        .arg(server.data_dir().join("kubectl-cache"))
        .env("KUBECONFIG", server.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("namespace/kube-system"));
    // Flags after `kubectl` belong to kubectl, including --help.
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args([
            "kubectl",
            "--kubeconfig",
            s(&server.kubeconfig()),
            "version",
            "--client",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("clientVersion"));
    // Without kubectl on PATH: one line that says so.
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["kubectl", "get", "pods"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("kubectl is not installed"), "{err}");
}

#[test]
fn bad_flags_get_a_clear_message() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pikube"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["server", "--https-listen-port", "notaport"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'notaport'"));
    let out = run(&["server", "--write-kubeconfig-mode", "999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an octal file mode"));
    let out = run(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("pikube "));
}

#[test]
fn check_config_prints_one_line_per_check_and_fails_on_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["check-config", "--bind-address", "127.0.0.1", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 12, "{text}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("[pass]") || l.starts_with("[warn]") || l.starts_with("[FAIL]")),
        "{text}"
    );
    for name in [
        "kernel",
        "memory cgroup",
        "containerd",
        "runc",
        "nft",
        "CNI plugins",
        "data dir",
        "port",
    ] {
        assert!(
            lines.iter().any(|l| l[7..].starts_with(name)),
            "{name} missing:\n{text}"
        );
    }
    let failed = lines.iter().any(|l| l.starts_with("[FAIL]"));
    assert_eq!(
        out.status.code(),
        Some(if failed { 1 } else { 0 }),
        "{text}"
    );
}
