use super::*;
use crate::dns::records::{EndpointData, ServiceData, ServiceKind, Zone, ZoneConfig, ZoneData};
use hickory_proto::rr::Name;

fn handler(endpoints: usize) -> Handler {
    let config = ZoneConfig::new("cluster.local", 5, None).unwrap();
    let data = ZoneData {
        services: vec![
            ServiceData {
                namespace: "default".into(),
                name: "web".into(),
                kind: ServiceKind::ClusterIp(vec!["10.43.0.20".parse().unwrap()]),
                ports: vec![],
            },
            ServiceData {
                namespace: "default".into(),
                name: "alias".into(),
                kind: ServiceKind::ExternalName("web.default.svc.cluster.local".into()),
                ports: vec![],
            },
            ServiceData {
                namespace: "default".into(),
                name: "loop".into(),
                kind: ServiceKind::ExternalName("loop.default.svc.cluster.local".into()),
                ports: vec![],
            },
            ServiceData {
                namespace: "default".into(),
                name: "many".into(),
                kind: ServiceKind::Headless,
                ports: vec![],
            },
        ],
        endpoints: (0..endpoints)
            .map(|i| EndpointData {
                namespace: "default".into(),
                service: "many".into(),
                ips: vec![format!("10.42.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap()],
                hostname: None,
                ready: true,
                ports: vec![],
            })
            .collect(),
        pods: vec![],
    };
    let zone = Arc::new(SharedZone::new(Zone::build(&config, 1, &data)));
    Handler::new(zone, Arc::new(Forwarder::new(Vec::new())))
}

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

async fn ask(h: &Handler, m: &Message, udp: bool) -> Message {
    let reply = h.handle(&m.to_vec().unwrap(), udp).await.expect("a reply");
    let r = Message::from_vec(&reply).unwrap();
    assert_eq!(r.metadata.id, m.metadata.id);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    r
}

#[tokio::test]
async fn answers_cluster_names_authoritatively() {
    let h = handler(0);
    let q = query("web.default.svc.cluster.local.", RecordType::A);
    let r = ask(&h, &q, true).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.queries, q.queries);
}

#[tokio::test]
async fn cnames_into_the_zone_are_followed_once() {
    let h = handler(0);
    let r = ask(
        &h,
        &query("alias.default.svc.cluster.local.", RecordType::A),
        true,
    )
    .await;
    let types: Vec<RecordType> = r.answers.iter().map(|a| a.record_type()).collect();
    assert_eq!(types, [RecordType::CNAME, RecordType::A]);
    // A CNAME to itself is answered as it is, not followed forever.
    let r = ask(
        &h,
        &query("loop.default.svc.cluster.local.", RecordType::A),
        true,
    )
    .await;
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn negative_answers_carry_the_soa() {
    let h = handler(0);
    let r = ask(
        &h,
        &query("nope.default.svc.cluster.local.", RecordType::A),
        true,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    let r = ask(
        &h,
        &query("default.svc.cluster.local.", RecordType::A),
        true,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn bad_input_gets_error_codes_or_nothing() {
    let h = handler(0);
    // Too short for a header: dropped.
    assert!(h.handle(b"\x01\x02\x03", true).await.is_none());
    // A header followed by garbage: FORMERR with the id.
    let mut junk = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(b"\x3fgarbage");
    let r = Message::from_vec(&h.handle(&junk, true).await.unwrap()).unwrap();
    assert_eq!(r.metadata.id, 0xabcd);
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    // Responses are never answered (no reflection loops).
    let mut resp = query("web.default.svc.cluster.local.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(h.handle(&resp.to_vec().unwrap(), true).await.is_none());
    // Other opcodes: NOTIMP.
    let mut notify = query("cluster.local.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        ask(&h, &notify, true).await.metadata.response_code,
        ResponseCode::NotImp
    );
    // Two questions: FORMERR.
    let mut two = query("web.default.svc.cluster.local.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("cluster.local.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        ask(&h, &two, true).await.metadata.response_code,
        ResponseCode::FormErr
    );
    // Zone transfers and other classes: REFUSED.
    let axfr = query("cluster.local.", RecordType::AXFR);
    assert_eq!(
        ask(&h, &axfr, false).await.metadata.response_code,
        ResponseCode::Refused
    );
    let mut chaos = query("version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        ask(&h, &chaos, true).await.metadata.response_code,
        ResponseCode::Refused
    );
}

#[tokio::test]
async fn outside_names_without_upstream_are_refused() {
    let h = handler(0);
    let r = ask(&h, &query("example.com.", RecordType::A), true).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn long_udp_answers_are_truncated_not_over_tcp() {
    let h = handler(100);
    let q = query("many.default.svc.cluster.local.", RecordType::A);
    let r = ask(&h, &q, true).await;
    assert!(r.metadata.truncation);
    assert!(r.answers.is_empty());
    let r = ask(&h, &q, false).await;
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    // With EDNS the client's larger buffer is used.
    let mut e = q.clone();
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    e.set_edns(edns);
    let r = ask(&h, &e, true).await;
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    assert!(r.edns.is_some());
}
