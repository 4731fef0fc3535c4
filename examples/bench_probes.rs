//! `make bench-probes`: the node agent's probe clients and log rotation against peers in
//! the same run. HTTPS httpGet probes (one TLS connection and GET per probe, as kubelet)
//! against curl fetching the same URL over a new TLS connection per transfer; gRPC health
//! checks (no peer installed: absolute figures); gzip of a rotated 10 MiB container log
//! (flate2's pure-Rust backend) against GNU gzip at the same level. Printed: per-probe
//! p50/p99 and pikube's ratio to the peer; MB/s and compressed size.
//!
//! Needs `curl` and `gzip`. `BENCH_PROBES` sets the number of probes (default 500).

#[path = "../tests/support/probe_servers.rs"]
mod probe_servers;

use std::process::Command;
use std::time::{Duration, Instant};

use pikube::agent::log_rotation::{self, Policy};
use pikube::agent::probes::{grpc, http};
use probe_servers::{Answer, GrpcHealth, HttpsTarget};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50 and p99 of `samples` (ms).
fn summary(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// curl fetching `url` `n` times, each over a new connection; per-transfer ms.
fn curl(url: &str, n: usize, dir: &std::path::Path) -> anyhow::Result<Vec<f64>> {
    let config = dir.join("curl.conf");
    let mut text = String::new();
    for _ in 0..n {
        text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    std::fs::write(&config, text)?;
    let out = Command::new("curl")
        .args([
            "-sk",
            "-H",
            "Connection: close",
            "-H",
            "User-Agent: kube-probe/1.33",
        ])
        .args(["-w", "%{time_total}\\n", "-K"])
        .arg(&config)
        .output()?;
    anyhow::ensure!(out.status.success(), "curl failed: {:?}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|s| s * 1000.0)
        .collect())
}

/// A CRI-format log of about `bytes`.
fn log_text(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 128);
    let mut i = 0u64;
    while s.len() < bytes {
        s.push_str(&format!(
            "2026-11-26T10:00:{:02}.{:09}Z stdout F GET /api/items/{} 200 {}µs user=u{}\n",
            (i / 1000) % 60,
            i % 1_000_000_000,
            i % 977,
            100 + i % 313,
            i % 41
        ));
        i += 1;
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_PROBES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir()?;
    let timeout = Duration::from_secs(5);

    let https = HttpsTarget::start(|_| Answer::new(200, "ok")).await;
    let url = format!("https://127.0.0.1:{}/healthz", https.port);
    let probe = http::Probe {
        url: http::Url {
            https: true,
            host: "127.0.0.1".into(),
            port: https.port,
            path: "/healthz".into(),
        },
        headers: Vec::new(),
    };
    let mut ours = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        probe
            .run(timeout)
            .await
            .map_err(|e| anyhow::anyhow!("probe failed: {e}"))?;
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let url2 = url.clone();
    let path = dir.path().to_path_buf();
    let theirs = tokio::task::spawn_blocking(move || curl(&url2, n, &path)).await??;
    let (p50, p99) = summary(ours);
    let (c50, c99) = summary(theirs);
    println!("HTTPS httpGet probe, {n} probes, new TLS connection each ({url})");
    println!("  pikube prober   p50 {p50:.2} ms  p99 {p99:.2} ms");
    println!("  curl -k         p50 {c50:.2} ms  p99 {c99:.2} ms");
    println!("  ratio pikube/curl p50 {:.2}x", p50 / c50);

    let health = GrpcHealth::start(1).await;
    let mut g = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        grpc::check("127.0.0.1", health.port, "", timeout)
            .await
            .map_err(|e| anyhow::anyhow!("gRPC probe failed: {e}"))?;
        g.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (g50, g99) = summary(g);
    println!("gRPC health probe, {n} probes, new HTTP/2 connection each");
    println!("  pikube prober   p50 {g50:.2} ms  p99 {g99:.2} ms");

    let text = log_text(10 * 1024 * 1024);
    let log = dir.path().join("0.log");
    let rotated = dir.path().join("0.log.20261126-100000");
    std::fs::write(&rotated, &text)?;
    let t = Instant::now();
    let l = log.clone();
    tokio::task::spawn_blocking(move || log_rotation::prepare(&l, &Policy::default())).await??;
    let ours = t.elapsed().as_secs_f64();
    let ours_size = std::fs::metadata(dir.path().join("0.log.20261126-100000.gz"))?.len();
    let peer_in = dir.path().join("peer.log");
    std::fs::write(&peer_in, &text)?;
    let t = Instant::now();
    let out = Command::new("gzip")
        .args(["-6", "-k", "-f"])
        .arg(&peer_in)
        .status()?;
    anyhow::ensure!(out.success(), "gzip failed");
    let theirs = t.elapsed().as_secs_f64();
    let theirs_size = std::fs::metadata(dir.path().join("peer.log.gz"))?.len();
    let mb = text.len() as f64 / 1e6;
    println!("gzip of a rotated {:.1} MB container log (level 6)", mb);
    println!(
        "  pikube (flate2, rust backend) {:.0} ms, {:.1} MB/s, {} bytes",
        ours * 1000.0,
        mb / ours,
        ours_size
    );
    println!(
        "  GNU gzip -6                   {:.0} ms, {:.1} MB/s, {} bytes",
        theirs * 1000.0,
        mb / theirs,
        theirs_size
    );
    println!("  ratio pikube/gzip time {:.2}x", ours / theirs);
    Ok(())
}
