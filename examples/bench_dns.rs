//! `make bench-dns`: the cluster DNS of a release `pikube server` with 1,000 ClusterIP
//! Services, against Knot DNS (authoritative) serving a zone file with the same 1,000
//! records, both on loopback in the same run. dnsperf sends the same query file (A
//! questions for the 1,000 service names) to each with the same settings; printed:
//! queries per second, average latency, lost queries, and pikube's share of Knot's rate.
//!
//! Needs `dnsperf` and `knotd` (Debian packages `dnsperf`, `knot`). `BENCH_SECONDS`
//! sets the length of each run (default 10).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, PostParams};
use serde_json::json;

const SERVICES: usize = 1000;

/// What dnsperf measured.
struct Run {
    qps: f64,
    latency_ms: f64,
    lost: String,
}

/// A free port on 127.0.0.1 for UDP and TCP.
fn free_dns_port() -> anyhow::Result<u16> {
    loop {
        let port = common::free_port()?;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

fn field<'a>(out: &'a str, label: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .map(str::trim)
}

fn dnsperf(port: u16, queries: &Path, seconds: u64) -> anyhow::Result<Run> {
    let out = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string()])
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            "4",
            "-T",
            "2",
            "-q",
            "256",
        ])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run dnsperf ({e}); apt-get install dnsperf"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parse = |label: &str| -> anyhow::Result<f64> {
        field(&text, label)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("dnsperf printed no {label:?}:\n{text}"))
    };
    Ok(Run {
        qps: parse("Queries per second:")?,
        latency_ms: parse("Average Latency (s):")? * 1000.0,
        lost: field(&text, "Queries lost:").unwrap_or("?").to_string(),
    })
}

/// Waits until `dig` gets `want` for `name` from 127.0.0.1:`port`.
async fn wait_answer(port: u16, name: &str, want: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = tokio::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+short",
                "+tries=1",
                "+time=1",
                name,
            ])
            .output()
            .await?;
        if String::from_utf8_lossy(&out.stdout).trim() == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} never answered {want} on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Knot in the foreground with a zone file of `records`; killed when dropped.
struct Knot(std::process::Child);

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_knot(dir: &Path, port: u16, records: &[(String, String)]) -> anyhow::Result<Knot> {
    let mut zone = String::from(
        "$ORIGIN cluster.local.\n$TTL 5\n\
         @ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n\
         @ IN NS ns.dns\nns.dns IN A 10.43.0.10\n",
    );
    for (name, ip) in records {
        zone.push_str(&format!("{name}.default.svc IN A {ip}\n"));
    }
    std::fs::write(dir.join("cluster.local.zone"), zone)?;
    let d = dir.display();
    std::fs::write(
        dir.join("knot.conf"),
        format!(
            "server:\n  rundir: {d}\n  listen: 127.0.0.1@{port}\n\
             database:\n  storage: {d}\n\
             log:\n  - target: stderr\n    any: warning\n\
             zone:\n  - domain: cluster.local\n    storage: {d}\n    file: cluster.local.zone\n    \
             journal-content: none\n    zonefile-sync: -1\n    semantic-checks: off\n"
        ),
    )?;
    let child = Command::new("knotd")
        .arg("-c")
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run knotd ({e}); apt-get install knot"))?;
    Ok(Knot(child))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let work = tempfile::tempdir()?;
    std::fs::write(work.path().join("resolv.conf"), "")?;
    let pikube_port = free_dns_port()?;
    let listen = format!("127.0.0.1:{pikube_port}");
    let resolv = work.path().join("resolv.conf");
    let flags: Vec<String> = [
        "--disable-agent",
        "--dns-listen-address",
        &listen,
        "--resolv-conf",
        resolv.to_str().unwrap_or_default(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let server = common::start(&flags, |_| {}).await?;
    let client = server.client.clone();

    eprintln!("bench-dns: creating {SERVICES} services");
    let api = Api::<Service>::namespaced(client.clone(), "default");
    let created = Instant::now();
    let records: Vec<(String, String)> = futures::stream::iter(0..SERVICES)
        .map(|i| {
            let api = api.clone();
            async move {
                let name = format!("svc-{i:04}");
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
                }))?;
                let svc = api.create(&PostParams::default(), &svc).await?;
                let ip = svc
                    .spec
                    .and_then(|s| s.cluster_ip)
                    .ok_or_else(|| anyhow::anyhow!("{name} has no ClusterIP"))?;
                Ok::<_, anyhow::Error>((name, ip))
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let (last_name, last_ip) = records.last().cloned().unwrap_or_default();
    wait_answer(
        pikube_port,
        &format!("{last_name}.default.svc.cluster.local"),
        &last_ip,
    )
    .await?;
    eprintln!(
        "  created and resolvable after {:.1} s",
        created.elapsed().as_secs_f64()
    );

    let queries = work.path().join("queries.txt");
    let list: String = records
        .iter()
        .map(|(name, _)| format!("{name}.default.svc.cluster.local A\n"))
        .collect();
    std::fs::write(&queries, list)?;

    let knot_port = free_dns_port()?;
    let knot_dir = work.path().join("knot");
    std::fs::create_dir_all(&knot_dir)?;
    let knot = start_knot(&knot_dir, knot_port, &records)?;
    wait_answer(
        knot_port,
        &format!("{last_name}.default.svc.cluster.local"),
        &last_ip,
    )
    .await?;

    eprintln!("  dnsperf against pikube ({seconds} s)");
    let p = dnsperf(pikube_port, &queries, seconds)?;
    eprintln!("  dnsperf against knot ({seconds} s)");
    let k = dnsperf(knot_port, &queries, seconds)?;
    drop(knot);
    drop(server);

    let ratio = p.qps / k.qps;
    println!("bench-dns: {SERVICES} ClusterIP services, A queries over UDP, dnsperf -c 4 -T 2 -q 256 -l {seconds}");
    for (who, r) in [("pikube", &p), ("knot  ", &k)] {
        println!(
            "  {who}: {:>9.0} queries/s, average latency {:.3} ms, lost {}",
            r.qps, r.latency_ms, r.lost
        );
    }
    println!(
        "  pikube / knot = {ratio:.2} (targets: >= 50000 queries/s {}, >= 0.5x knot {})",
        if p.qps >= 50_000.0 { "met" } else { "NOT met" },
        if ratio >= 0.5 { "met" } else { "NOT met" }
    );
    Ok(())
}
