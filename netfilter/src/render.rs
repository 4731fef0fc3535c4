//! The renderer: services, endpoints and node facts in, one [`Ruleset`] out. Pure; the
//! chain layout follows kube-proxy's nftables mode (verdict maps keyed by
//! address . protocol . port, reject for services without endpoints and for unallocated
//! service addresses), with one change that keeps the cost flat in the number of
//! services:
//!
//! - Endpoints live in maps, not rules. `addr-<i>` / `port-<i>` map a service entry
//!   (destination address . protocol . port) to its i-th endpoint. A service with n
//!   endpoints is sent (`goto`) to the shared chain `dnat-<proto>-<n>`, a cascade of
//!   `numgen random mod k == 0` rules (k = n, n-1, …, 2, then unconditional) whose rule i
//!   DNATs to `addr-<i>`/`port-<i>` looked up by the packet's own destination: every
//!   endpoint gets the same chance, and the rule count depends on the largest endpoint
//!   count, not on the number of services. An endpoint change is a map-element change,
//!   which the kernel applies without re-validating the table (adding a rule makes it
//!   walk every rule of the table: 50 ms at 50,000 rules).
//! - kube-proxy's one anonymous `numgen` verdict map per service is avoided: creating
//!   anonymous sets grows quadratically on this kernel (10,000 took 22 s).
//! - Services with session affinity keep chains of their own (`svc-<ns>/<name>/<proto>/<port>`)
//!   with literal DNATs, because each endpoint needs its own affinity set.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use nftables::schema::SetType;
use nftables::stmt::Operator;
use nftables::types::{NfChainType, NfHook};

use crate::model::{
    EndpointInfo, Ipv4Cidr, NodeFacts, Protocol, ServiceInfo, ServicePortInfo, TrafficPolicy,
};
use crate::ruleset::{Chain, ElemValue, Hook, Key, MapValue, NamedSet, Ruleset};
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

/// Name of the map from service entry to the address of its `slot`-th endpoint.
pub fn addr_map(slot: usize) -> String {
    format!("addr-{slot}")
}

/// Name of the map from service entry to the port of its `slot`-th endpoint.
pub fn port_map(slot: usize) -> String {
    format!("port-{slot}")
}

/// Name of the shared chain that DNATs to one of `n` endpoints of a `proto` service.
pub fn dnat_chain(proto: Protocol, n: usize) -> String {
    format!("dnat-{}-{n}", proto.as_str())
}

/// Name of the shared chain for external traffic of `policy` to `n` endpoints.
pub fn external_dnat_chain(policy: TrafficPolicy, proto: Protocol, n: usize) -> String {
    match policy {
        TrafficPolicy::Cluster => format!("ext-{}-{n}", proto.as_str()),
        TrafficPolicy::Local => format!("ext-local-{}-{n}", proto.as_str()),
    }
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
        render_service(&mut rs, node, svc);
    }
    rs
}

/// Adds one service's chains, sets and elements to `rs`.
pub(crate) fn render_service(rs: &mut Ruleset, node: &NodeFacts, svc: &ServiceInfo) {
    for port in &svc.ports {
        render_port(rs, node, svc, port);
    }
}

/// Whether `chain` is one of the chains services share (`dnat-…`, `ext-…` without a
/// service name in it), as opposed to a service's own chain.
pub(crate) fn is_shared_chain(chain: &str) -> bool {
    (chain.starts_with("dnat-") || chain.starts_with("ext-")) && !chain.contains('/')
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
    stmt::destination()
}

fn nodeport_key() -> stmt::Expr {
    stmt::concat(vec![
        stmt::meta(nftables::expr::MetaKey::L4proto),
        stmt::th_dport(),
    ])
}

/// The chains and sets every ruleset has, whatever the services.
pub(crate) fn base(table: &str, node: &NodeFacts) -> Ruleset {
    use NfChainType::{Filter, NAT};
    let mut rs = Ruleset::new(table);
    let cluster = node.cluster_cidr;
    let new_jump = |target: &str| vec![stmt::ct_state_new(), stmt::jump(target)];

    let mut sets = BTreeMap::new();
    let verdicts = MapValue::Verdict;
    sets.insert(SERVICE_IPS, NamedSet::map(addr_proto_port(), verdicts));
    sets.insert(
        NO_ENDPOINT_SERVICES,
        NamedSet::map(addr_proto_port(), verdicts),
    );
    sets.insert(SERVICE_NODEPORTS, NamedSet::map(proto_port(), verdicts));
    sets.insert(NO_ENDPOINT_NODEPORTS, NamedSet::map(proto_port(), verdicts));
    let mut nodeport_ips = NamedSet::set(vec![SetType::Ipv4Addr]);
    for ip in node.nodeport_ips() {
        nodeport_ips.elements.insert(Key::Addr(ip), None);
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
            hook(
                NAT,
                NfHook::Prerouting,
                -100,
                vec![vec![stmt::jump(SERVICES)]],
            ),
        ),
        (
            "nat-output",
            hook(NAT, NfHook::Output, -100, vec![vec![stmt::jump(SERVICES)]]),
        ),
        (
            "nat-postrouting",
            hook(
                NAT,
                NfHook::Postrouting,
                100,
                vec![vec![stmt::jump(MASQUERADING)]],
            ),
        ),
        (
            "filter-input",
            hook(
                Filter,
                NfHook::Input,
                -110,
                vec![new_jump(SERVICE_ENDPOINTS_CHECK)],
            ),
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
            hook(
                Filter,
                NfHook::Output,
                -110,
                vec![new_jump(SERVICE_ENDPOINTS_CHECK)],
            ),
        ),
        (
            "filter-output-post-dnat",
            hook(
                Filter,
                NfHook::Output,
                -90,
                vec![new_jump(CLUSTER_IPS_CHECK)],
            ),
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
        (
            MARK_FOR_MASQUERADE,
            chain(vec![vec![stmt::set_masq_mark()]]),
        ),
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
                    stmt::matches(stmt::ip_daddr(), Operator::NEQ, stmt::prefix(multicast())),
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
        rule.push(stmt::matches(
            stmt::ip_daddr(),
            Operator::NEQ,
            stmt::addr(dns),
        ));
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
        rules.push(vec![
            stmt::eq(stmt::ip_daddr(), stmt::addr(dns)),
            stmt::ret(),
        ]);
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
fn no_endpoint_verdict(any_endpoint: bool) -> ElemValue {
    if any_endpoint {
        ElemValue::Drop
    } else {
        ElemValue::Goto(REJECT_CHAIN.to_owned())
    }
}

/// Where a service entry's traffic goes once the entry matched.
enum Target<'a> {
    /// Nowhere: reject (no endpoint at all) or drop (a policy excludes them).
    Nowhere(ElemValue),
    /// A shared DNAT chain; the endpoints go into the slot maps under the entry.
    Slots(&'a [&'a EndpointInfo]),
    /// A chain of the service's own (session affinity).
    Own(String),
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
    let any = !cluster_eps.is_empty();
    let entry = |ip: Ipv4Addr, p: u16| Key::Entry(ip, proto, p);
    if let Some(hp) = rs.sets.get_mut(HAIRPIN) {
        for ep in &cluster_eps {
            hp.elements.insert(Key::AddrPair(ep.addr, ep.addr), None);
        }
    }

    // Internal traffic: the ClusterIP (the local DNS address is answered on the node).
    let internal = pick(svc.internal_traffic_policy);
    if let Some(cip) = svc.cluster_ip.filter(|ip| Some(*ip) != node.local_dns) {
        let key = entry(cip, port.port);
        let target = if internal.is_empty() {
            Target::Nowhere(no_endpoint_verdict(any))
        } else if let Some(timeout) = svc.session_affinity_seconds {
            let name = service_chain(svc, port);
            let rules = affinity_cascade(rs, &name, internal, proto, timeout);
            rs.chains.insert(name.clone(), chain(rules));
            Target::Own(name)
        } else {
            fill_slots(rs, key, internal);
            Target::Slots(internal)
        };
        let shared = match target {
            Target::Slots(eps) => ensure_dnat_chain(rs, proto, eps.len()),
            _ => String::new(),
        };
        route(rs, SERVICE_IPS, NO_ENDPOINT_SERVICES, key, &target, shared);
    }

    // External traffic: external and load-balancer IPs on the service port, the node
    // port on the node-port addresses.
    let mut entries: Vec<(&str, &str, Key, Vec<Key>)> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .map(|ip| {
            let key = entry(*ip, port.port);
            (SERVICE_IPS, NO_ENDPOINT_SERVICES, key, vec![key])
        })
        .collect();
    if let Some(np) = port.node_port {
        let slot_keys = node
            .nodeport_ips()
            .into_iter()
            .map(|ip| entry(ip, np))
            .collect();
        let key = Key::ProtoPort(proto, np);
        entries.push((SERVICE_NODEPORTS, NO_ENDPOINT_NODEPORTS, key, slot_keys));
    }
    if entries.is_empty() {
        return;
    }
    let policy = svc.external_traffic_policy;
    let external = pick(policy);
    let target = if external.is_empty() {
        Target::Nowhere(no_endpoint_verdict(any))
    } else if let Some(timeout) = svc.session_affinity_seconds {
        let name = external_chain(svc, port);
        let mut rules = external_prelude(node, policy);
        rules.extend(affinity_cascade(rs, &name, external, proto, timeout));
        rs.chains.insert(name.clone(), chain(rules));
        Target::Own(name)
    } else {
        Target::Slots(external)
    };
    let shared = match target {
        Target::Slots(eps) => ensure_external_chain(rs, node, policy, proto, eps.len()),
        _ => String::new(),
    };
    for (map, no_ep_map, key, slot_keys) in entries {
        if let Target::Slots(eps) = &target {
            for k in &slot_keys {
                fill_slots(rs, *k, eps);
            }
        }
        route(rs, map, no_ep_map, key, &target, shared.clone());
    }
}

/// Puts the entry `key` into the map its target calls for.
fn route(
    rs: &mut Ruleset,
    map: &str,
    no_endpoint_map: &str,
    key: Key,
    target: &Target<'_>,
    shared_chain: String,
) {
    let (set, value) = match target {
        Target::Nowhere(v) => (no_endpoint_map, v.clone()),
        Target::Slots(_) => (map, ElemValue::Goto(shared_chain)),
        Target::Own(chain) => (map, ElemValue::Goto(chain.clone())),
    };
    if let Some(s) = rs.sets.get_mut(set) {
        s.elements.insert(key, Some(value));
    }
}

/// Writes `eps` into slot maps `addr-<i>`/`port-<i>` under `key`, creating the maps.
fn fill_slots(rs: &mut Ruleset, key: Key, eps: &[&EndpointInfo]) {
    for (i, ep) in eps.iter().enumerate() {
        let values = [
            (addr_map(i), MapValue::Addr, ElemValue::Addr(ep.addr)),
            (port_map(i), MapValue::Port, ElemValue::Port(ep.port)),
        ];
        for (name, kind, value) in values {
            rs.sets
                .entry(name)
                .or_insert_with(|| NamedSet::map(addr_proto_port(), kind))
                .elements
                .insert(key, Some(value));
        }
    }
}

/// The shared chain `dnat-<proto>-<n>` (created on first use): picks slot i of n with
/// even chance and DNATs to the slot maps' entry for the packet's destination.
fn ensure_dnat_chain(rs: &mut Ruleset, proto: Protocol, n: usize) -> String {
    let name = dnat_chain(proto, n);
    if !rs.chains.contains_key(&name) {
        let rules = (0..n)
            .map(|i| {
                let mut rule = Vec::new();
                let remaining = (n - i) as u32;
                if remaining > 1 {
                    rule.push(stmt::one_in(remaining));
                }
                rule.push(stmt::l4proto(proto));
                rule.push(stmt::dnat_via_maps(&addr_map(i), &port_map(i)));
                rule
            })
            .collect();
        rs.chains.insert(name.clone(), chain(rules));
    }
    name
}

/// The shared chain for external traffic of `policy` to `n` endpoints: the policy's
/// masquerade decision, then the DNAT chain.
fn ensure_external_chain(
    rs: &mut Ruleset,
    node: &NodeFacts,
    policy: TrafficPolicy,
    proto: Protocol,
    n: usize,
) -> String {
    let name = external_dnat_chain(policy, proto, n);
    if !rs.chains.contains_key(&name) {
        let dnat = ensure_dnat_chain(rs, proto, n);
        let mut rules = external_prelude(node, policy);
        rules.push(vec![stmt::goto(&dnat)]);
        rs.chains.insert(name.clone(), chain(rules));
    }
    name
}

/// External traffic with policy Cluster is masqueraded (the reply must return through
/// this node); with Local the client address is kept, except for 127.0.0.1 node-port
/// clients, which cannot be routed back otherwise.
fn external_prelude(node: &NodeFacts, policy: TrafficPolicy) -> Vec<Rule> {
    match policy {
        TrafficPolicy::Cluster => vec![vec![stmt::jump(MARK_FOR_MASQUERADE)]],
        TrafficPolicy::Local if node.localhost_nodeports => {
            let lo = Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 8).expect("constant network");
            vec![vec![
                stmt::eq(stmt::ip_saddr(), stmt::prefix(lo)),
                stmt::jump(MARK_FOR_MASQUERADE),
            ]]
        }
        TrafficPolicy::Local => Vec::new(),
    }
}

/// Rules that DNAT to one of `eps` with even chance, and stick to the previous choice
/// per client address for `timeout` seconds (one dynamic set per endpoint).
fn affinity_cascade(
    rs: &mut Ruleset,
    chain_name: &str,
    eps: &[&EndpointInfo],
    proto: Protocol,
    timeout: u32,
) -> Vec<Rule> {
    let sets: Vec<String> = eps.iter().map(|ep| affinity_set(chain_name, ep)).collect();
    let mut rules = Vec::new();
    for (ep, set) in eps.iter().zip(&sets) {
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
    let n = eps.len();
    for (i, (ep, set)) in eps.iter().zip(&sets).enumerate() {
        let mut rule = Vec::new();
        let remaining = (n - i) as u32;
        if remaining > 1 {
            rule.push(stmt::one_in(remaining));
        }
        rule.push(stmt::l4proto(proto));
        rule.push(stmt::remember_client(set));
        rule.push(stmt::dnat(ep.addr, ep.port));
        rules.push(rule);
    }
    rules
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
