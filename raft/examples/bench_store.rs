//! `make bench-store`: pikube's store against etcd 3.4 (Debian's etcd-server) with the
//! same load in one run, printing the figures of both and their ratio.
//!
//! Load: W concurrent writers, V-byte values, N puts in all; fsync on both sides (etcd
//! always fsyncs its WAL; pikube fsyncs its log once per group). pikube is called
//! in-process, as the API server calls it; etcd over its HTTP/JSON gateway on loopback.
//! Then the same with three nodes on loopback: pikube's over its HTTPS peer transport,
//! etcd with three members; the load goes to the leader (pikube) or first member (etcd).
//! Also measured: RSS while holding 100k 1 KiB keys, and disk use after 100k overwrites
//! of 1,000 keys, then after compaction, then after defragmentation (with a breakdown by
//! directory). `--only rss,single,cluster,disk` runs some parts; `--keep` keeps the data.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pikube_raft::{dir_size, serve_peers, Config, HttpTransport, PeerTls, Store};

/// The allocator of the pikube binary, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>;

struct Figures {
    writes_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut lat: Vec<Duration>, elapsed: Duration) -> Figures {
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Figures {
        writes_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Runs `puts` writes from `writers` concurrent tasks, each write being `put(i)`, and
/// measures every write's latency.
async fn drive<F, Fut>(writers: usize, puts: usize, put: F) -> Figures
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let put = put.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(puts / writers + 1);
            for i in (w..puts).step_by(writers) {
                let t = Instant::now();
                put(i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("writer task"));
    }
    summarize(lat, start.elapsed())
}

async fn pikube_load(
    store: &Store,
    writers: usize,
    puts: usize,
    value: Arc<Vec<u8>>,
    prefix: &str,
) -> Figures {
    let (store, prefix) = (store.clone(), prefix.to_string());
    drive(writers, puts, move |i| {
        let (store, value, key) = (store.clone(), value.clone(), format!("{prefix}/{i:08}"));
        async move {
            store
                .put(key.as_bytes(), &value, 0)
                .await
                .expect("pikube put");
        }
    })
    .await
}

/// An etcd cluster of one or more members on loopback; killed on drop.
struct Etcd {
    children: Vec<Child>,
    /// Client URL of the first member (the load goes there).
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_etcd(client: &HttpClient, members: usize) -> Etcd {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, pp))| format!("m{i}=http://127.0.0.1:{pp}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, (cp, pp)) in ports.iter().enumerate() {
        let url = format!("http://127.0.0.1:{cp}");
        let peer = format!("http://127.0.0.1:{pp}");
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(dir.path().join(format!("m{i}")))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &cluster, "--log-level", "error"])
            .args(["--quota-backend-bytes", &(4u64 << 30).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd from Debian's etcd-server package (make deps)");
        children.push(child);
    }
    let etcd = Etcd {
        children,
        url: format!("http://127.0.0.1:{}", ports[0].0),
        _dir: dir,
    };
    for _ in 0..200 {
        let req = hyper::Request::get(format!("{}/health", etcd.url))
            .body(Full::default())
            .expect("request");
        if let Ok(resp) = client.request(req).await {
            if resp.status().is_success() {
                return etcd;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd did not become healthy");
}

/// Three pikube store nodes on loopback over the HTTPS peer transport with mutual TLS;
/// node 1 is the leader the load goes to.
async fn start_pikube_cluster(dir: &std::path::Path) -> Vec<(Store, tokio::task::JoinHandle<()>)> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&key).expect("ca");
    let tls = PeerTls::issue(&ca.pem(), &key.serialize_pem(), &["127.0.0.1".into()]).expect("tls");
    let mut nodes: Vec<(Store, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut cluster_id = None;
    for id in 1..=3u64 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut c = Config::single_node(dir.join(format!("node-{id}")));
        c.node_id = id;
        c.advertise_addr = listener.local_addr().expect("addr").to_string();
        c.bootstrap = id == 1;
        c.cluster_id = cluster_id.clone();
        c.transport = Arc::new(HttpTransport::new(tls.client.clone()));
        let store = Store::open(c).await.expect("open");
        cluster_id = Some(store.cluster_id().to_string());
        let server = tokio::spawn(serve_peers(listener, tls.server.clone(), store.clone()));
        if id > 1 {
            nodes[0]
                .0
                .clone()
                .add_voter(id, store.advertise_addr())
                .await
                .expect("add voter");
        }
        nodes.push((store, server));
    }
    nodes
}

async fn etcd_put(client: &HttpClient, url: &str, key: &[u8], value: &[u8]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = format!(
        r#"{{"key":"{}","value":"{}"}}"#,
        b64.encode(key),
        b64.encode(value)
    );
    let req = hyper::Request::post(format!("{url}/v3/kv/put"))
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("request");
    let resp = client.request(req).await.expect("etcd put");
    assert!(resp.status().is_success(), "etcd put: {}", resp.status());
    let _ = resp.into_body().collect().await;
}

async fn etcd_load(
    client: &HttpClient,
    url: &str,
    writers: usize,
    puts: usize,
    value: Arc<Vec<u8>>,
) -> Figures {
    let (client, url) = (client.clone(), url.to_string());
    drive(writers, puts, move |i| {
        let (client, url, value, key) = (
            client.clone(),
            url.clone(),
            value.clone(),
            format!("/bench/{i:08}"),
        );
        async move { etcd_put(&client, &url, key.as_bytes(), &value).await }
    })
    .await
}

/// Prints the figures of pikube (first row) and etcd (second row) and their ratio.
fn print_table(title: &str, rows: &[(&str, &Figures); 2]) {
    println!();
    println!(
        "{title:<28} {:>12} {:>10} {:>10}",
        "writes/s", "p50 ms", "p99 ms"
    );
    for (name, f) in rows {
        println!(
            "{:<28} {:>12.0} {:>10.2} {:>10.2}",
            name,
            f.writes_per_s,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3
        );
    }
    let (p, e) = (rows[0].1, rows[1].1);
    println!(
        "ratio pikube/etcd, {title}: writes/s {:.2}x, p99 {:.2}x (lower is better)",
        p.writes_per_s / e.writes_per_s,
        p.p99.as_secs_f64() / e.p99.as_secs_f64()
    );
}

/// Whether the part `name` of the benchmark runs: all by default, or those listed in
/// `--only` (comma-separated: `rss`, `single`, `cluster`, `disk`).
fn part(name: &str) -> bool {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--only") {
        Some(i) => args
            .get(i + 1)
            .is_some_and(|v| v.split(',').any(|p| p == name)),
        None => true,
    }
}

/// Bytes under each entry of `path` (files and directories), largest first.
fn breakdown(path: &std::path::Path) -> Vec<(String, u64)> {
    let mut parts: Vec<(String, u64)> = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let size = match e.metadata() {
                        Ok(m) if m.is_dir() => dir_size(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    };
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort_by_key(|p| std::cmp::Reverse(p.1));
    parts
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let writers = arg("--writers", 16);
    let puts = arg("--puts", 50_000);
    let value_size = arg("--value-size", 256);
    // Log entries between snapshots in the memory test (the store's default otherwise).
    let snapshot_every = arg("--snapshot-every", 100_000);
    // sled cache of the memory test in MiB (0: the store's default).
    let cache_mb = arg("--cache-mb", 0) as u64;
    let value = Arc::new(vec![b'x'; value_size]);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(writers)
        .build_http();
    println!("load: {writers} writers, {value_size}-byte values, {puts} puts, fsync on both");
    let dir = tempfile::tempdir().expect("temp dir");
    let kib = Arc::new(vec![b'k'; 1024]);

    // Memory first, while this process holds nothing else: 100k 1 KiB keys.
    if part("rss") {
        let before = rss_kib(std::process::id());
        let mut rss_config = Config::single_node(dir.path().join("rss"));
        rss_config.snapshot_every = snapshot_every as u64;
        if cache_mb > 0 {
            rss_config.cache_capacity_bytes = cache_mb << 20;
        }
        let store = Store::open(rss_config).await.expect("open");
        pikube_load(&store, writers, 100_000, kib.clone(), "/rss").await;
        let pikube_rss = rss_kib(std::process::id());
        store.shutdown().await.expect("shutdown");
        drop(store);
        // etcd's RSS with the same 100k 1 KiB keys.
        let etcd = start_etcd(&client, 1).await;
        let _ = etcd_load(&client, &etcd.url, writers, 100_000, kib.clone()).await;
        let etcd_rss = rss_kib(etcd.children[0].id());
        drop(etcd);
        println!();
        println!(
            "RSS holding 100k 1 KiB keys: pikube {:.1} MB (process growth {:.1} MB), etcd {:.1} MB",
            pikube_rss as f64 / 1024.0,
            pikube_rss.saturating_sub(before) as f64 / 1024.0,
            etcd_rss as f64 / 1024.0
        );
    }

    // Throughput and latency, single node.
    if part("single") {
        let store = Store::open(Config::single_node(dir.path().join("tput")))
            .await
            .expect("open");
        let p = pikube_load(&store, writers, puts, value.clone(), "/bench").await;
        store.shutdown().await.expect("shutdown");
        drop(store);
        let etcd = start_etcd(&client, 1).await;
        let e = etcd_load(&client, &etcd.url, writers, puts, value.clone()).await;
        drop(etcd);
        print_table(
            "single node",
            &[
                ("pikube store (in-process)", &p),
                ("etcd 3.4 (HTTP gateway)", &e),
            ],
        );
    }

    // Three nodes on loopback: pikube over its HTTPS peer transport, etcd with 3 members.
    if part("cluster") {
        let nodes = start_pikube_cluster(dir.path()).await;
        let p3 = pikube_load(&nodes[0].0, writers, puts, value.clone(), "/bench3").await;
        for (store, server) in nodes {
            server.abort();
            store.shutdown().await.expect("shutdown");
        }
        let etcd = start_etcd(&client, 3).await;
        let e3 = etcd_load(&client, &etcd.url, writers, puts, value.clone()).await;
        drop(etcd);
        print_table(
            "3 nodes",
            &[
                ("pikube store (HTTPS peers)", &p3),
                ("etcd 3.4 (3 members)", &e3),
            ],
        );
    }

    // Disk after 100k overwrites of 1,000 1 KiB keys, then compaction.
    if part("disk") {
        let path = dir.path().join("disk");
        // Defragmented on request here, so the figure is that of the call (by default the
        // store also defragments by itself after a compaction like this one).
        let mut disk_config = Config::single_node(&path);
        disk_config.defrag_ratio = 0;
        let store = Store::open(disk_config).await.expect("open");
        for _round in 0..100 {
            pikube_load(&store, writers, 1000, kib.clone(), "/disk").await;
        }
        let live = 1000 * (1024 + 14);
        let show = |what: &str| {
            let on_disk = dir_size(&path);
            println!(
                "disk after 100k overwrites{what}: {:.1} MB for {:.1} MB live ({:.1}x)",
                on_disk as f64 / 1e6,
                live as f64 / 1e6,
                on_disk as f64 / live as f64
            );
            for (name, size) in breakdown(&path) {
                println!("  {name}: {:.1} MB", size as f64 / 1e6);
            }
        };
        println!();
        show("");
        store
            .compact(store.current_revision())
            .await
            .expect("compact");
        show(" + compaction");
        let t = Instant::now();
        store.defragment().await.expect("defragment");
        let took = t.elapsed();
        store.shutdown().await.expect("shutdown");
        drop(store);
        show(&format!(
            " + compaction + defragmentation ({:.0} ms)",
            took.as_secs_f64() * 1e3
        ));
    }
    if std::env::args().any(|a| a == "--keep") {
        println!("data kept in {}", dir.keep().display());
    }
}
