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

#[test]
fn server_flags_come_from_the_config_file_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (file_port, cli_port) = (free(), free());
    let kubeconfig = dir.path().join("kc");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "data-dir: {}\nbind-address: 127.0.0.1\nhttps-listen-port: {file_port}\nwrite-kubeconfig: {}\ndisable-agent: true\n",
            dir.path().join("data").display(),
            kubeconfig.display()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args([
            "server",
            "--config",
            s(&config),
            "--https-listen-port",
            &cli_port.to_string(),
            // Killed at the end: no cluster DNS address left on the host's `lo`.
            "--disable",
            "dns",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _guard = crate::harness::ChildGuard(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server from the config file did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let kc = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(
        kc.contains(&format!("https://127.0.0.1:{cli_port}")),
        "the command line's port wins: {kc}"
    );
    assert!(
        dir.path().join("data/server/db").exists(),
        "data-dir came from the file"
    );

    std::fs::write(&config, "data_dir: /nowhere\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["server", "--config", s(&config)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unknown key \"data_dir\""), "{err}");
}

#[test]
fn shell_completions_load_in_their_shells() {
    let completion = |shell: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // bash: the script loads and completes pikube's subcommands.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pikube.bash");
    std::fs::write(&script, completion("bash")).unwrap();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {}; COMP_WORDS=(pikube to); COMP_CWORD=1; COMP_LINE='pikube to'; COMP_POINT=9; \
             _pikube pikube to pikube; complete -p pikube; echo \"${{COMPREPLY[@]}}\"",
            s(&script)
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("-F _pikube pikube"), "{text}");
    assert!(text.lines().any(|l| l.trim() == "token"), "{text}");
    assert!(completion("zsh").starts_with("#compdef pikube"));
    let fish = completion("fish");
    assert!(fish.contains("complete -c pikube") && fish.contains("check-config"));
    let out = Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
