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

    fn spawn(dir: &Path, port: u16, extra: &[String]) -> Child {
        // The cluster DNS of a server under test never takes the host's cluster DNS
        // address or its resolvers: a free loopback port and an empty resolv.conf,
        // unless the test chooses.
        let mut dns = Vec::new();
        if !extra.iter().any(|a| a == "--dns-listen-address") {
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
        Command::new(env!("CARGO_BIN_EXE_pikube"))
            // An installed /etc/pikube/config.yaml must not leak into tests.
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

    /// Stops the server (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
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
    }
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
