//! Starts a `pikube server` in a temp dir on a free port and runs kubectl against it.
//! The process and its files are removed when the handle is dropped, pass or fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The kubectl versions the tests cover (older, middle, newest installed).
pub const KUBECTLS: &[&str] = &["1.27", "1.31", "1.33"];

/// Path of a versioned kubectl, or the system one.
pub fn kubectl_path(version: &str) -> PathBuf {
    let versioned = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.{version}"));
    if versioned.exists() {
        versioned
    } else {
        PathBuf::from("kubectl")
    }
}

/// A running server.
pub struct Server {
    child: Child,
    dir: tempfile::TempDir,
    /// The API server's port.
    pub port: u16,
    extra: Vec<String>,
    /// Set when the server runs its node agent (containers to clean up).
    node: Option<NodeSettings>,
}

/// The per-test settings of a server that runs its node agent: its own pod range,
/// bridge, cgroup and run dir, so tests run side by side and clean up after themselves.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// Node name.
    pub name: String,
    /// The node's pod CIDR (the whole cluster CIDR: one node).
    pub pod_cidr: String,
    /// The pods' bridge.
    pub bridge: String,
    /// Parent cgroup of the pods.
    pub cgroup_root: String,
    /// The agent's run dir (containerd socket and state).
    pub run_dir: PathBuf,
    /// Whether the node runs the service proxy on the host (host-wide names: one such
    /// test at a time); the host sysctls it changes are put back afterwards.
    pub proxy: Option<Vec<(String, String)>>,
}

/// Host sysctls the service proxy sets.
const PROXY_SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
];

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

impl NodeSettings {
    fn flags(&self) -> Vec<String> {
        vec![
            "--node-name".into(),
            self.name.clone(),
            "--node-ip".into(),
            "127.0.0.1".into(),
            "--cluster-cidr".into(),
            self.pod_cidr.clone(),
            "--cni-bridge".into(),
            self.bridge.clone(),
            "--cgroup-root".into(),
            self.cgroup_root.clone(),
            "--run-dir".into(),
            self.run_dir.to_string_lossy().into_owned(),
        ]
        .into_iter()
        // The service proxy owns host-wide names (table `inet pikube`, bridge
        // `pikube0`): off unless the test asks for it.
        .chain(
            self.proxy
                .is_none()
                .then(|| ["--disable".to_string(), "proxy".to_string()])
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    fn killall(&self, data_dir: &Path) {
        let _ = Command::new(env!("CARGO_BIN_EXE_pikube"))
            .arg("killall")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args([
                "--cgroup-root",
                &self.cgroup_root,
                "--cni-bridge",
                &self.bridge,
            ])
            .args(self.proxy.is_none().then_some("--keep-proxy"))
            .status();
        for (key, value) in self.proxy.iter().flatten() {
            let _ = std::fs::write(sysctl_path(key), value);
        }
    }
}

/// The offline test images (pause, busybox), built once per test run.
pub fn test_images() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("images");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
            let status = Command::new("bash")
                .arg(script)
                .arg(&out)
                .status()
                .expect("run images/build.sh");
            assert!(status.success(), "images/build.sh failed");
            out
        })
        .clone()
}

/// A port free on 127.0.0.1 for TCP.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A port free on 127.0.0.1 for both TCP and UDP (a DNS listen port).
pub fn free_dual_port() -> u16 {
    loop {
        let port = free_port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Server {
    /// Starts `pikube server --disable-agent` and waits until it serves.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts a server with extra flags.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = Self::spawn(dir.path(), port, &extra);
        let server = Server {
            child,
            dir,
            port,
            extra,
            node: None,
        };
        server.wait_ready();
        server
    }

    /// Starts a server that runs its node agent with real containerd, with the test
    /// images in its air-gap directory; `index` (0-99) picks the test's own pod range,
    /// bridge and cgroup.
    pub fn start_node(index: u8, extra: &[&str]) -> Server {
        Self::node(index, extra, false)
    }

    /// As [`Server::start_node`], with the service proxy on the host (its nftables
    /// table, bridge and routes are removed afterwards).
    pub fn start_node_with_proxy(index: u8, extra: &[&str]) -> Server {
        Self::node(index, extra, true)
    }

    fn node(index: u8, extra: &[&str], proxy: bool) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let node = NodeSettings {
            name: format!("node{index}"),
            pod_cidr: format!("10.42.{}.0/24", 100 + index),
            bridge: format!("pkt{index}"),
            cgroup_root: format!("/pikube-test-{index}"),
            run_dir: dir.path().join("run"),
            proxy: proxy.then(|| {
                PROXY_SYSCTLS
                    .iter()
                    .filter_map(|k| {
                        let v = std::fs::read_to_string(sysctl_path(k)).ok()?;
                        Some((k.to_string(), v.trim().to_string()))
                    })
                    .collect()
            }),
        };
        // Whatever an earlier, killed run of this test left behind goes first.
        node.killall(&dir.path().join("data"));
        let images = dir.path().join("data/agent/images");
        std::fs::create_dir_all(&images).expect("images dir");
        for tar in ["pause.tar", "busybox.tar"] {
            std::fs::copy(test_images().join(tar), images.join(tar)).expect("copy test image");
        }
        let mut all: Vec<String> = node.flags();
        // Tests run side by side on 127.0.0.1: each agent API gets its own port.
        all.extend(["--agent-port".to_string(), free_port().to_string()]);
        all.extend(extra.iter().map(|s| s.to_string()));
        all.push("--agent".into());
        let child = Self::spawn(dir.path(), port, &all);
        let server = Server {
            child,
            dir,
            port,
            extra: all,
            node: Some(node),
        };
        server.wait_ready();
        server
    }

    /// Stops the server and starts it again on the same data dir and port.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(self.dir.path(), self.port, &self.extra);
        self.wait_ready();
    }

    /// Stops the server and starts it again without its node agent (same data dir and
    /// port): the API serves while nothing runs the node's pods.
    pub fn restart_without_agent(&mut self) {
        self.stop();
        let extra: Vec<String> = self
            .extra
            .iter()
            .filter(|a| *a != "--agent")
            .cloned()
            .collect();
        self.child = Self::spawn(self.dir.path(), self.port, &extra);
        self.wait_ready();
    }

    fn spawn(dir: &Path, port: u16, extra: &[String]) -> Child {
        // The cluster DNS of a server under test never takes the host's cluster DNS
        // address or its resolvers: a free loopback port and an empty resolv.conf,
        // unless the test chooses (a test that names its own `--cluster-dns` gets it
        // answered on that address, as a real node does).
        let mut dns = Vec::new();
        let chosen = |flag: &str| extra.iter().any(|a| a == flag);
        if !chosen("--dns-listen-address") && !chosen("--cluster-dns") {
            dns.push("--dns-listen-address".to_string());
            dns.push(format!("127.0.0.1:{}", free_dual_port()));
        }
        if !extra.iter().any(|a| a == "--resolv-conf") {
            let resolv = dir.join("resolv.conf");
            std::fs::write(&resolv, "").expect("empty resolv.conf");
            dns.push("--resolv-conf".to_string());
            dns.push(resolv.to_str().expect("utf-8 path").to_string());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("log file");
        // `--agent` is the harness's own marker: the server runs its node agent.
        let agent = extra.iter().any(|a| a == "--agent");
        let extra: Vec<&String> = extra.iter().filter(|a| *a != "--agent").collect();
        Command::new(env!("CARGO_BIN_EXE_pikube"))
            // An installed /etc/pikube/config.yaml must not leak into tests.
            .args(["server", "--config", "/dev/null"])
            .args((!agent).then_some("--disable-agent"))
            .args(["--bind-address", "127.0.0.1"])
            .arg("--https-listen-port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--write-kubeconfig")
            .arg(dir.join("kubeconfig"))
            .args(&dns)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pikube server")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.kubeconfig().exists() {
                let out = self.kubectl("1.33", &["get", "--raw", "/readyz"]);
                if out.status.success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pikube server did not become ready; log:\n{}", self.log());
    }

    /// Waits until Node `name` exists and is Ready.
    pub fn wait_node_ready(&self, name: &str) {
        let node = format!("node/{name}");
        wait_for(90, &format!("node {name} to be Ready"), || {
            self.kubectl(
                "1.33",
                &["wait", "--for=condition=Ready", &node, "--timeout=30s"],
            )
            .status
            .success()
            .then_some(())
        });
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A kubectl command of `version` set up for this server (own discovery cache).
    pub fn kubectl_cmd(&self, version: &str) -> Command {
        let mut cmd = Command::new(kubectl_path(version));
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join(format!("cache-{version}")))
            .arg("--request-timeout=20s");
        cmd
    }

    /// Runs kubectl and returns its output.
    pub fn kubectl(&self, version: &str, args: &[&str]) -> Output {
        self.kubectl_cmd(version)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub fn ok(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            out.status.success(),
            "kubectl {version} {args:?} failed: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts failure, returns stderr.
    pub fn fails(&self, version: &str, args: &[&str]) -> String {
        let out = self.kubectl(version, args);
        assert!(
            !out.status.success(),
            "kubectl {version} {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Writes a file into the test's temp dir and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("write test file");
        p
    }

    /// Stops the server (SIGTERM, then SIGKILL). A server already stopped (and reaped)
    /// is left alone: its pid may belong to another test's process by now.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // Not reaped yet, so the pid is still this child's (a zombie at worst).
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(node) = &self.node {
            node.killall(&self.data_dir());
        }
        // A server killed before its shutdown leaves its cluster DNS address on `lo`.
        if let Some(i) = self.extra.iter().position(|a| a == "--cluster-dns") {
            if let Some(ip) = self.extra.get(i + 1) {
                let _ = Command::new("ip")
                    .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Runs kubectl 1.33 with `args` (ending in `-o json`), asserts success, parses stdout.
pub fn get_json(server: &Server, args: &[&str]) -> serde_json::Value {
    let out = server.ok("1.33", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// POSTs `body` (JSON) to `path` on the server's HTTPS port with `Authorization: Bearer
/// <bearer>` (as joining nodes and servers do): the status code and the answer as JSON
/// (Null when it is not JSON).
pub fn post_bearer(
    server: &Server,
    path: &str,
    bearer: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", "-X", "POST"])
        .args(["-H", &format!("Authorization: Bearer {bearer}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["-d", &body.to_string()])
        .arg(format!("https://127.0.0.1:{}{path}", server.port))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (answer, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().expect("status code"),
        serde_json::from_str(answer).unwrap_or(serde_json::Value::Null),
    )
}

/// The pods of a pod list that are Ready and not being deleted.
pub fn ready_pods(list: &serde_json::Value) -> Vec<serde_json::Value> {
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .filter(|p| {
            p["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        })
        .collect()
}

/// Polls until `f` returns Some, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_every(Duration::from_millis(200), secs, what, f)
}

/// Calls `f` every `every` until it returns Some, or panics with `what` after `secs`.
pub fn wait_for_every<T>(
    every: Duration,
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// `kubectl describe <what>` once its output shows `marker` (Events are written in the
/// background: up to 20 s), asserting that it shows each of `wants`; the output.
pub fn describe_showing(server: &Server, what: &[&str], marker: &str, wants: &[&str]) -> String {
    let args: Vec<&str> = std::iter::once("describe")
        .chain(what.iter().copied())
        .collect();
    let out = wait_for(20, &format!("{marker:?} in describe {what:?}"), || {
        let out = server.ok("1.33", &args);
        out.contains(marker).then_some(out)
    });
    for want in wants {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    out
}

/// Path as &str for kubectl arguments.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A helper process (e.g. `kubectl get -w`) killed when the test ends, pass or fail.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` (e.g. `kubectl get -w`) and returns it with a channel of its stdout lines.
pub fn spawn_lines(mut cmd: Command) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut child = ChildGuard(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}
