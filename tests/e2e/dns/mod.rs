//! Cluster DNS end to end: a real `pikube server`, Services and Pods made with kubectl
//! (pods made Running by the node simulator, so the endpoints controller writes
//! EndpointSlices), queried with the real `dig` over UDP and TCP and with the C library's
//! resolver through a pod-style resolv.conf.
//!
//! Every DNS server here (pikube's and the upstream stub) listens on port 53 of a
//! loopback address of its own (127.x.y.z), as resolv.conf has no port; nothing leaves
//! the loopback interface.

mod forward;
mod node;
mod records;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::Duration;

use crate::harness::{s, Server};

/// A loopback address no other test uses, with port 53 free on it for UDP and TCP.
pub fn unique_loopback() -> Ipv4Addr {
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
pub struct Dns {
    server: Server,
    addr: SocketAddr,
    _resolv: tempfile::NamedTempFile,
}

pub fn start_dns(resolv: impl Fn(Ipv4Addr) -> String) -> Dns {
    let ip = unique_loopback();
    let mut file = tempfile::NamedTempFile::new().expect("temp resolv.conf");
    file.write_all(resolv(ip).as_bytes())
        .expect("write resolv.conf");
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
        (dns.dig(false, &["kubernetes.default.svc.cluster.local"])
            .status
            == "NOERROR")
            .then_some(())
    });
    dns
}

/// What dig printed.
pub struct Dig {
    status: String,
    flags: String,
    answers: Vec<String>,
    additional: Vec<String>,
    text: String,
}

impl Dig {
    /// The rdata of the answer records of `rtype`, sorted.
    pub fn rdata(&self, rtype: &str) -> Vec<String> {
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
    pub fn dig(&self, tcp: bool, args: &[&str]) -> Dig {
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
    pub fn both(&self, args: &[&str]) -> Dig {
        let udp = self.dig(false, args);
        let tcp = self.dig(true, args);
        assert_eq!(
            udp.status, tcp.status,
            "{args:?}\n{}\n{}",
            udp.text, tcp.text
        );
        let (mut a, mut b) = (udp.answers.clone(), tcp.answers.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{args:?}");
        udp
    }
}

/// Polls `f` every 50 ms (DNS changes are expected within a second).
pub fn wait_for<T>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    crate::harness::wait_for_every(Duration::from_millis(50), secs, what, f)
}
