//! Forwarding to an upstream stub resolver, loop refusal, and bad input.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};

use super::{start_dns, unique_loopback, wait_for};

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
    assert!(
        dns.server.log().contains("forwarding loop"),
        "{}",
        dns.server.log()
    );

    let r = dns.both(&["example.com"]);
    assert_eq!(r.rdata("A"), ["192.0.2.1"]);
    assert!(
        r.flags.contains("ra") && !r.flags.contains("aa"),
        "{}",
        r.text
    );
    let asked = stub.udp.load(Ordering::SeqCst);
    assert_eq!(
        asked, 1,
        "UDP and TCP client queries share one upstream answer"
    );
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
    dns.server.ok(
        "1.27",
        &[
            "create",
            "service",
            "externalname",
            "ext",
            "--external-name",
            "www.example.org",
        ],
    );
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
        dns.dig(false, &["kubernetes.default.svc.cluster.local"])
            .rdata("A"),
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
        vec![
            0x12, 0x34, 0x01, 0x00, 0xea, 0x60, 0, 0, 0, 0, 0, 0, 3, b'a', b'b',
        ],
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
        dns.both(&["kubernetes.default.svc.cluster.local"])
            .rdata("A"),
        ["10.43.0.1"]
    );
    let r = dns.dig(false, &["+opcode=2", "cluster.local"]);
    assert_eq!(r.status, "NOTIMP", "{}", r.text);
    assert!(!dns.server.log().contains("panicked"));
}
