// Each example uses a different part of this module.
#![allow(dead_code)]

//! What the benchmarks share: a release `pikube server` in a temp dir, killed when
//! dropped, with a kube client for it, and process RSS.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A running benchmark server; killed when dropped.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// Its temp dir (data dir and kubeconfig inside).
    pub dir: tempfile::TempDir,
    /// A client with the admin kubeconfig.
    pub client: Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release `pikube` binary next to the running example.
pub fn pikube_bin() -> anyhow::Result<PathBuf> {
    std::env::current_exe()?
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("pikube"))
        .ok_or_else(|| anyhow::anyhow!("no target dir"))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Resident memory of process `pid` in MB.
pub fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Starts `pikube server` on a free loopback port with `extra` flags; `prepare` may put
/// files into the data dir first.
pub async fn start(extra: &[String], prepare: impl FnOnce(&Path)) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    prepare(&dir.path().join("data"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bin = pikube_bin()?;
    let kubeconfig = dir.path().join("kubeconfig");
    let child = Command::new(&bin)
        .args([
            "server",
            "--config",
            "/dev/null",
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kubeconfig.exists() {
        anyhow::ensure!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kc = Kubeconfig::read_from(&kubeconfig)?;
    let client =
        Client::try_from(Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)?;
    Ok(Server { child, dir, client })
}
