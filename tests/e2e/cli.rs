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
