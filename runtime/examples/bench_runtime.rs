//! Runtime benchmark (`make bench-runtime`, root): a pikube-managed containerd's start
//! time and memory, image import (plain, gzip and zstd tarballs) through pikube against
//! `ctr images import` on the same containerd in the same run, and pod start latency (RunPodSandbox + CreateContainer +
//! StartContainer) with the image cached. Uses the integration tests' throwaway node.

#[allow(dead_code)]
#[path = "../tests/runtime/harness.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::Node;
use pikube_runtime::{import_tarball, BUSYBOX_IMAGE};

const STARTS: usize = 5;
const IMPORTS: usize = 10;
const PODS: usize = 30;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// (p50, p99, max) in ms of the samples.
fn summary(mut samples: Vec<Duration>) -> (f64, f64, f64) {
    samples.sort();
    let at = |q: f64| ms(samples[((samples.len() as f64 - 1.0) * q).round() as usize]);
    (at(0.5), at(0.99), at(1.0))
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Total RSS of the containerd-shim-runc-v2 processes serving this containerd's socket.
fn shims_rss_kb(socket: &Path) -> (usize, u64) {
    let mut count = 0;
    let mut total = 0;
    let want = socket.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("containerd-shim-runc-v2") && cmd.contains(&want) {
            count += 1;
            total += rss_kb(pid);
        }
    }
    (count, total)
}

fn ctr(socket: &Path, args: &[&str]) {
    let status = std::process::Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "k8s.io"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run ctr");
    assert!(status.success(), "ctr {args:?} failed");
}

/// `ctr images import` of `path`; a compressed tarball is piped through its decompressor
/// (this ctr reads plain tars only), as a user of ctr would.
fn ctr_import(socket: &Path, path: &str, decompress: Option<&str>, unpack: bool) {
    let Some(tool) = decompress else {
        let mut args = vec!["images", "import"];
        args.extend((!unpack).then_some("--no-unpack"));
        args.push(path);
        return ctr(socket, &args);
    };
    let script = format!(
        "{tool} -dc '{path}' | ctr --address '{}' -n k8s.io images import {} - >/dev/null",
        socket.display(),
        if unpack { "" } else { "--no-unpack" }
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run sh");
    assert!(status.success(), "{script} failed");
}

async fn remove_image(node: &Node) {
    ctr(&node.socket(), &["images", "rm", "--sync", BUSYBOX_IMAGE]);
    // Let CRI forget it before the next import.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// RunPodSandbox (+ status) + CreateContainer + StartContainer; returns the sandbox id.
async fn start_pod(node: &Node, name: &str) -> String {
    let sandbox = node.sandbox_config(name);
    let (pod, _ip) = node.run_sandbox(&sandbox).await;
    let cfg = harness::container_config(name, BUSYBOX_IMAGE, &["sleep", "3600"]);
    node.start_container(&pod, &sandbox, cfg).await;
    pod
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let images = harness::test_images();
    let busybox = images.join("busybox.tar");
    println!(
        "pikube runtime benchmark ({} pods, {} imports)",
        PODS, IMPORTS
    );

    // 1. containerd start until CRI reports RuntimeReady.
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let t = Instant::now();
        let node = Node::start().await;
        starts.push(t.elapsed());
        drop(node);
    }
    let (p50, _, max) = summary(starts);
    println!("containerd start → RuntimeReady: p50 {p50:.0} ms, max {max:.0} ms");

    let node = Node::start().await;
    let pid = node.containerd().pid().expect("containerd pid");
    node.import(false).await;
    println!("containerd RSS idle: {} MB", rss_kb(pid) / 1024);

    // 2. Import busybox.tar, plain and compressed by the gzip and zstd tools: pikube vs
    // ctr --no-unpack (the same work) vs ctr (+unpack); ctr gets the compressed ones
    // through `gzip -dc |` / `zstd -dc |`.
    let work = tempfile::tempdir().expect("temp dir");
    let mut tarballs = vec![(busybox.clone(), None)];
    for (tool, name) in [("gzip", "busybox.tar.gz"), ("zstd", "busybox.tar.zst")] {
        let out = work.path().join(name);
        let file = std::fs::File::create(&out).expect("create");
        let status = std::process::Command::new(tool)
            .arg("-c")
            .arg(&busybox)
            .stdout(file)
            .status()
            .expect("run the compressor");
        assert!(status.success(), "{tool} failed");
        tarballs.push((out, Some(tool)));
    }
    for (tarball, tool) in &tarballs {
        let size = std::fs::metadata(tarball).map(|m| m.len()).unwrap_or(0);
        let mut ours = Vec::new();
        let mut peer = Vec::new();
        let mut peer_unpack = Vec::new();
        let path = tarball.to_string_lossy().into_owned();
        for _ in 0..IMPORTS {
            let t = Instant::now();
            import_tarball(&node.socket(), tarball)
                .await
                .expect("import");
            ours.push(t.elapsed());
            remove_image(&node).await;
            let t = Instant::now();
            ctr_import(&node.socket(), &path, *tool, false);
            peer.push(t.elapsed());
            remove_image(&node).await;
            let t = Instant::now();
            ctr_import(&node.socket(), &path, *tool, true);
            peer_unpack.push(t.elapsed());
            remove_image(&node).await;
        }
        let (o50, _, _) = summary(ours);
        let (c50, _, _) = summary(peer);
        let (u50, _, _) = summary(peer_unpack);
        let name = tarball.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "import {name} ({} KB): pikube p50 {o50:.1} ms (incl. waiting for CRI to see it), \
             ctr --no-unpack p50 {c50:.1} ms, ctr (with unpack) p50 {u50:.1} ms; ratio pikube/ctr --no-unpack {:.2}",
            size / 1024,
            o50 / c50
        );
    }

    // 3. Pod start latency with the image cached (first one also unpacks the image).
    import_tarball(&node.socket(), &busybox)
        .await
        .expect("import");
    let t = Instant::now();
    let first = start_pod(&node, "first").await;
    let first_ms = ms(t.elapsed());
    let mut lat = Vec::new();
    let mut pods = vec![first];
    for i in 0..PODS {
        let t = Instant::now();
        pods.push(start_pod(&node, &format!("p{i}")).await);
        lat.push(t.elapsed());
    }
    let (p50, p99, max) = summary(lat);
    println!(
        "pod start (sandbox+create+start), {PODS} sequential: p50 {p50:.0} ms, p99 {p99:.0} ms, \
         max {max:.0} ms; first after import (incl. unpack) {first_ms:.0} ms"
    );
    let (shims, shim_kb) = shims_rss_kb(&node.socket());
    println!(
        "with {} pods: containerd RSS {} MB, {shims} shims {} MB total ({:.1} MB each)",
        pods.len(),
        rss_kb(pid) / 1024,
        shim_kb / 1024,
        shim_kb as f64 / 1024.0 / shims.max(1) as f64
    );
    let mut stops = Vec::new();
    for pod in pods {
        let t = Instant::now();
        node.remove_pod(&pod).await;
        stops.push(t.elapsed());
    }
    let (s50, s99, _) = summary(stops);
    println!("pod stop+remove: p50 {s50:.0} ms, p99 {s99:.0} ms");
}
