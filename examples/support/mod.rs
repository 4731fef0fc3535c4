//! What the benchmarks share: a release `pikube server` in a temp dir and a client of it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running release server; killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// Its temp dir (state, kubeconfig), removed when dropped.
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `pikube` binary next to this example's directory (same profile).
fn pikube_bin() -> anyhow::Result<PathBuf> {
    std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("pikube"))
        .ok_or_else(|| anyhow::anyhow!("no target dir"))
}

/// Starts `pikube server --disable-agent` with `extra` flags and returns it with an admin
/// client once its kubeconfig is written.
pub async fn start_server(extra: &[&str]) -> anyhow::Result<(Server, Client)> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let bin = pikube_bin()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let child = Command::new(&bin)
        .args([
            "server",
            "--config",
            "/dev/null",
            "--disable-agent",
            "--bind-address",
            "127.0.0.1",
        ])
        .arg("--https-listen-port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start {} ({e}); run `cargo build --release` first",
                bin.display()
            )
        })?;
    let server = Server { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        anyhow::ensure!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kc = Kubeconfig::read_from(&kubeconfig)?;
    let client =
        Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    Ok((server, client))
}
