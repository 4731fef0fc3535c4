//! The DNS wire protocol on UDP and TCP: decode a query, answer it from the cluster zone
//! or through the forwarder, encode the reply within the client's size limit.
//!
//! hickory-proto does the encoding; the serving loops are our own because they are small
//! and keep the hot path free of per-query tasks and log lines: several tasks receive
//! from one UDP socket and answer cluster names inline; only forwarded questions get a
//! task. Bad input never panics: undecodable packets with a header get FORMERR, shorter
//! ones are dropped, other opcodes NOTIMP, zone transfers and other classes REFUSED.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::cache;
use super::forward::{Forwarder, EDNS_PAYLOAD};
use super::records::Lookup;
use super::watch::SharedZone;

/// Largest UDP datagram read; longer ones arrive cut and get FORMERR.
const MAX_UDP: usize = 4096;
/// Largest query accepted over TCP; a longer one closes the connection.
const MAX_TCP_QUERY: usize = 4096;
/// A TCP connection idle this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections served at once.
const MAX_TCP_CONNECTIONS: usize = 256;
/// Forwarded questions in flight at once; beyond that, SERVFAIL.
const MAX_FORWARDS: usize = 512;

/// What to do with one packet.
enum Reply {
    /// Send this.
    Now(Vec<u8>),
    /// Ask upstream first.
    Forward(Box<Pending>),
    /// Send nothing.
    Drop,
}

/// A reply that waits for an upstream answer.
struct Pending {
    response: Message,
    question: Query,
    limit: usize,
}

/// Answers queries; shared by every serving task.
pub struct Handler {
    zone: Arc<SharedZone>,
    forwarder: Arc<Forwarder>,
    forwards: tokio::sync::Semaphore,
}

/// The reply skeleton for `req`: same id, question and RD bit; RA set; EDNS if asked.
fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.queries = req.queries.clone();
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(edns);
    }
    m
}

/// Encodes `m`; a reply longer than `limit` is cut to its header and question with TC set,
/// so the client retries over TCP.
fn encode(m: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    m.truncate().to_vec().ok()
}

/// The bare error reply to a packet whose header could be read but not the rest.
fn header_error(packet: &[u8], rcode: ResponseCode) -> Reply {
    if packet.len() < 12 {
        return Reply::Drop;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let is_response = packet[2] & 0x80 != 0;
    if is_response {
        return Reply::Drop;
    }
    let op_code = OpCode::from_u8((packet[2] >> 3) & 0x0f);
    match Message::error_msg(id, op_code, rcode).to_vec() {
        Ok(b) => Reply::Now(b),
        Err(_) => Reply::Drop,
    }
}

impl Handler {
    /// A handler over `zone` that sends other names to `forwarder`.
    pub fn new(zone: Arc<SharedZone>, forwarder: Arc<Forwarder>) -> Handler {
        Handler {
            zone,
            forwarder,
            forwards: tokio::sync::Semaphore::new(MAX_FORWARDS),
        }
    }

    /// The reply to one packet (None: send nothing), forwarding when needed.
    pub async fn handle(&self, packet: &[u8], udp: bool) -> Option<Vec<u8>> {
        match self.answer(packet, udp) {
            Reply::Now(b) => Some(b),
            Reply::Drop => None,
            Reply::Forward(p) => self.forward(*p).await,
        }
    }

    fn answer(&self, packet: &[u8], udp: bool) -> Reply {
        let snapshot = self.zone.current();
        let plain = cache::plain_query(packet);
        if let Some(q) = &plain {
            if let Some(reply) = snapshot.answers.reply(packet, q) {
                return Reply::Now(reply);
            }
        }
        let req = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => return header_error(packet, ResponseCode::FormErr),
        };
        if req.metadata.message_type != MessageType::Query {
            return Reply::Drop;
        }
        let limit = if udp {
            usize::from(req.max_payload()).min(MAX_UDP)
        } else {
            usize::from(u16::MAX)
        };
        let reply = |m: Message| match encode(&m, limit) {
            Some(b) => Reply::Now(b),
            None => Reply::Drop,
        };
        if req.metadata.op_code != OpCode::Query {
            return reply(response_to(&req, ResponseCode::NotImp));
        }
        if req.queries.len() != 1 {
            return reply(response_to(&req, ResponseCode::FormErr));
        }
        let question = &req.queries[0];
        let qtype = question.query_type();
        if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY)
            || matches!(
                qtype,
                RecordType::AXFR | RecordType::IXFR | RecordType::OPT | RecordType::ZERO
            )
        {
            return reply(response_to(&req, ResponseCode::Refused));
        }
        let zone = &snapshot.zone;
        let mut response = response_to(&req, ResponseCode::NoError);
        match zone.lookup(&LowerName::from(question.name()), qtype) {
            Lookup::Outside => {
                return Reply::Forward(Box::new(Pending {
                    response,
                    question: question.clone(),
                    limit,
                }))
            }
            Lookup::NxDomain => {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.metadata.authoritative = true;
                response.add_authority(zone.soa().clone());
            }
            Lookup::NoData => {
                response.metadata.authoritative = true;
                response.add_authority(zone.soa().clone());
            }
            Lookup::Answer(records) => {
                response.metadata.authoritative = true;
                response.add_answers(records.into_iter().cloned());
                add_glue(zone, &mut response);
                // An ExternalName's target is resolved too (in the zone, or upstream), so
                // stub resolvers that do not chase CNAMEs get the addresses.
                if let Some(target) = cname_target(&response, qtype) {
                    let key = LowerName::from(&target);
                    if !zone.contains(&key) {
                        let mut question = question.clone();
                        question.set_name(target);
                        return Reply::Forward(Box::new(Pending {
                            response,
                            question,
                            limit,
                        }));
                    }
                    if let Lookup::Answer(more) = zone.lookup(&key, qtype) {
                        // One step only: a CNAME answer again is not followed further.
                        if more.iter().all(|r| r.record_type() == qtype) {
                            response.add_answers(more.into_iter().cloned());
                        }
                    }
                }
            }
        }
        let Some(bytes) = encode(&response, limit) else {
            return Reply::Drop;
        };
        if let Some(q) = plain {
            snapshot.answers.store(q, &bytes);
        }
        Reply::Now(bytes)
    }

    async fn forward(&self, p: Pending) -> Option<Vec<u8>> {
        let Pending {
            mut response,
            question,
            limit,
        } = p;
        let chased = !response.answers.is_empty();
        let upstream = match self.forwards.try_acquire() {
            Ok(_permit) => self.forwarder.resolve(&question).await,
            Err(_) => Err(super::forward::ForwardError::Failed(
                "too many in flight".into(),
            )),
        };
        match upstream {
            Ok(answer) => {
                response.add_answers(answer.answers);
                if !chased {
                    response.metadata.response_code = answer.metadata.response_code;
                    response.metadata.authentic_data = answer.metadata.authentic_data;
                    response.add_authorities(answer.authorities);
                    response.add_additionals(answer.additionals);
                }
            }
            Err(super::forward::ForwardError::NoUpstream) if !chased => {
                response.metadata.response_code = ResponseCode::Refused;
            }
            Err(e) => {
                tracing::debug!(name = %question.name(), error = %e, "forwarding failed");
                if !chased {
                    response.metadata.response_code = ResponseCode::ServFail;
                }
            }
        }
        encode(&response, limit)
    }

    /// Serves UDP on `socket` with `workers` receiving tasks until `shutdown` completes.
    pub async fn serve_udp(self: Arc<Self>, socket: UdpSocket, workers: usize) {
        let socket = Arc::new(socket);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers.max(1) {
            let socket = socket.clone();
            let handler = self.clone();
            set.spawn(async move { handler.udp_worker(socket).await });
        }
        while set.join_next().await.is_some() {}
    }

    async fn udp_worker(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_UDP];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; keep serving.
                    tracing::debug!(error = %e, "udp receive");
                    continue;
                }
            };
            match self.answer(&buf[..n], true) {
                Reply::Now(bytes) => {
                    let _ = socket.send_to(&bytes, peer).await;
                }
                Reply::Drop => {}
                Reply::Forward(p) => {
                    let handler = self.clone();
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        if let Some(bytes) = handler.forward(*p).await {
                            let _ = socket.send_to(&bytes, peer).await;
                        }
                    });
                }
            }
        }
    }

    /// Serves TCP connections from `listener` (length-prefixed messages, RFC 7766).
    pub async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "tcp accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let handler = self.clone();
            tokio::spawn(async move {
                handler.tcp_connection(stream, peer).await;
                drop(permit);
            });
        }
    }

    async fn tcp_connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let mut buf = Vec::new();
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                _ => return,
            };
            if len > MAX_TCP_QUERY {
                tracing::debug!(%peer, len, "oversized query over tcp");
                return;
            }
            buf.resize(len, 0);
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let Some(reply) = self.handle(&buf, false).await else {
                continue;
            };
            let Ok(n) = u16::try_from(reply.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&n.to_be_bytes());
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

/// Addresses of in-zone SRV targets go to the additional section.
fn add_glue(zone: &super::records::Zone, response: &mut Message) {
    let targets: Vec<LowerName> = response
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(LowerName::from(&srv.target)),
            _ => None,
        })
        .collect();
    for t in targets {
        for qtype in [RecordType::A, RecordType::AAAA] {
            if let Lookup::Answer(glue) = zone.lookup(&t, qtype) {
                response.add_additionals(glue.into_iter().cloned());
            }
        }
    }
}

/// The target of an answer that is one CNAME, when the question was for another type.
fn cname_target(response: &Message, qtype: RecordType) -> Option<hickory_proto::rr::Name> {
    if matches!(qtype, RecordType::CNAME | RecordType::ANY) {
        return None;
    }
    let [record]: &[Record] = response.answers.as_slice() else {
        return None;
    };
    match &record.data {
        RData::CNAME(target) => Some(target.0.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
