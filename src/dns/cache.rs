//! Encoded answers of one zone version, keyed by the question as it is on the wire, so a
//! repeated question costs a hash probe and a copy instead of decoding, looking up and
//! encoding. The cache belongs to one [`Zone`](super::records::Zone) and is dropped with
//! it when the zone is replaced, so it never serves an answer of an older cluster state.
//!
//! Only plain queries take this path (one question, no answer or authority records, at
//! most an OPT record, opcode QUERY); everything else goes through the full decoder.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Largest cached reply: it fits every client's UDP limit, so truncation never depends
/// on the client.
pub const MAX_CACHED_REPLY: usize = 512;
/// Most entries per zone version (names × types asked); later answers are not cached.
pub const CAPACITY: usize = 16_384;

/// The parts of a plain query the cache needs.
#[derive(Debug, PartialEq)]
pub struct PlainQuery {
    /// Lower-cased question name, type and class as on the wire, plus whether an OPT
    /// record came with it (the reply then carries one too).
    pub key: Vec<u8>,
    /// End of the question section in the packet.
    pub question_end: usize,
}

/// Reads the header and question of `packet` if it is a plain query.
pub fn plain_query(packet: &[u8]) -> Option<PlainQuery> {
    let header = packet.get(..12)?;
    let flags = u16::from_be_bytes([header[2], header[3]]);
    let is_query = flags & 0x8000 == 0;
    let opcode = (flags >> 11) & 0x0f;
    let counts = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let (qd, an, ns, ar) = (counts(4), counts(6), counts(8), counts(10));
    if !is_query || opcode != 0 || qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut key = Vec::with_capacity(64);
    let mut at = 12;
    loop {
        let len = usize::from(*packet.get(at)?);
        // Compression pointers and extended labels are not plain.
        if len & 0xc0 != 0 {
            return None;
        }
        let label = packet.get(at..at + 1 + len)?;
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
        if len == 0 {
            break;
        }
        if key.len() > 255 {
            return None;
        }
    }
    key.extend_from_slice(packet.get(at..at + 4)?);
    let question_end = at + 4;
    if ar == 1 {
        // The OPT record: root owner name and type 41, then class, TTL, rdata length.
        let opt = packet.get(question_end..question_end + 11)?;
        if opt[0] != 0 || opt[1..3] != [0, 41] {
            return None;
        }
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if packet.len() != question_end + 11 + rdlen || opt[6] != 0 {
            // trailing bytes, or an EDNS version this path does not answer
            return None;
        }
    } else if packet.len() != question_end {
        return None;
    }
    key.push(ar as u8);
    Some(PlainQuery { key, question_end })
}

/// The cache of one zone version.
#[derive(Default)]
pub struct AnswerCache {
    entries: RwLock<HashMap<Vec<u8>, Arc<[u8]>>>,
}

impl AnswerCache {
    /// The reply to `packet`, whose plain question is `q`, if one is cached.
    pub fn reply(&self, packet: &[u8], q: &PlainQuery) -> Option<Vec<u8>> {
        let cached = self.entries.read().ok()?.get(&q.key)?.clone();
        let mut reply = cached.to_vec();
        // The client's id, RD and CD bits, and its spelling of the question.
        reply[..2].copy_from_slice(&packet[..2]);
        reply[2] = (reply[2] & !0x01) | (packet[2] & 0x01);
        reply[3] = (reply[3] & !0x10) | (packet[3] & 0x10);
        reply[12..q.question_end].copy_from_slice(&packet[12..q.question_end]);
        Some(reply)
    }

    /// Remembers `reply` as the answer to questions like `q` (not if it was truncated
    /// for a UDP client: a TCP client must get all of it).
    pub fn store(&self, q: PlainQuery, reply: &[u8]) {
        let truncated = reply.get(2).is_some_and(|f| f & 0x02 != 0);
        if truncated || reply.len() > MAX_CACHED_REPLY || reply.len() < q.question_end {
            return;
        }
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() < CAPACITY {
                entries.insert(q.key, Arc::from(reply));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn packet(name: &str, edns: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn plain_queries_are_keyed_case_insensitively() {
        let a = plain_query(&packet("Web.Default.svc.cluster.local.", false)).unwrap();
        let b = plain_query(&packet("web.default.SVC.cluster.local.", false)).unwrap();
        assert_eq!(a, b);
        let e = plain_query(&packet("web.default.svc.cluster.local.", true)).unwrap();
        assert_ne!(a.key, e.key, "EDNS is part of the key");
        assert_eq!(a.question_end, e.question_end);
    }

    #[test]
    fn other_packets_are_not_plain() {
        let p = packet("web.default.svc.cluster.local.", false);
        assert!(plain_query(&p[..p.len() - 1]).is_none());
        let mut trailing = p.clone();
        trailing.push(0);
        assert!(plain_query(&trailing).is_none());
        let mut response = p.clone();
        response[2] |= 0x80;
        assert!(plain_query(&response).is_none());
        let mut notify = p.clone();
        notify[2] |= 4 << 3;
        assert!(plain_query(&notify).is_none());
        assert!(plain_query(&[0; 11]).is_none());
        let mut pointer = p[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert!(plain_query(&pointer).is_none());
    }

    #[test]
    fn replies_take_the_clients_id_flags_and_spelling() {
        let cache = AnswerCache::default();
        let first = packet("web.default.svc.cluster.local.", false);
        let q = plain_query(&first).unwrap();
        let mut reply = first.clone();
        reply[2] |= 0x80;
        reply.extend_from_slice(&[1, 2, 3]);
        cache.store(q, &reply);
        let mut second = packet("WEB.default.svc.cluster.local.", false);
        second[2] |= 0x01;
        let q2 = plain_query(&second).unwrap();
        let got = cache.reply(&second, &q2).unwrap();
        assert_eq!(got[..2], second[..2]);
        assert_eq!(got[2] & 0x81, 0x81);
        assert_eq!(got[12..q2.question_end], second[12..q2.question_end]);
        assert_eq!(got[got.len() - 3..], [1, 2, 3]);
        let other = packet("db.default.svc.cluster.local.", false);
        assert!(cache.reply(&other, &plain_query(&other).unwrap()).is_none());
        let mut truncated = other.clone();
        truncated[2] |= 0x82;
        cache.store(plain_query(&other).unwrap(), &truncated);
        assert!(cache.reply(&other, &plain_query(&other).unwrap()).is_none());
    }
}
