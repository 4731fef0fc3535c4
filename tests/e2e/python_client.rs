//! The Python `kubernetes` client package (from PyPI) against a real pikube server.

use crate::harness::{s, Server};

#[test]
fn python_kubernetes_client_works() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import kubernetes"])
        .output();
    assert!(
        probe.as_ref().map(|o| o.status.success()).unwrap_or(false),
        "the Python `kubernetes` package is needed: `make deps` (or `python3 -m pip install kubernetes`)"
    );
    let server = Server::start();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/e2e/python/client_check.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(s(&server.kubeconfig()))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python client check failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
