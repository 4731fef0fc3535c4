//! The cluster zone as data: plain Service / EndpointSlice / Pod facts in, the records of
//! the Kubernetes DNS specification out
//! (<https://github.com/kubernetes/dns/blob/master/docs/specification.md>, schema 1.1.0).
//!
//! Pure: no I/O and no Kubernetes types, so every rule is unit-tested here. A [`Zone`] is
//! built once per change of the cluster and then only read: a lookup is one hash probe.
//! Every ancestor of an owner name inside the zone exists as an empty non-terminal, so a
//! name that exists without records of the asked type answers NODATA and any other name
//! NXDOMAIN, as the specification requires (`<svc>.<ns>.<ns>.svc.<zone>` from a search
//! path is NXDOMAIN, `<ns>.svc.<zone>` is NODATA).

use std::collections::HashMap;
use std::net::IpAddr;

use hickory_proto::rr::rdata::{self, A, AAAA, SOA, SRV, TXT};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

/// Version of the Kubernetes DNS schema served at `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// A port of a Service or of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortData {
    /// Port name; SRV records exist only for named ports.
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Port number.
    pub port: u16,
}

/// What a Service's name resolves to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// A ClusterIP (also NodePort, LoadBalancer) Service: its cluster IPs.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the IPs of its ready endpoints.
    Headless,
    /// `type: ExternalName`: a CNAME to this name.
    ExternalName(String),
}

/// The facts of one Service that DNS needs.
#[derive(Clone, Debug, Hash)]
pub struct ServiceData {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Addressing.
    pub kind: ServiceKind,
    /// Ports of the Service.
    pub ports: Vec<PortData>,
}

/// One endpoint of an EndpointSlice of a Service.
#[derive(Clone, Debug, Hash)]
pub struct EndpointData {
    /// Namespace of the Service.
    pub namespace: String,
    /// The Service the slice belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// Addresses of the endpoint.
    pub ips: Vec<IpAddr>,
    /// `hostname` of the endpoint (pods with hostname and subdomain, StatefulSets).
    pub hostname: Option<String>,
    /// Whether it is ready (only ready endpoints are published).
    pub ready: bool,
    /// Ports of its slice.
    pub ports: Vec<PortData>,
}

/// The facts of one Pod that DNS needs.
#[derive(Clone, Debug, Hash)]
pub struct PodData {
    /// Namespace.
    pub namespace: String,
    /// Its pod IPs.
    pub ips: Vec<IpAddr>,
}

/// Everything a zone is built from.
#[derive(Clone, Debug, Default)]
pub struct ZoneData {
    /// All Services.
    pub services: Vec<ServiceData>,
    /// All endpoints of all EndpointSlices.
    pub endpoints: Vec<EndpointData>,
    /// All Pods with an IP.
    pub pods: Vec<PodData>,
}

/// Settings of the zone.
#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, e.g. `cluster.local.`.
    pub domain: Name,
    /// TTL of every record and of negative answers.
    pub ttl: u32,
    /// Address of the DNS server, published as the zone's name server.
    pub dns_ip: Option<IpAddr>,
}

impl ZoneConfig {
    /// A config for `domain` (with or without the trailing dot).
    pub fn new(domain: &str, ttl: u32, dns_ip: Option<IpAddr>) -> Result<ZoneConfig, String> {
        let mut domain = Name::from_ascii(domain.trim_end_matches('.'))
            .map_err(|e| format!("bad cluster domain {domain:?}: {e}"))?;
        domain.set_fqdn(true);
        if domain.is_root() {
            return Err("the cluster domain must not be the root".into());
        }
        Ok(ZoneConfig {
            domain: domain.to_lowercase(),
            ttl,
            dns_ip,
        })
    }
}

/// The answer of the zone to one question.
#[derive(Debug, PartialEq)]
pub enum Lookup<'a> {
    /// Records of the asked type, or the CNAME of the name.
    Answer(Vec<&'a Record>),
    /// The name exists but has no record of that type.
    NoData,
    /// The name does not exist in the zone.
    NxDomain,
    /// Neither in the cluster domain nor a reverse name the cluster knows: ask upstream.
    Outside,
}

/// The records of the cluster domain plus the reverse (PTR) names of cluster IPs.
#[derive(Debug)]
pub struct Zone {
    origin: LowerName,
    soa: Record,
    nodes: HashMap<LowerName, Vec<Record>>,
    reverse: HashMap<LowerName, Vec<Record>>,
}

fn fqdn(s: &str) -> Option<Name> {
    let mut n = Name::from_ascii(s).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// `10.42.0.5` → `10-42-0-5`, `fd00::1` → `fd00--1`: the label Kubernetes DNS uses for an
/// IP in pod names and for endpoints without a hostname.
pub fn ip_label(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn address_rdata(ip: &IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(*v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
    }
}

/// Lower-case protocol label of SRV names (`_tcp`).
fn proto_label(protocol: &str) -> String {
    format!("_{}", protocol.to_ascii_lowercase())
}

struct Builder {
    origin: Name,
    ttl: u32,
    nodes: HashMap<LowerName, Vec<Record>>,
    reverse: HashMap<LowerName, Vec<Record>>,
}

impl Builder {
    /// `label.label…` relative to the zone, or None if a label is not a valid DNS label.
    fn name(&self, relative: &str) -> Option<Name> {
        fqdn(&format!("{relative}.{}", self.origin))
    }

    /// Makes `name` and all its ancestors up to the origin exist.
    fn touch(&mut self, name: &Name) {
        let mut n = name.clone();
        while self.origin.zone_of(&n) {
            let key = LowerName::from(&n);
            if self.nodes.contains_key(&key) {
                return;
            }
            self.nodes.insert(key, Vec::new());
            if n.num_labels() <= self.origin.num_labels() {
                return;
            }
            n = n.base_name();
        }
    }

    fn add(&mut self, name: Name, rdata: RData) {
        self.touch(&name);
        let record = Record::from_rdata(name.clone(), self.ttl, rdata);
        let node = self.nodes.entry(LowerName::from(&name)).or_default();
        if !node.contains(&record) {
            node.push(record);
        }
    }

    fn add_ptr(&mut self, ip: &IpAddr, target: &Name) {
        let mut owner = Name::from(*ip);
        owner.set_fqdn(true);
        let record = Record::from_rdata(
            owner.clone(),
            self.ttl,
            RData::PTR(rdata::PTR(target.clone())),
        );
        let node = self.reverse.entry(LowerName::from(&owner)).or_default();
        if !node.contains(&record) {
            node.push(record);
        }
    }

    fn add_srv(&mut self, service: &Name, port: &PortData, weight: u16, target: &Name) {
        if port.name.is_empty() {
            return;
        }
        let Ok(with_proto) = service.prepend_label(proto_label(&port.protocol).as_str()) else {
            return;
        };
        let Ok(owner) = with_proto.prepend_label(format!("_{}", port.name).as_str()) else {
            return;
        };
        self.add(
            owner,
            RData::SRV(SRV::new(0, weight, port.port, target.clone())),
        );
    }
}

impl Zone {
    /// Builds the zone from the cluster's facts; `serial` is the SOA serial (bump it on
    /// every rebuild so secondaries and caches can tell versions apart).
    pub fn build(config: &ZoneConfig, serial: u32, data: &ZoneData) -> Zone {
        let origin = config.domain.clone();
        let mut b = Builder {
            origin: origin.clone(),
            ttl: config.ttl,
            nodes: HashMap::new(),
            reverse: HashMap::new(),
        };
        let ns_name = b.name("ns.dns").unwrap_or_else(|| origin.clone());
        let soa = Record::from_rdata(
            origin.clone(),
            config.ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                b.name("hostmaster").unwrap_or_else(|| origin.clone()),
                serial,
                7200,
                1800,
                86400,
                config.ttl,
            )),
        );
        b.add(origin.clone(), soa.data.clone());
        b.add(origin.clone(), RData::NS(rdata::NS(ns_name.clone())));
        if let Some(ip) = config.dns_ip {
            b.add(ns_name, address_rdata(&ip));
        }
        if let Some(v) = b.name("dns-version") {
            b.add(v, RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()])));
        }
        for always in ["svc", "pod"] {
            if let Some(n) = b.name(always) {
                b.touch(&n);
            }
        }

        let mut headless = HashMap::new();
        for svc in &data.services {
            let Some(name) = b.name(&format!("{}.{}.svc", svc.name, svc.namespace)) else {
                continue;
            };
            match &svc.kind {
                ServiceKind::ClusterIp(ips) => {
                    for ip in ips {
                        b.add(name.clone(), address_rdata(ip));
                        b.add_ptr(ip, &name);
                    }
                    for port in &svc.ports {
                        b.add_srv(&name, port, 100, &name);
                    }
                    b.touch(&name);
                }
                ServiceKind::ExternalName(target) => {
                    let target = fqdn(target.trim_end_matches('.')).filter(|t| !t.is_root());
                    if let Some(target) = target {
                        b.add(name, RData::CNAME(rdata::CNAME(target)));
                    }
                }
                ServiceKind::Headless => {
                    b.touch(&name);
                    headless.insert((svc.namespace.as_str(), svc.name.as_str()), name);
                }
            }
        }

        let mut ready_counts: HashMap<(&str, &str), u16> = HashMap::new();
        for ep in data
            .endpoints
            .iter()
            .filter(|e| e.ready && !e.ips.is_empty())
        {
            *ready_counts
                .entry((ep.namespace.as_str(), ep.service.as_str()))
                .or_default() += 1;
        }
        for ep in data.endpoints.iter().filter(|e| e.ready) {
            let key = (ep.namespace.as_str(), ep.service.as_str());
            let Some(service) = headless.get(&key).cloned() else {
                continue;
            };
            let weight = (100 / ready_counts.get(&key).copied().unwrap_or(1).max(1)).max(1);
            for ip in &ep.ips {
                let label = ep.hostname.clone().unwrap_or_else(|| ip_label(ip));
                let Ok(host) = service.prepend_label(label.as_str()) else {
                    continue;
                };
                b.add(service.clone(), address_rdata(ip));
                b.add(host.clone(), address_rdata(ip));
                b.add_ptr(ip, &host);
                for port in &ep.ports {
                    b.add_srv(&service, port, weight, &host);
                }
            }
        }

        for pod in &data.pods {
            for ip in &pod.ips {
                if let Some(name) = b.name(&format!("{}.{}.pod", ip_label(ip), pod.namespace)) {
                    b.add(name, address_rdata(ip));
                }
            }
        }

        Zone {
            origin: LowerName::from(&origin),
            soa,
            nodes: b.nodes,
            reverse: b.reverse,
        }
    }

    /// The zone's SOA record (the authority of negative answers).
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` is inside the cluster domain.
    pub fn contains(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    /// Number of owner names (for logs and metrics).
    pub fn len(&self) -> usize {
        self.nodes.len() + self.reverse.len()
    }

    /// Whether the zone has no names at all (never after [`Zone::build`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Answers the question `name`/`qtype`.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        let node = if self.contains(name) {
            match self.nodes.get(name) {
                Some(n) => n,
                None => return Lookup::NxDomain,
            }
        } else {
            match self.reverse.get(name) {
                Some(n) => n,
                None => return Lookup::Outside,
            }
        };
        let matching: Vec<&Record> = node
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .collect();
        if !matching.is_empty() {
            return Lookup::Answer(matching);
        }
        match node.iter().find(|r| r.record_type() == RecordType::CNAME) {
            Some(cname) => Lookup::Answer(vec![cname]),
            None => Lookup::NoData,
        }
    }
}

#[cfg(test)]
mod tests;
