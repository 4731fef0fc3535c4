//! `pikube snapshot save` on a running server and `pikube snapshot restore` into the data
//! directory of a new server, which then serves what the snapshot held.

use std::process::Command;

use crate::harness::{s, Server};

fn pikube(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(args)
        .output()
        .expect("run pikube")
}

fn restore(file: &str, data_dir: &std::path::Path) -> std::process::Output {
    pikube(&["snapshot", "restore", file, "--data-dir", s(data_dir)])
}

fn configmap(server: &Server, name: &str) {
    let file = server.file(
        &format!("{name}.yaml"),
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  k: v\n"),
    );
    server.ok("1.33", &["apply", "-f", s(&file)]);
}

#[test]
fn a_saved_snapshot_starts_a_new_server_with_its_objects() {
    let server = Server::start();
    configmap(&server, "before");
    let kubeconfig = server.kubeconfig();
    let out = pikube(&[
        "snapshot",
        "save",
        "--name",
        "test",
        "--kubeconfig",
        s(&kubeconfig),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = text
        .strip_prefix("saved ")
        .and_then(|t| t.split(" (revision").next())
        .expect("saved <path> (revision N)")
        .to_string();
    assert!(
        path.starts_with(s(&server.data_dir().join("server/snapshots"))),
        "{path}"
    );
    assert!(std::path::Path::new(&path).exists());
    configmap(&server, "after");

    // A bad name is a client mistake: one line, nothing written.
    let out = pikube(&[
        "snapshot",
        "save",
        "--name",
        "../x",
        "--kubeconfig",
        s(&kubeconfig),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("may only use letters"), "{err}");

    // Restoring over an existing store is refused; the store is untouched.
    let out = restore(&path, &server.data_dir());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
    server.ok("1.33", &["get", "configmap", "after"]);

    // The documented way back: stop the server, move its store away, restore, start.
    let mut server = server;
    server.stop();
    let db = server.data_dir().join("server/db");
    std::fs::rename(&db, server.data_dir().join("server/db.old")).expect("move the store away");
    let out = restore(&path, &server.data_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.restart();
    server.ok("1.33", &["get", "configmap", "before"]);
    let missing = server.fails("1.33", &["get", "configmap", "after"]);
    assert!(
        missing.contains("NotFound") || missing.contains("not found"),
        "{missing}"
    );
    // It goes on writing from the restored revision.
    configmap(&server, "new");
    server.ok("1.33", &["get", "configmap", "new"]);
}
