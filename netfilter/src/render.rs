//! The renderer: services, endpoints and node facts in, one [`Ruleset`] out. Pure; the
//! chain layout follows kube-proxy's nftables mode (verdict maps keyed by
//! address . protocol . port, one chain per service port, reject for services without
//! endpoints and for unallocated service addresses).
//!
//! Endpoint choice is a cascade of `numgen random mod k == 0` rules (k = n, n-1, …, 2,
//! then the last endpoint unconditionally), which gives every endpoint the same chance.
//! kube-proxy uses one anonymous verdict map per service instead; on this kernel creating
//! anonymous sets grows quadratically with their number (10,000 took 22 s, see
//! docs/benchmarks.md), while plain rules stay linear.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nftables::schema::SetType;
use nftables::stmt::Operator;
use nftables::types::{NfChainType, NfHook};

use crate::model::{EndpointInfo, Ipv4Cidr, NodeFacts, ServiceInfo, ServicePortInfo, TrafficPolicy};
use crate::ruleset::{Chain, ElemVerdict, Hook, KeyPart, NamedSet, Ruleset};
use crate::stmt::{self, Rule};

/// Verdict map `address . protocol . port → goto <service chain>` (ClusterIPs, external
/// and load-balancer IPs).
pub const SERVICE_IPS: &str = "service-ips";
/// Verdict map `protocol . port → goto <external chain>` for node ports.
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
/// Verdict map of service addresses whose service has no usable endpoint (reject/drop).
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
/// Verdict map of node ports whose service has no usable endpoint (reject/drop).
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
/// Set of the addresses node ports answer on.
pub const NODEPORT_IPS: &str = "nodeport-ips";
/// Set of `endpoint . endpoint` pairs: a DNATed connection from an endpoint to itself
/// (hairpin) is masqueraded so the reply comes back through the node.
pub const HAIRPIN: &str = "hairpin";
/// Chain that rejects (TCP reset, ICMP port unreachable otherwise).
pub const REJECT_CHAIN: &str = "reject-chain";
/// Chain that marks a connection for masquerade.
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// Chain jumped to from the DNAT hooks: the service and node-port lookups.
pub const SERVICES: &str = "services";
/// Chain that rejects new connections to services without endpoints (before DNAT).
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
/// Chain that rejects what is still addressed to the service CIDR after DNAT.
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
/// Chain of the masquerade decisions, jumped to from postrouting.
pub const MASQUERADING: &str = "masquerading";

/// Name of the chain that DNATs internal (ClusterIP) traffic of one service port.
pub fn service_chain(svc: &ServiceInfo, port: &ServicePortInfo) -> String {
    format!("svc-{}", port_key(svc, port))
}

/// Name of the chain for external traffic (node port, external and load-balancer IPs).
pub fn external_chain(svc: &ServiceInfo, port: &ServicePortInfo) -> String {
    format!("ext-{}", port_key(svc, port))
}

/// Name of the session-affinity set remembering clients sent to `ep` from `chain`.
pub fn affinity_set(chain: &str, ep: &EndpointInfo) -> String {
    format!("aff-{}-{}-{}", ep.addr, ep.port, chain)
}

fn port_key(svc: &ServiceInfo, port: &ServicePortInfo) -> String {
    format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        port.protocol.as_str(),
        port.port
    )
}

/// Renders the whole table `inet <table>` for `node` and `services`.
pub fn render(table: &str, node: &NodeFacts, services: &[ServiceInfo]) -> Ruleset {
    let mut rs = base(table, node);
    let mut sorted: Vec<&ServiceInfo> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for svc in sorted {
        for port in &svc.ports {
            render_port(&mut rs, node, svc, port);
        }
    }
    rs
}

fn hook(kind: NfChainType, hook: NfHook, priority: i32, rules: Vec<Rule>) -> Chain {
    Chain {
        hook: Some(Hook {
            kind,
            hook,
            priority,
        }),
        rules,
    }
}

fn chain(rules: Vec<Rule>) -> Chain {
    Chain { hook: None, rules }
}

fn addr_proto_port() -> Vec<SetType> {
    vec![SetType::Ipv4Addr, SetType::InetProto, SetType::InetService]
}

fn proto_port() -> Vec<SetType> {
    vec![SetType::InetProto, SetType::InetService]
}

fn dest_key() -> stmt::Expr {
    stmt::concat(vec![
        stmt::ip_daddr(),
        stmt::meta(nftables::expr::MetaKey::L4proto),
        stmt::th_dport(),
    ])
}

fn nodeport_key() -> stmt::Expr {
    stmt::concat(vec![
        stmt::meta(nftables::expr::MetaKey::L4proto),
        stmt::th_dport(),
    ])
}

/// The chains and sets every ruleset has, whatever the services.
fn base(table: &str, node: &NodeFacts) -> Ruleset {
    use NfChainType::{Filter, NAT};
    let mut rs = Ruleset::new(table);
    let cluster = node.cluster_cidr;
    let new_jump = |target: &str| vec![stmt::ct_state_new(), stmt::jump(target)];

    let mut sets = BTreeMap::new();
    sets.insert(SERVICE_IPS, NamedSet::verdict_map(addr_proto_port()));
    sets.insert(NO_ENDPOINT_SERVICES, NamedSet::verdict_map(addr_proto_port()));
    sets.insert(SERVICE_NODEPORTS, NamedSet::verdict_map(proto_port()));
    sets.insert(NO_ENDPOINT_NODEPORTS, NamedSet::verdict_map(proto_port()));
    let mut nodeport_ips = NamedSet::set(vec![SetType::Ipv4Addr]);
    for ip in node.nodeport_ips() {
        nodeport_ips.elements.insert(vec![KeyPart::Addr(ip)], None);
    }
    sets.insert(NODEPORT_IPS, nodeport_ips);
    sets.insert(
        HAIRPIN,
        NamedSet::set(vec![SetType::Ipv4Addr, SetType::Ipv4Addr]),
    );
    rs.sets = sets.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();

    let mut chains: Vec<(&str, Chain)> = vec![
        (
            "nat-prerouting",
            hook(NAT, NfHook::Prerouting, -100, vec![vec![stmt::jump(SERVICES)]]),
        ),
        (
            "nat-output",
            hook(NAT, NfHook::Output, -100, vec![vec![stmt::jump(SERVICES)]]),
        ),
        (
            "nat-postrouting",
            hook(NAT, NfHook::Postrouting, 100, vec![vec![stmt::jump(MASQUERADING)]]),
        ),
        (
            "filter-input",
            hook(Filter, NfHook::Input, -110, vec![new_jump(SERVICE_ENDPOINTS_CHECK)]),
        ),
        (
            "filter-forward",
            hook(
                Filter,
                NfHook::Forward,
                -110,
                vec![
                    new_jump(SERVICE_ENDPOINTS_CHECK),
                    new_jump(CLUSTER_IPS_CHECK),
                ],
            ),
        ),
        (
            "filter-output",
            hook(Filter, NfHook::Output, -110, vec![new_jump(SERVICE_ENDPOINTS_CHECK)]),
        ),
        (
            "filter-output-post-dnat",
            hook(Filter, NfHook::Output, -90, vec![new_jump(CLUSTER_IPS_CHECK)]),
        ),
        (
            SERVICES,
            chain(vec![
                masquerade_off_cluster_to_services(node),
                vec![stmt::vmap(dest_key(), SERVICE_IPS)],
                vec![
                    stmt::eq(stmt::ip_daddr(), stmt::set_ref(NODEPORT_IPS)),
                    stmt::vmap(nodeport_key(), SERVICE_NODEPORTS),
                ],
            ]),
        ),
        (
            SERVICE_ENDPOINTS_CHECK,
            chain(vec![
                vec![stmt::vmap(dest_key(), NO_ENDPOINT_SERVICES)],
                vec![
                    stmt::eq(stmt::ip_daddr(), stmt::set_ref(NODEPORT_IPS)),
                    stmt::vmap(nodeport_key(), NO_ENDPOINT_NODEPORTS),
                ],
            ]),
        ),
        (CLUSTER_IPS_CHECK, chain(cluster_ips_check(node))),
        (
            REJECT_CHAIN,
            chain(vec![
                vec![
                    stmt::l4proto(crate::model::Protocol::Tcp),
                    stmt::reject_tcp_reset(),
                ],
                vec![stmt::reject_port_unreachable()],
            ]),
        ),
        (MARK_FOR_MASQUERADE, chain(vec![vec![stmt::set_masq_mark()]])),
        (
            MASQUERADING,
            chain(vec![
                vec![
                    stmt::has_masq_mark(),
                    stmt::clear_masq_mark(),
                    stmt::masquerade(),
                ],
                vec![
                    stmt::ct_status_dnat(),
                    stmt::eq(
                        stmt::concat(vec![stmt::ip_saddr(), stmt::ip_daddr()]),
                        stmt::set_ref(HAIRPIN),
                    ),
                    stmt::masquerade(),
                ],
                vec![
                    stmt::eq(stmt::ip_saddr(), stmt::prefix(cluster)),
                    stmt::matches(stmt::ip_daddr(), Operator::NEQ, stmt::prefix(cluster)),
                    stmt::matches(
                        stmt::ip_daddr(),
                        Operator::NEQ,
                        stmt::prefix(multicast()),
                    ),
                    stmt::masquerade(),
                ],
            ]),
        ),
    ];
    rs.chains = chains
        .drain(..)
        .map(|(name, c)| (name.to_owned(), c))
        .collect();
    rs
}

fn multicast() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("constant network")
}

/// Connections from outside the cluster CIDR (the node itself, outside clients) to a
/// service address are masqueraded, so the endpoint's reply returns through this node
/// (kube-proxy's rule, once for all services instead of once per service chain).
fn masquerade_off_cluster_to_services(node: &NodeFacts) -> Rule {
    let mut rule = vec![stmt::eq(stmt::ip_daddr(), stmt::prefix(node.service_cidr))];
    if let Some(dns) = node.local_dns {
        rule.push(stmt::matches(stmt::ip_daddr(), Operator::NEQ, stmt::addr(dns)));
    }
    rule.push(stmt::matches(
        stmt::ip_saddr(),
        Operator::NEQ,
        stmt::prefix(node.cluster_cidr),
    ));
    rule.push(stmt::jump(MARK_FOR_MASQUERADE));
    rule
}

fn cluster_ips_check(node: &NodeFacts) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(dns) = node.local_dns {
        rules.push(vec![stmt::eq(stmt::ip_daddr(), stmt::addr(dns)), stmt::ret()]);
    }
    rules.push(vec![
        stmt::eq(stmt::ip_daddr(), stmt::prefix(node.service_cidr)),
        stmt::goto(REJECT_CHAIN),
    ]);
    rules
}

/// kube-proxy's endpoint choice: ready endpoints; when none is ready, the serving ones
/// that are terminating (so connections drain during a rollout).
fn usable<'a>(eps: impl Iterator<Item = &'a EndpointInfo> + Clone) -> Vec<&'a EndpointInfo> {
    let mut chosen: Vec<&EndpointInfo> = eps.clone().filter(|e| e.ready).collect();
    if chosen.is_empty() {
        chosen = eps.filter(|e| e.serving && e.terminating).collect();
    }
    chosen.sort_by_key(|e| (e.addr, e.port));
    chosen.dedup_by_key(|e| (e.addr, e.port));
    chosen
}

/// The verdict for traffic that has no endpoint to go to: reject when the service has no
/// endpoint at all, drop when a `Local` policy excludes the ones it has (as kube-proxy).
fn no_endpoint_verdict(any_endpoint: bool) -> ElemVerdict {
    if any_endpoint {
        ElemVerdict::Drop
    } else {
        ElemVerdict::Goto(REJECT_CHAIN.to_owned())
    }
}

fn render_port(rs: &mut Ruleset, node: &NodeFacts, svc: &ServiceInfo, port: &ServicePortInfo) {
    let proto = port.protocol;
    let cluster_eps = usable(port.endpoints.iter());
    let is_local = |e: &&EndpointInfo| e.node_name.as_deref() == Some(node.node_name.as_str());
    let local_eps = usable(port.endpoints.iter().filter(is_local));
    let pick = |policy: TrafficPolicy| match policy {
        TrafficPolicy::Cluster => &cluster_eps,
        TrafficPolicy::Local => &local_eps,
    };
    let internal_eps = pick(svc.internal_traffic_policy);
    let external_eps = pick(svc.external_traffic_policy);
    let any = !cluster_eps.is_empty();
    let affinity = svc.session_affinity_seconds;
    let addr_key = |ip: Ipv4Addr| vec![KeyPart::Addr(ip), KeyPart::Proto(proto), KeyPart::Port(port.port)];

    let svc_chain = service_chain(svc, port);
    let cluster_ip = svc.cluster_ip.filter(|ip| Some(*ip) != node.local_dns);
    let mut has_svc_chain = false;
    if let Some(cip) = cluster_ip {
        if internal_eps.is_empty() {
            insert(rs, NO_ENDPOINT_SERVICES, addr_key(cip), no_endpoint_verdict(any));
        } else {
            let rules = dnat_cascade(rs, &svc_chain, internal_eps, port, affinity);
            rs.chains.insert(svc_chain.clone(), chain(rules));
            insert(rs, SERVICE_IPS, addr_key(cip), ElemVerdict::Goto(svc_chain.clone()));
            has_svc_chain = true;
        }
    }

    let mut external_keys: Vec<(&str, &str, Vec<KeyPart>)> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .map(|ip| (SERVICE_IPS, NO_ENDPOINT_SERVICES, addr_key(*ip)))
        .collect();
    if let Some(np) = port.node_port {
        external_keys.push((
            SERVICE_NODEPORTS,
            NO_ENDPOINT_NODEPORTS,
            vec![KeyPart::Proto(proto), KeyPart::Port(np)],
        ));
    }
    if external_keys.is_empty() {
        return;
    }
    if external_eps.is_empty() {
        for (_, no_ep_map, key) in external_keys {
            insert(rs, no_ep_map, key, no_endpoint_verdict(any));
        }
        return;
    }
    let ext_chain = external_chain(svc, port);
    let mut rules: Vec<Rule> = Vec::new();
    match svc.external_traffic_policy {
        TrafficPolicy::Cluster => rules.push(vec![stmt::jump(MARK_FOR_MASQUERADE)]),
        TrafficPolicy::Local => {
            // Pods reaching an external address of the service use all endpoints (as
            // kube-proxy); the client address of outside traffic is kept.
            if has_svc_chain {
                rules.push(vec![
                    stmt::eq(stmt::ip_saddr(), stmt::prefix(node.cluster_cidr)),
                    stmt::goto(&svc_chain),
                ]);
            }
            if node.localhost_nodeports {
                let lo = Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 8).expect("constant network");
                rules.push(vec![
                    stmt::eq(stmt::ip_saddr(), stmt::prefix(lo)),
                    stmt::jump(MARK_FOR_MASQUERADE),
                ]);
            }
        }
    }
    rules.extend(dnat_cascade(rs, &ext_chain, external_eps, port, affinity));
    rs.chains.insert(ext_chain.clone(), chain(rules));
    for (map, _, key) in external_keys {
        insert(rs, map, key, ElemVerdict::Goto(ext_chain.clone()));
    }
}

fn insert(rs: &mut Ruleset, set: &str, key: Vec<KeyPart>, verdict: ElemVerdict) {
    if let Some(s) = rs.sets.get_mut(set) {
        s.elements.insert(key, Some(verdict));
    }
}

/// Rules that DNAT to one of `eps` with even chance, sticking to the previous choice
/// per client address when `affinity` (seconds) is set.
fn dnat_cascade(
    rs: &mut Ruleset,
    chain_name: &str,
    eps: &[&EndpointInfo],
    port: &ServicePortInfo,
    affinity: Option<u32>,
) -> Vec<Rule> {
    let proto = port.protocol;
    let mut rules = Vec::new();
    let sets: Vec<Option<String>> = eps
        .iter()
        .map(|ep| affinity.map(|_| affinity_set(chain_name, ep)))
        .collect();
    if let Some(timeout) = affinity {
        for (ep, set) in eps.iter().zip(&sets) {
            let Some(set) = set else { continue };
            let mut named = NamedSet::set(vec![SetType::Ipv4Addr]);
            named.timeout = Some(timeout);
            rs.sets.insert(set.clone(), named);
            rules.push(vec![
                stmt::eq(stmt::ip_saddr(), stmt::set_ref(set)),
                stmt::l4proto(proto),
                stmt::remember_client(set),
                stmt::dnat(ep.addr, ep.port),
            ]);
        }
    }
    let n = eps.len();
    for (i, (ep, set)) in eps.iter().zip(&sets).enumerate() {
        let mut rule = Vec::new();
        let remaining = (n - i) as u32;
        if remaining > 1 {
            rule.push(stmt::one_in(remaining));
        }
        rule.push(stmt::l4proto(proto));
        if let Some(set) = set {
            rule.push(stmt::remember_client(set));
        }
        rule.push(stmt::dnat(ep.addr, ep.port));
        rules.push(rule);
        if let Some(hp) = rs.sets.get_mut(HAIRPIN) {
            hp.elements
                .insert(vec![KeyPart::Addr(ep.addr), KeyPart::Addr(ep.addr)], None);
        }
    }
    rules
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
