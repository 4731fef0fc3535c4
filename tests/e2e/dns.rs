//! Cluster DNS end to end: a real `pikube server`, Services and Pods made with kubectl
//! (pods made Running by the node simulator, so the endpoints controller writes
//! EndpointSlices), queried with the real `dig` over UDP and TCP and with the C library's
//! resolver through a pod-style resolv.conf.
//!
//! Every DNS server here (pikube's and the upstream stub) listens on port 53 of a
//! loopback address of its own (127.x.y.z), as resolv.conf has no port; nothing leaves
//! the loopback interface.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use crate::harness::{s, Server};
use crate::sim::{Sim, SimNode};

/// A loopback address no other test uses, with port 53 free on it for UDP and TCP.
fn unique_loopback() -> Ipv4Addr {
    loop {
        let r: [u8; 3] = rand::random();
        let ip = Ipv4Addr::new(127, r[0].max(1), r[1], r[2].clamp(2, 254));
        let free = UdpSocket::bind((ip, 53)).is_ok() && TcpListener::bind((ip, 53)).is_ok();
        if free {
            return ip;
        }
    }
}

/// A pikube server whose DNS answers on `addr` with `resolv` as its upstream list.
struct Dns {
    server: Server,
    addr: SocketAddr,
    _resolv: tempfile::NamedTempFile,
}

fn start_dns(resolv: impl Fn(Ipv4Addr) -> String) -> Dns {
    let ip = unique_loopback();
    let mut file = tempfile::NamedTempFile::new().expect("temp resolv.conf");
    file.write_all(resolv(ip).as_bytes()).expect("write resolv.conf");
    let addr = SocketAddr::new(IpAddr::V4(ip), 53);
    let server = Server::start_with(&[
        "--dns-listen-address",
        &addr.to_string(),
        "--resolv-conf",
        s(file.path()),
    ]);
    let dns = Dns {
        server,
        addr,
        _resolv: file,
    };
    // The server is ready before its DNS has synced: wait for the first answer.
    wait_for(20, "the DNS to answer", || {
        (dns.dig(false, &["kubernetes.default.svc.cluster.local"]).status == "NOERROR")
            .then_some(())
    });
    dns
}

/// What dig printed.
struct Dig {
    status: String,
    flags: String,
    answers: Vec<String>,
    additional: Vec<String>,
    text: String,
}

impl Dig {
    /// The rdata of the answer records of `rtype`, sorted.
    fn rdata(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .answers
            .iter()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 5 && f[3] == rtype).then(|| f[4..].join(" "))
            })
            .collect();
        v.sort();
        v
    }
}

fn parse_dig(text: &str) -> Dig {
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("NO REPLY")
        .to_string();
    let flags = text
        .split(";; flags: ")
        .nth(1)
        .and_then(|r| r.split(';').next())
        .unwrap_or("")
        .to_string();
    let section = |name: &str| -> Vec<String> {
        text.split(&format!(";; {name} SECTION:\n"))
            .nth(1)
            .map(|r| {
                r.lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    Dig {
        status,
        flags,
        answers: section("ANSWER"),
        additional: section("ADDITIONAL"),
        text: text.to_string(),
    }
}

impl Dns {
    fn dig(&self, tcp: bool, args: &[&str]) -> Dig {
        let mut cmd = Command::new("dig");
        cmd.arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args(["+tries=1", "+time=2", "+nocookie"]);
        if tcp {
            cmd.arg("+tcp");
        }
        let out = cmd.args(args).output().expect("run dig");
        parse_dig(&String::from_utf8_lossy(&out.stdout))
    }

    /// dig over UDP and TCP; both must give the same status and answers.
    fn both(&self, args: &[&str]) -> Dig {
        let udp = self.dig(false, args);
        let tcp = self.dig(true, args);
        assert_eq!(udp.status, tcp.status, "{args:?}\n{}\n{}", udp.text, tcp.text);
        let (mut a, mut b) = (udp.answers.clone(), tcp.answers.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{args:?}");
        udp
    }
}

fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const WORKLOAD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec:
  ports: [{port: 81, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.org}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  containers: [{name: c, image: busybox}]
";

fn jsonpath(server: &Server, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let path = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &path]);
    server.ok("1.27", &args).trim().to_string()
}

#[test]
fn dns_answers_every_record_type_over_udp_and_tcp() {
    let dns = start_dns(|_| String::new());
    let server = &dns.server;
    let _sim = Sim::start(server, vec![SimNode::new("dns-node")], Duration::ZERO);
    let file = server.file("workload.yaml", WORKLOAD);
    server.ok("1.27", &["create", "-f", s(&file), "--validate=false"]);
    let web_ip = jsonpath(server, &["service", "web"], "{.spec.clusterIP}");
    let pod_ip = |name: &str| {
        wait_for(30, "a pod IP", || {
            Some(jsonpath(server, &["pod", name], "{.status.podIP}")).filter(|ip| !ip.is_empty())
        })
    };
    let (ip0, ip1) = (pod_ip("db-0"), pod_ip("db-1"));
    let mut db_ips = vec![ip0.clone(), ip1.clone()];
    db_ips.sort();
    wait_for(10, "the headless service's endpoints", || {
        (dns.dig(false, &["db.default.svc.cluster.local"]).rdata("A") == db_ips).then_some(())
    });

    // ClusterIP service: A, SRV for the named port only, no AAAA (NODATA).
    let r = dns.both(&["web.default.svc.cluster.local", "A"]);
    assert_eq!(r.rdata("A"), [web_ip.clone()]);
    assert!(r.flags.contains("aa"), "{}", r.text);
    assert_eq!(
        r.answers[0].split_whitespace().nth(1),
        Some("5"),
        "TTL 5: {}",
        r.text
    );
    let r = dns.both(&["_http._tcp.web.default.svc.cluster.local", "SRV"]);
    assert_eq!(r.rdata("SRV"), ["0 100 80 web.default.svc.cluster.local."]);
    assert!(r.additional.iter().any(|l| l.ends_with(&web_ip)), "{}", r.text);
    let r = dns.both(&["_udp.plain.default.svc.cluster.local", "SRV"]);
    assert_eq!(r.status, "NXDOMAIN", "unnamed port: {}", r.text);
    let r = dns.both(&["web.default.svc.cluster.local", "AAAA"]);
    assert_eq!((r.status.as_str(), r.answers.len()), ("NOERROR", 0), "{}", r.text);

    // Headless: ready pod IPs, hostnames, SRV per endpoint.
    assert_eq!(dns.both(&["db.default.svc.cluster.local"]).rdata("A"), db_ips);
    assert_eq!(
        dns.both(&["db-0.db.default.svc.cluster.local"]).rdata("A"),
        [ip0.clone()]
    );
    let dashed = ip1.replace('.', "-");
    assert_eq!(
        dns.both(&[&format!("{dashed}.db.default.svc.cluster.local")]).rdata("A"),
        [ip1.clone()]
    );
    let r = dns.both(&["_pg._tcp.db.default.svc.cluster.local", "SRV"]);
    let mut want = vec![
        "0 50 5432 db-0.db.default.svc.cluster.local.".to_string(),
        format!("0 50 5432 {dashed}.db.default.svc.cluster.local."),
    ];
    want.sort();
    assert_eq!(r.rdata("SRV"), want);

    // ExternalName: a CNAME (its target cannot be resolved: no upstream here).
    let r = dns.both(&["ext.default.svc.cluster.local", "CNAME"]);
    assert_eq!(r.rdata("CNAME"), ["www.example.org."]);

    // Pod records, only for pods that exist in that namespace.
    let pod_name = format!("{}.default.pod.cluster.local", ip0.replace('.', "-"));
    assert_eq!(dns.both(&[&pod_name]).rdata("A"), [ip0.clone()]);
    let other_ns = format!("{}.kube-system.pod.cluster.local", ip0.replace('.', "-"));
    assert_eq!(dns.both(&[&other_ns]).status, "NXDOMAIN");

    // PTR for service and endpoint IPs.
    assert_eq!(
        dns.both(&["-x", &web_ip]).rdata("PTR"),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        dns.both(&["-x", &ip0]).rdata("PTR"),
        ["db-0.db.default.svc.cluster.local."]
    );

    // NXDOMAIN versus NODATA, with the SOA for negative caching.
    for name in ["nope.default.svc.cluster.local", "web.default.default.svc.cluster.local"] {
        let r = dns.both(&[name]);
        assert_eq!(r.status, "NXDOMAIN", "{name}: {}", r.text);
        assert!(
            r.text.lines().any(|l| l.contains("SOA") && l.contains("ns.dns.cluster.local.")),
            "{}",
            r.text
        );
    }
    for name in ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"] {
        let r = dns.both(&[name, "A"]);
        assert_eq!((r.status.as_str(), r.answers.len()), ("NOERROR", 0), "{name}");
    }

    // Schema version, and the kube-dns Service that the bootstrap created.
    assert_eq!(
        dns.both(&["dns-version.cluster.local", "TXT"]).rdata("TXT"),
        ["\"1.1.0\""]
    );
    assert_eq!(
        dns.both(&["kube-dns.kube-system.svc.cluster.local"]).rdata("A"),
        ["10.43.0.10"]
    );
    let labels = jsonpath(server, &["-n", "kube-system", "service", "kube-dns"], "{.metadata.labels}");
    assert!(labels.contains("\"k8s-app\":\"kube-dns\""), "{labels}");
}

/// Runs `script` with `resolv` mounted over /etc/resolv.conf in a private mount
/// namespace (what a pod sees), returning stdout.
fn with_resolv_conf(resolv: &std::path::Path, script: &str) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(format!("mount --bind {} /etc/resolv.conf && {script}", s(resolv)))
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dns_search_path_of_a_pod_resolves_short_names() {
    let dns = start_dns(|_| String::new());
    let server = &dns.server;
    server.ok("1.27", &["create", "namespace", "shop"]);
    server.ok("1.27", &["-n", "shop", "create", "service", "clusterip", "cart", "--tcp=80"]);
    let cart = jsonpath(server, &["-n", "shop", "service", "cart"], "{.spec.clusterIP}");
    wait_for(10, "cart", || {
        (dns.dig(false, &["cart.shop.svc.cluster.local"]).rdata("A") == [cart.clone()])
            .then_some(())
    });
    // What the kubelet writes for a pod in namespace `shop`.
    let resolv = server.file(
        "pod-resolv.conf",
        &format!(
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5\n",
            dns.addr.ip()
        ),
    );
    let out = with_resolv_conf(
        &resolv,
        "getent ahostsv4 cart; getent ahostsv4 cart.shop; getent ahostsv4 kubernetes.default; \
         dig +search +short cart; dig +search +short kubernetes.default",
    );
    let kubernetes = "10.43.0.1";
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        format!("{cart}      STREAM cart.shop.svc.cluster.local"),
        format!("{kubernetes}       STREAM kubernetes.default.svc.cluster.local"),
    ] {
        let ip = want.split_whitespace().next().unwrap_or_default();
        let host = want.split_whitespace().last().unwrap_or_default();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(ip) && l.contains("STREAM") && l.ends_with(host)),
            "{want}\n{out}"
        );
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with(&cart) && l.contains("STREAM")).count(),
        2,
        "cart and cart.shop: {out}"
    );
    assert!(lines.contains(&cart.as_str()) && lines.contains(&kubernetes), "{out}");
}

#[test]
fn dns_sees_changes_within_a_second() {
    let dns = start_dns(|_| String::new());
    let server = &dns.server;
    let name = "quick.default.svc.cluster.local";
    assert_eq!(dns.dig(false, &[name]).status, "NXDOMAIN");
    server.ok("1.27", &["create", "service", "clusterip", "quick", "--tcp=80"]);
    let created = Instant::now();
    let ip = jsonpath(server, &["service", "quick"], "{.spec.clusterIP}");
    wait_for(5, "the new service", || {
        (dns.dig(false, &[name]).rdata("A") == [ip.clone()]).then_some(())
    });
    let visible = created.elapsed();
    server.ok("1.27", &["delete", "service", "quick", "--wait=false"]);
    let deleted = Instant::now();
    wait_for(5, "the service to go", || {
        (dns.dig(false, &[name]).status == "NXDOMAIN").then_some(())
    });
    let gone = deleted.elapsed();
    // kubectl's own round trip is part of the first figure.
    assert!(visible < Duration::from_secs(1), "visible after {visible:?}");
    assert!(gone < Duration::from_secs(1), "gone after {gone:?}");
}

/// A tiny upstream DNS server on 127.x.y.z:53 (UDP and TCP), counting what it is asked.
/// `big.example.` answers truncated over UDP, `nx.example.` NXDOMAIN, `short.example.`
/// with TTL 1; any other A question gets 192.0.2.1 (an answer only, never contacted).
struct Stub {
    ip: Ipv4Addr,
    udp: Arc<AtomicUsize>,
    tcp: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

fn stub_answer(query: &[u8], over_udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut m = Message::response(q.metadata.id, q.metadata.op_code);
    m.metadata.recursion_available = true;
    m.add_query(question.clone());
    let name = question.name().to_ascii();
    match name.as_str() {
        "big.example." if over_udp => m.metadata.truncation = true,
        "nx.example." => m.metadata.response_code = ResponseCode::NXDomain,
        _ if question.query_type() == RecordType::A => {
            let ttl = if name == "short.example." { 1 } else { 300 };
            m.add_answer(Record::from_rdata(
                question.name().clone(),
                ttl,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        _ => {}
    }
    m.metadata.message_type = MessageType::Response;
    m.to_vec().ok()
}

impl Stub {
    fn start() -> Stub {
        let ip = unique_loopback();
        let udp_socket = UdpSocket::bind((ip, 53)).expect("stub udp");
        let tcp_listener = TcpListener::bind((ip, 53)).expect("stub tcp");
        udp_socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        tcp_listener.set_nonblocking(true).expect("nonblocking");
        let (udp, tcp, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (count, halt) = (udp.clone(), stop.clone());
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !halt.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp_socket.recv_from(&mut buf) {
                    count.fetch_add(1, Ordering::SeqCst);
                    if let Some(reply) = stub_answer(&buf[..n], true) {
                        let _ = udp_socket.send_to(&reply, peer);
                    }
                }
            }
        });
        let (count, halt) = (tcp.clone(), stop.clone());
        let tcp_thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = tcp_listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut len = [0u8; 2];
                if conn.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if conn.read_exact(&mut query).is_err() {
                    continue;
                }
                count.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = stub_answer(&query, false) {
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    let _ = conn.write_all(&framed);
                }
            }
        });
        Stub {
            ip,
            udp,
            tcp,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn dns_forwards_outside_names_with_a_cache_and_never_to_itself() {
    let stub = Stub::start();
    // The first upstream is pikube's own address: it must be skipped, not looped to.
    let stub_ip = stub.ip;
    let dns = start_dns(move |own| format!("nameserver {own}\nnameserver {stub_ip}\n"));
    assert!(dns.server.log().contains("forwarding loop"), "{}", dns.server.log());

    let r = dns.both(&["example.com"]);
    assert_eq!(r.rdata("A"), ["192.0.2.1"]);
    assert!(r.flags.contains("ra") && !r.flags.contains("aa"), "{}", r.text);
    let asked = stub.udp.load(Ordering::SeqCst);
    assert_eq!(asked, 1, "UDP and TCP client queries share one upstream answer");
    // Cached: not asked again; TTLs count down from the upstream's.
    dns.dig(false, &["example.com"]);
    assert_eq!(stub.udp.load(Ordering::SeqCst), 1);

    // A TTL of 1 s is respected.
    dns.dig(false, &["short.example"]);
    std::thread::sleep(Duration::from_millis(1100));
    dns.dig(false, &["short.example"]);
    assert_eq!(stub.udp.load(Ordering::SeqCst), 3);

    // Truncated over UDP upstream: pikube retries over TCP.
    let r = dns.dig(false, &["big.example"]);
    assert_eq!(r.rdata("A"), ["192.0.2.1"], "{}", r.text);
    assert_eq!(stub.tcp.load(Ordering::SeqCst), 1);

    // Upstream NXDOMAIN is passed on.
    assert_eq!(dns.both(&["nx.example"]).status, "NXDOMAIN");

    // An ExternalName's target is resolved upstream behind the CNAME.
    dns.server
        .ok("1.27", &["create", "service", "externalname", "ext", "--external-name", "www.example.org"]);
    let r = wait_for(5, "the ExternalName service", || {
        let r = dns.dig(false, &["ext.default.svc.cluster.local"]);
        (!r.answers.is_empty()).then_some(r)
    });
    assert_eq!(r.rdata("CNAME"), ["www.example.org."], "{}", r.text);
    assert_eq!(r.rdata("A"), ["192.0.2.1"], "{}", r.text);
}

#[test]
fn dns_with_only_itself_upstream_refuses_instead_of_looping() {
    let dns = start_dns(|own| format!("nameserver {own}\n"));
    let started = Instant::now();
    let r = dns.dig(false, &["example.com"]);
    assert_eq!(r.status, "REFUSED", "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(1));
    // Cluster names still work.
    assert_eq!(
        dns.dig(false, &["kubernetes.default.svc.cluster.local"]).rdata("A"),
        ["10.43.0.1"]
    );
}

#[test]
fn dns_survives_malformed_packets() {
    let dns = start_dns(|_| String::new());
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff],
        vec![0; 11],
        vec![0xff; 12],
        // a header promising 60000 questions
        vec![0x12, 0x34, 0x01, 0x00, 0xea, 0x60, 0, 0, 0, 0, 0, 0, 3, b'a', b'b'],
        vec![0x55; 60000],
    ];
    for _ in 0..50 {
        let len = rand::random::<u16>() % 600;
        garbage.push((0..len).map(|_| rand::random::<u8>()).collect());
    }
    for g in &garbage {
        let _ = udp.send_to(g, dns.addr);
    }
    // A header with a bad question gets FORMERR with its id.
    udp.send_to(&garbage[4], dns.addr).expect("send");
    let mut buf = [0u8; 512];
    let formerr = (0..200).find_map(|_| {
        let (n, _) = udp.recv_from(&mut buf).ok()?;
        let m = Message::from_vec(&buf[..n]).ok()?;
        (m.metadata.id == 0x1234).then_some(m)
    });
    let formerr = formerr.expect("a FORMERR reply");
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);

    // TCP: garbage, a length beyond the limit, a cut-off message.
    for payload in [
        b"\x00\x05hello".to_vec(),
        b"\xff\xff".to_vec(),
        b"\x00\x40abc".to_vec(),
        (0..300).map(|_| rand::random::<u8>()).collect(),
    ] {
        if let Ok(mut conn) = std::net::TcpStream::connect(dns.addr) {
            let _ = conn.write_all(&payload);
        }
    }
    // Still answering, on both transports, an opcode it does not do gets NOTIMP.
    assert_eq!(
        dns.both(&["kubernetes.default.svc.cluster.local"]).rdata("A"),
        ["10.43.0.1"]
    );
    let r = dns.dig(false, &["+opcode=2", "cluster.local"]);
    assert_eq!(r.status, "NOTIMP", "{}", r.text);
    assert!(!dns.server.log().contains("panicked"));
}

/// A network namespace of the test's own, deleted (with what runs in it) when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("pkdns-{:08x}", rand::random::<u32>());
        run(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(args);
        cmd
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("ip netns exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().expect("run");
    assert!(status.success(), "{args:?}");
}

#[test]
fn dns_answers_on_the_cluster_dns_address_on_lo_and_removes_it() {
    // In a namespace of its own, so the host's addresses stay untouched.
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "").expect("resolv.conf");
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let child = ns
        .cmd(&[env!("CARGO_BIN_EXE_pikube"), "server", "--config", "/dev/null", "--disable-agent"])
        .args(["--bind-address", "127.0.0.1", "--https-listen-port", "6443"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kubeconfig"))
        .arg("--resolv-conf")
        .arg(&resolv)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pikube in the namespace");
    let mut server = crate::harness::ChildGuard(child);
    let dig = || {
        ns.exec(&["dig", "@10.43.0.10", "+short", "+tries=1", "+time=1", "kube-dns.kube-system.svc.cluster.local"])
    };
    wait_for(30, "the DNS on 10.43.0.10:53", || {
        (dig().trim() == "10.43.0.10").then_some(())
    });
    assert!(
        ns.exec(&["ip", "-o", "addr", "show", "dev", "lo"]).contains("10.43.0.10/32"),
        "the cluster DNS address is on lo"
    );
    let pid = server.0.id().to_string();
    run(&["kill", "-TERM", &pid]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.0.try_wait().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "pikube did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
    assert!(
        !ns.exec(&["ip", "-o", "addr", "show", "dev", "lo"]).contains("10.43.0.10"),
        "the address is removed at shutdown; log:\n{log}"
    );
}
