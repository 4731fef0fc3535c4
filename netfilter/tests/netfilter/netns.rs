//! Network-namespace fixtures shared by the traffic tests and the proxy benchmark:
//! namespaces with unique names deleted on drop, veth links, a TCP server that answers
//! with its name and the client's address, and clients that run inside a namespace.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use pikube_netfilter::{EndpointInfo, NetNs, Protocol, ServiceInfo, ServicePortInfo};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip args…` in the caller's namespace and panics with stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace created for one test; deleted (with its links) on drop.
pub struct TestNs {
    /// The namespace name.
    pub name: String,
}

impl TestNs {
    /// A fresh namespace `pkt-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("pkt-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The library's handle for this namespace.
    pub fn netns(&self) -> NetNs {
        NetNs::named(&self.name)
    }

    /// `ip -n <ns> args…`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Output of `ip -n <ns> args…`.
    pub fn ip_out(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("run ip");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in namespace panicked")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).expect("open netns");
    // SAFETY: setns on a valid namespace fd only changes this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// Links `a` and `b` with a veth pair: `a_if` in `a` with `a_addr` (CIDR), `b_if` in `b`
/// with `b_addr`; both up.
pub fn veth(a: &TestNs, a_if: &str, a_addr: &str, b: &TestNs, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    if !a_addr.is_empty() {
        a.ip(&["addr", "add", a_addr, "dev", a_if]);
    }
    if !b_addr.is_empty() {
        b.ip(&["addr", "add", b_addr, "dev", b_if]);
    }
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A "pod": a namespace attached to bridge `bridge` of `node` with address `addr`/24
/// and a default route via `gateway`. Returns it and the name of its node-side veth.
pub fn pod(
    node: &TestNs,
    bridge: &str,
    tag: &str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> (TestNs, String) {
    let p = TestNs::new(tag);
    let host_if = format!("v{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    veth(node, &host_if, "", &p, "eth0", &format!("{addr}/24"));
    node.ip(&["link", "set", &host_if, "master", bridge]);
    p.ip(&["route", "add", "default", "via", &gateway.to_string()]);
    (p, host_if)
}

/// A TCP server in a namespace: each connection gets `"<name> <client ip>\n"`.
pub struct EchoServer {
    fd: i32,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `addr:port` inside `ns`.
    pub fn start(ns: &TestNs, addr: Ipv4Addr, port: u16, name: &str) -> Self {
        let path = format!("/run/netns/{}", ns.name);
        let name = name.to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let listener = TcpListener::bind((addr, port)).expect("bind echo server");
            tx.send(listener.as_raw_fd()).expect("report fd");
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let _ = conn.write_all(format!("{name} {peer}\n").as_bytes());
            }
        });
        let fd = rx.recv().expect("echo server started");
        Self {
            fd,
            thread: Some(thread),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        // SAFETY: shutting down the listener's fd (still owned by the thread) makes its
        // blocking accept fail, so the thread ends and closes it.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP server in a namespace: each datagram is answered with `"<name> <client ip>"`.
pub struct UdpEcho {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Listens on `addr:port` inside `ns`.
    pub fn start(ns: &TestNs, addr: Ipv4Addr, port: u16, name: &str) -> Self {
        let path = format!("/run/netns/{}", ns.name);
        let name = name.to_owned();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let sock = std::net::UdpSocket::bind((addr, port)).expect("bind udp echo");
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("udp timeout");
            tx.send(()).expect("report start");
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(format!("{name} {}", peer.ip()).as_bytes(), peer);
                }
            }
        });
        rx.recv().expect("udp echo started");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One UDP request to `addr:port` from the current thread's namespace: the answer.
pub fn fetch_udp(addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.connect((addr, port))?;
    sock.send(b"ping")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// One request to `addr:port` from the current thread's namespace: the server's line.
pub fn fetch(addr: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.trim().to_owned())
}

/// A TCP service `name` on `cluster_ip:80` with `endpoints`.
pub fn service(name: &str, cluster_ip: Ipv4Addr, endpoints: Vec<EndpointInfo>) -> ServiceInfo {
    ServiceInfo {
        namespace: "default".into(),
        name: name.into(),
        cluster_ip: Some(cluster_ip),
        ports: vec![ServicePortInfo {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            node_port: None,
            endpoints,
        }],
        ..Default::default()
    }
}
