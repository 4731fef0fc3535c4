//! Real-traffic tests of the service proxy, as root, in network namespaces each test
//! creates (nothing in the host namespace). One test binary; one module per topic.

mod cluster_ip;
mod fixture;
mod host_gw;
mod lifecycle;
mod netns;
mod node_port;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use netns::{fetch, TestNs};

/// `n` requests to `addr:port` from inside `ns`; the answering lines, panicking on any
/// failure.
pub fn fetch_many(ns: &TestNs, addr: Ipv4Addr, port: u16, n: usize) -> Vec<String> {
    ns.run(move || {
        (0..n)
            .map(|i| {
                fetch(addr, port).unwrap_or_else(|e| panic!("request {i} to {addr}:{port}: {e}"))
            })
            .collect()
    })
}

/// One request from inside `ns` and how long it took to answer or fail.
pub fn try_fetch(ns: &TestNs, addr: Ipv4Addr, port: u16) -> (std::io::Result<String>, Duration) {
    ns.run(move || {
        let t = Instant::now();
        let r = fetch(addr, port);
        (r, t.elapsed())
    })
}

/// How many answers came from server `name`.
pub fn count(answers: &[String], name: &str) -> usize {
    answers
        .iter()
        .filter(|a| a.split(' ').next() == Some(name))
        .count()
}

/// `a.b.c.d` → address (test constants only).
pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}
