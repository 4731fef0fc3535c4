use super::*;

fn config() -> ZoneConfig {
    ZoneConfig::new("cluster.local", 5, Some("10.43.0.10".parse().unwrap())).unwrap()
}

fn port(name: &str, protocol: &str, port: u16) -> PortData {
    PortData {
        name: name.into(),
        protocol: protocol.into(),
        port,
    }
}

fn service(ns: &str, name: &str, kind: ServiceKind, ports: Vec<PortData>) -> ServiceData {
    ServiceData {
        namespace: ns.into(),
        name: name.into(),
        kind,
        ports,
    }
}

fn endpoint(svc: &str, ip: &str, hostname: Option<&str>, ready: bool) -> EndpointData {
    EndpointData {
        namespace: "default".into(),
        service: svc.into(),
        ips: vec![ip.parse().unwrap()],
        hostname: hostname.map(String::from),
        ready,
        ports: vec![port("http", "TCP", 8080)],
    }
}

fn data() -> ZoneData {
    ZoneData {
        services: vec![
            service(
                "default",
                "web",
                ServiceKind::ClusterIp(vec!["10.43.0.20".parse().unwrap()]),
                vec![port("http", "TCP", 80), port("", "UDP", 99)],
            ),
            service(
                "default",
                "dual",
                ServiceKind::ClusterIp(vec![
                    "10.43.0.21".parse().unwrap(),
                    "fd00:43::21".parse().unwrap(),
                ]),
                vec![],
            ),
            service("default", "db", ServiceKind::Headless, vec![]),
            service(
                "other",
                "ext",
                ServiceKind::ExternalName("example.com".into()),
                vec![],
            ),
        ],
        endpoints: vec![
            endpoint("db", "10.42.0.5", Some("db-0"), true),
            endpoint("db", "10.42.0.6", None, true),
            endpoint("db", "10.42.0.7", Some("db-2"), false),
            endpoint("web", "10.42.0.9", None, true),
        ],
        pods: vec![PodData {
            namespace: "default".into(),
            ips: vec!["10.42.0.5".parse().unwrap()],
        }],
    }
}

fn zone() -> Zone {
    Zone::build(&config(), 42, &data())
}

fn name(s: &str) -> LowerName {
    LowerName::from(Name::from_ascii(s).unwrap())
}

/// The rdata of the answer as text, sorted; panics on anything but an answer.
fn answer(zone: &Zone, q: &str, t: RecordType) -> Vec<String> {
    match zone.lookup(&name(q), t) {
        Lookup::Answer(records) => {
            for r in &records {
                assert_eq!(r.ttl, 5, "TTL of {r}");
            }
            let mut v: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
            v.sort();
            v
        }
        other => panic!("{q} {t}: expected an answer, got {other:?}"),
    }
}

#[test]
fn cluster_ip_service_a_and_aaaa() {
    let z = zone();
    assert_eq!(
        answer(&z, "web.default.svc.cluster.local.", RecordType::A),
        ["10.43.0.20"]
    );
    assert_eq!(
        answer(&z, "dual.default.svc.cluster.local.", RecordType::AAAA),
        ["fd00:43::21"]
    );
    assert_eq!(
        answer(&z, "dual.default.svc.cluster.local.", RecordType::A),
        ["10.43.0.21"]
    );
    // A v4-only service has no AAAA: NODATA, not NXDOMAIN.
    assert_eq!(
        z.lookup(&name("web.default.svc.cluster.local."), RecordType::AAAA),
        Lookup::NoData
    );
}

#[test]
fn names_are_case_insensitive() {
    let z = zone();
    assert_eq!(
        answer(&z, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A),
        ["10.43.0.20"]
    );
}

#[test]
fn srv_for_named_ports_only() {
    let z = zone();
    assert_eq!(
        answer(
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    // The unnamed UDP port has no SRV name at all.
    assert_eq!(
        z.lookup(
            &name("_udp.web.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain
    );
    // The protocol level of a named port is an empty non-terminal.
    assert_eq!(
        z.lookup(
            &name("_tcp.web.default.svc.cluster.local."),
            RecordType::SRV
        ),
        Lookup::NoData
    );
}

#[test]
fn headless_service_answers_ready_endpoints() {
    let z = zone();
    assert_eq!(
        answer(&z, "db.default.svc.cluster.local.", RecordType::A),
        ["10.42.0.5", "10.42.0.6"]
    );
    assert_eq!(
        answer(&z, "db-0.db.default.svc.cluster.local.", RecordType::A),
        ["10.42.0.5"]
    );
    // An endpoint without hostname is named after its IP.
    assert_eq!(
        answer(&z, "10-42-0-6.db.default.svc.cluster.local.", RecordType::A),
        ["10.42.0.6"]
    );
    // Not ready: not published.
    assert_eq!(
        z.lookup(&name("db-2.db.default.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        answer(
            &z,
            "_http._tcp.db.default.svc.cluster.local.",
            RecordType::SRV
        ),
        [
            "0 50 8080 10-42-0-6.db.default.svc.cluster.local.",
            "0 50 8080 db-0.db.default.svc.cluster.local."
        ]
    );
}

#[test]
fn headless_service_without_endpoints_is_nodata() {
    let mut d = data();
    d.endpoints.clear();
    let z = Zone::build(&config(), 1, &d);
    assert_eq!(
        z.lookup(&name("db.default.svc.cluster.local."), RecordType::A),
        Lookup::NoData
    );
}

#[test]
fn endpoints_of_cluster_ip_services_get_no_names() {
    let z = zone();
    assert_eq!(
        z.lookup(
            &name("10-42-0-9.web.default.svc.cluster.local."),
            RecordType::A
        ),
        Lookup::NxDomain
    );
}

#[test]
fn external_name_is_a_cname_for_every_type() {
    let z = zone();
    for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
        assert_eq!(
            answer(&z, "ext.other.svc.cluster.local.", t),
            ["example.com."]
        );
    }
}

#[test]
fn pod_records() {
    let z = zone();
    assert_eq!(
        answer(&z, "10-42-0-5.default.pod.cluster.local.", RecordType::A),
        ["10.42.0.5"]
    );
    // Only pods that exist, in their own namespace.
    assert_eq!(
        z.lookup(&name("10-42-0-5.other.pod.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        z.lookup(&name("10-42-9-9.default.pod.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
}

#[test]
fn ptr_for_service_and_endpoint_ips() {
    let z = zone();
    assert_eq!(
        answer(&z, "20.0.43.10.in-addr.arpa.", RecordType::PTR),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        answer(&z, "5.0.42.10.in-addr.arpa.", RecordType::PTR),
        ["db-0.db.default.svc.cluster.local."]
    );
    let v6 = Name::from("fd00:43::21".parse::<IpAddr>().unwrap());
    assert_eq!(
        answer(&z, &v6.to_string(), RecordType::PTR),
        ["dual.default.svc.cluster.local."]
    );
    // Unknown reverse names are not ours to deny.
    assert_eq!(
        z.lookup(&name("1.1.168.192.in-addr.arpa."), RecordType::PTR),
        Lookup::Outside
    );
}

#[test]
fn nxdomain_versus_nodata() {
    let z = zone();
    for n in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "pod.cluster.local.",
        "default.pod.cluster.local.",
    ] {
        assert_eq!(z.lookup(&name(n), RecordType::A), Lookup::NoData, "{n}");
    }
    assert_eq!(
        z.lookup(&name("web.default.svc.cluster.local."), RecordType::MX),
        Lookup::NoData
    );
    for n in [
        // what the search path tries first for `web.default` from a pod in `default`
        "web.default.default.svc.cluster.local.",
        "web.default.svc.default.svc.cluster.local.",
        "nope.default.svc.cluster.local.",
        "web.nope.svc.cluster.local.",
        "nope.svc.cluster.local.",
        "other.pod.cluster.local.",
        "nope.cluster.local.",
    ] {
        assert_eq!(z.lookup(&name(n), RecordType::A), Lookup::NxDomain, "{n}");
    }
    assert_eq!(
        z.lookup(&name("example.com."), RecordType::A),
        Lookup::Outside
    );
}

#[test]
fn apex_records_and_schema_version() {
    let z = zone();
    assert_eq!(
        answer(&z, "dns-version.cluster.local.", RecordType::TXT),
        ["1.1.0"]
    );
    assert_eq!(
        answer(&z, "cluster.local.", RecordType::NS),
        ["ns.dns.cluster.local."]
    );
    assert_eq!(
        answer(&z, "ns.dns.cluster.local.", RecordType::A),
        ["10.43.0.10"]
    );
    let soa = answer(&z, "cluster.local.", RecordType::SOA);
    assert_eq!(
        soa,
        ["ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5"]
    );
    assert_eq!(z.soa().record_type(), RecordType::SOA);
}

#[test]
fn other_cluster_domain() {
    let cfg = ZoneConfig::new("k8s.example.", 30, None).unwrap();
    let z = Zone::build(&cfg, 1, &data());
    assert!(matches!(
        z.lookup(&name("web.default.svc.k8s.example."), RecordType::A),
        Lookup::Answer(_)
    ));
    assert_eq!(
        z.lookup(&name("web.default.svc.cluster.local."), RecordType::A),
        Lookup::Outside
    );
    assert!(ZoneConfig::new(".", 5, None).is_err());
    assert!(ZoneConfig::new("bad..domain", 5, None).is_err());
}

#[test]
fn invalid_names_are_skipped_not_fatal() {
    let mut d = data();
    d.services.push(service(
        "default",
        "bad name!",
        ServiceKind::ClusterIp(vec!["10.43.0.99".parse().unwrap()]),
        vec![],
    ));
    d.services.push(service(
        "default",
        "ext2",
        ServiceKind::ExternalName("..".into()),
        vec![],
    ));
    let z = Zone::build(&config(), 1, &d);
    assert_eq!(
        answer(&z, "web.default.svc.cluster.local.", RecordType::A),
        ["10.43.0.20"]
    );
    assert_eq!(
        z.lookup(&name("ext2.default.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
}
