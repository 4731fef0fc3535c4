//! Forwarding of names outside the cluster domain to the node's upstream resolvers (the
//! `nameserver` lines of `--resolv-conf`), with a small bounded cache that respects the
//! answers' TTLs.
//!
//! Loop protection: an upstream that is this server itself (its listen address, the
//! cluster DNS address, or — when listening on every address — any local address on the
//! same port) is skipped when the resolv.conf is read, so pikube never sends a query to
//! itself (as CoreDNS's `loop` plugin guards against).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Error;

/// Default upstream port.
const DNS_PORT: u16 = 53;
/// Longest time an upstream answer is cached (k3s's Corefile: `cache 30`).
pub const MAX_CACHE_TTL: u32 = 30;
/// Entries the cache holds at most.
pub const CACHE_CAPACITY: usize = 1024;
/// Time each upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// EDNS payload size advertised upstream and to clients.
pub const EDNS_PAYLOAD: u16 = 1232;

/// Why a query could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No usable upstream is configured.
    #[error("no upstream resolver is configured")]
    NoUpstream,
    /// Every upstream failed or timed out.
    #[error("no upstream resolver answered: {0}")]
    Failed(String),
}

/// The upstream resolvers of a resolv.conf text, without those that are this server.
/// Returns the upstreams and the skipped (looping) addresses.
pub fn upstreams_from_resolv_conf(
    text: &str,
    is_self: impl Fn(&SocketAddr) -> bool,
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let mut upstreams = Vec::new();
    let mut skipped = Vec::new();
    for server in crate::agent::sandbox::HostDns::parse(text).servers {
        // `fe80::1%eth0` scope ids are dropped; such an upstream then fails like any other.
        let Some(ip) = server
            .split('%')
            .next()
            .and_then(|w| w.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, DNS_PORT);
        if is_self(&addr) {
            skipped.push(addr);
        } else if !upstreams.contains(&addr) {
            upstreams.push(addr);
        }
    }
    (upstreams, skipped)
}

/// Whether `ip` is an address of this host (binding to it succeeds).
pub fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The loop check for a server listening on `listen` and answering on `cluster_dns`.
pub fn self_check(listen: SocketAddr, cluster_dns: IpAddr) -> impl Fn(&SocketAddr) -> bool {
    move |upstream: &SocketAddr| {
        upstream.ip() == listen.ip()
            || upstream.ip() == cluster_dns
            || (listen.ip().is_unspecified()
                && upstream.port() == listen.port()
                && is_local_address(upstream.ip()))
    }
}

type Key = (LowerName, RecordType, DNSClass);

struct Entry {
    stored: Instant,
    ttl: u32,
    message: Message,
}

/// The forwarder: upstream list and answer cache.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Entry>>,
}

impl Forwarder {
    /// A forwarder to `upstreams` (tried in order).
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder {
            upstreams,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reads the upstreams from a resolv.conf file, skipping this server's own addresses
    /// (a missing file means no upstreams).
    pub async fn from_resolv_conf(
        path: &std::path::Path,
        is_self: impl Fn(&SocketAddr) -> bool + Send + 'static,
    ) -> Result<Forwarder, Error> {
        let text = match tokio::fs::read_to_string(path).await {
            Ok(text) => text,
            // A node without resolv.conf still answers the cluster domain.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(Error::ResolvConf {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let (upstreams, skipped) =
            tokio::task::spawn_blocking(move || upstreams_from_resolv_conf(&text, is_self))
                .await
                .map_err(|e| Error::Config(format!("resolv.conf check failed: {e}")))?;
        for s in &skipped {
            tracing::warn!(upstream = %s, resolv_conf = %path.display(), "skipping upstream resolver: it is this DNS server (forwarding loop)");
        }
        if upstreams.is_empty() {
            tracing::warn!(resolv_conf = %path.display(), "no upstream resolver: names outside the cluster domain are refused");
        }
        Ok(Forwarder::new(upstreams))
    }

    /// The upstreams in use.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// The upstream answer to `query`, from the cache when it is fresh there.
    pub async fn resolve(&self, query: &Query) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        let key = (
            LowerName::from(query.name()),
            query.query_type(),
            query.query_class(),
        );
        if let Some(m) = self.cached(&key) {
            return Ok(m);
        }
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        request.set_edns(edns);
        let mut errors = Vec::new();
        for upstream in &self.upstreams {
            match exchange(*upstream, &request).await {
                Ok(answer) => {
                    self.store(key, &answer);
                    return Ok(answer);
                }
                Err(e) => errors.push(format!("{upstream}: {e}")),
            }
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            return None;
        }
        let mut m = entry.message.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.decrement_ttl(age);
        }
        Some(m)
    }

    fn store(&self, key: Key, message: &Message) {
        let Some(ttl) = cache_ttl(message) else {
            return;
        };
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, e| e.stored.elapsed().as_secs() < u64::from(e.ttl));
        }
        if cache.len() >= CACHE_CAPACITY {
            if let Some(k) = cache.keys().next().cloned() {
                cache.remove(&k);
            }
        }
        cache.insert(
            key,
            Entry {
                stored: Instant::now(),
                ttl,
                message: message.clone(),
            },
        );
    }
}

/// How long an upstream answer may be cached: the smallest TTL of its records (the SOA
/// minimum for negative answers), at most [`MAX_CACHE_TTL`]; None for failures.
pub fn cache_ttl(message: &Message) -> Option<u32> {
    match message.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => return None,
    }
    if message.metadata.truncation {
        return None;
    }
    let mut ttl = MAX_CACHE_TTL;
    for r in message.answers.iter().chain(message.authorities.iter()) {
        ttl = ttl.min(r.ttl);
        if let RData::SOA(soa) = &r.data {
            ttl = ttl.min(soa.minimum);
        }
    }
    (ttl > 0).then_some(ttl)
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Whether `answer` is the answer to `request` (same id and question).
fn answers(request: &Message, answer: &Message) -> bool {
    answer.metadata.id == request.metadata.id && answer.queries == request.queries
}

/// One question to one upstream: UDP, then TCP when the answer is truncated.
async fn exchange(upstream: SocketAddr, request: &Message) -> Result<Message, String> {
    let bytes = request.to_vec().map_err(|e| e.to_string())?;
    let udp = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let socket = tokio::net::UdpSocket::bind(unspecified_for(&upstream)).await?;
        socket.connect(upstream).await?;
        socket.send(&bytes).await?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).await?;
            // Stray or forged datagrams are ignored; only the matching answer counts.
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if answers(request, &m) {
                    return Ok::<_, std::io::Error>(m);
                }
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_string())?
    .map_err(|e| e.to_string())?;
    if !udp.metadata.truncation {
        return Ok(udp);
    }
    tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(upstream).await?;
        let len = u16::try_from(bytes.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        let m = Message::from_vec(&buf).map_err(std::io::Error::other)?;
        if answers(request, &m) {
            Ok(m)
        } else {
            Err(std::io::Error::other("answer does not match the question"))
        }
    })
    .await
    .map_err(|_| "timed out over TCP".to_string())?
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    #[test]
    fn resolv_conf_parsing_skips_self() {
        let text = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver 10.43.0.10\n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 127.0.0.53\noptions ndots:5\n";
        let is_self = self_check(
            "127.0.0.1:5353".parse().unwrap(),
            "10.43.0.10".parse().unwrap(),
        );
        let (up, skipped) = upstreams_from_resolv_conf(text, is_self);
        assert_eq!(
            up,
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            skipped,
            vec!["10.43.0.10:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn listening_everywhere_skips_local_addresses() {
        let is_self = self_check("0.0.0.0:53".parse().unwrap(), "10.43.0.10".parse().unwrap());
        let (up, skipped) =
            upstreams_from_resolv_conf("nameserver 127.0.0.1\nnameserver 127.9.9.9\n", is_self);
        assert!(up.is_empty());
        assert_eq!(skipped.len(), 2);
    }

    fn answer(rcode: ResponseCode, records: Vec<Record>) -> Message {
        let mut m = Message::response(1, hickory_proto::op::OpCode::Query);
        m.metadata.response_code = rcode;
        m.answers = records;
        m
    }

    #[test]
    fn cache_ttl_is_the_smallest_bounded() {
        let n = Name::from_ascii("example.com.").unwrap();
        let a = |ttl| Record::from_rdata(n.clone(), ttl, RData::A(A::new(192, 0, 2, 1)));
        assert_eq!(
            cache_ttl(&answer(ResponseCode::NoError, vec![a(300), a(7)])),
            Some(7)
        );
        assert_eq!(
            cache_ttl(&answer(ResponseCode::NoError, vec![a(3000)])),
            Some(MAX_CACHE_TTL)
        );
        assert_eq!(cache_ttl(&answer(ResponseCode::NoError, vec![a(0)])), None);
        assert_eq!(cache_ttl(&answer(ResponseCode::ServFail, vec![])), None);
        let mut neg = answer(ResponseCode::NXDomain, vec![]);
        neg.authorities.push(Record::from_rdata(
            n.clone(),
            60,
            RData::SOA(SOA::new(n.clone(), n.clone(), 1, 1, 1, 1, 4)),
        ));
        assert_eq!(cache_ttl(&neg), Some(4));
    }

    #[tokio::test]
    async fn a_missing_resolv_conf_means_no_upstreams() {
        let dir = tempfile::tempdir().unwrap();
        let f = Forwarder::from_resolv_conf(&dir.path().join("none"), |_| false)
            .await
            .unwrap();
        assert!(f.upstreams().is_empty());
        assert!(Forwarder::from_resolv_conf(dir.path(), |_| false)
            .await
            .is_err());
    }

    #[tokio::test]
    async fn no_upstream_is_an_error_not_a_hang() {
        let f = Forwarder::new(Vec::new());
        let q = Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A);
        assert!(matches!(f.resolve(&q).await, Err(ForwardError::NoUpstream)));
    }
}
