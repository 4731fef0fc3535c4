//! Service defaults, validation and address allocation, as kube-apiserver's service
//! registry does them: ClusterIPs come from the service CIDR and node ports from
//! 30000-32767. Each allocated value is reserved under its own key, written in the same
//! transaction that stores the Service, so two concurrent creates can never get the same
//! address; a repair pass frees reservations whose Service is gone.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use pikube_raft::{Compare, CompareOp, CompareTarget, Op, RangeRequest, Store, TxnRequest};
use rand::Rng;
use serde_json::{json, Value};

use super::objects::meta_str;
use super::resources;
use super::status::ApiError;

/// Reserved ClusterIPs: `<prefix><ip>` → uid of the owning Service.
pub const IP_PREFIX: &str = "/registry/ranges/serviceips/";
/// Reserved node ports: `<prefix><port>` → uid of the owning Service.
pub const PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The address ranges Services are given values from.
#[derive(Clone, Debug)]
pub struct ServiceRanges {
    network: u32,
    prefix_len: u8,
    node_ports: RangeInclusive<u16>,
}

impl ServiceRanges {
    /// Ranges for a service CIDR such as `10.43.0.0/16` and a node port range.
    pub fn new(service_cidr: &str, node_ports: RangeInclusive<u16>) -> anyhow::Result<Self> {
        let (addr, bits) = service_cidr
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("service CIDR {service_cidr:?} has no /prefix"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| anyhow::anyhow!("service CIDR {service_cidr:?}: not an IPv4 address"))?;
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| (8..=30).contains(b))
            .ok_or_else(|| {
                anyhow::anyhow!("service CIDR {service_cidr:?}: prefix must be /8 to /30")
            })?;
        if node_ports.is_empty() {
            anyhow::bail!("the node port range is empty");
        }
        Ok(ServiceRanges {
            network: u32::from(addr) & (u32::MAX << (32 - bits)),
            prefix_len: bits,
            node_ports,
        })
    }

    fn host_count(&self) -> u32 {
        (1u32 << (32 - self.prefix_len)) - 2
    }

    /// The n-th usable address (0-based) of the CIDR.
    fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1 + n)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v > self.network && v < self.network + 1 + self.host_count()
    }

    fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix_len)
    }
}

/// Extra guards and writes for the transaction that stores a Service, and reservations
/// to free once it has committed.
#[derive(Debug, Default)]
pub struct Reservations {
    /// Guards: every newly reserved key is still free.
    pub compare: Vec<Compare>,
    /// Writes of the new reservations.
    pub ops: Vec<Op>,
    /// Keys of values the Service no longer holds.
    pub release: Vec<String>,
}

impl Reservations {
    /// The transaction that writes `op` when `guard` holds, with these reservations.
    pub fn txn(self, guard: Compare, op: Op) -> TxnRequest {
        let mut compare = vec![guard];
        compare.extend(self.compare);
        let mut success = vec![op];
        success.extend(self.ops);
        TxnRequest {
            compare,
            success,
            failure: vec![],
        }
    }
}

fn invalid(name: &str, field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid("Service", "", name, vec![(field.to_string(), msg.into())])
}

/// Fills in the defaults kube-apiserver sets on a Service (type, protocols, target
/// ports, session affinity, IP families).
fn apply_defaults(svc: &mut Value) {
    let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let ty = spec
        .entry("type")
        .or_insert(json!("ClusterIP"))
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    if ty == "ExternalName" {
        return;
    }
    spec.entry("sessionAffinity").or_insert(json!("None"));
    spec.entry("internalTrafficPolicy")
        .or_insert(json!("Cluster"));
    if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
        spec.entry("externalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }
    spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
    spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            p.entry("protocol").or_insert(json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                p.entry("targetPort").or_insert(port);
            }
        }
    }
}

fn validate_ports(name: &str, spec: &Value, headless: bool) -> Result<(), ApiError> {
    let ports = spec
        .get("ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && !headless {
        return Err(invalid(name, "spec.ports", "Required value"));
    }
    let mut names = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            return Err(invalid(
                name,
                &format!("spec.ports[{i}].port"),
                format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !matches!(proto, "TCP" | "UDP" | "SCTP") {
            return Err(invalid(
                name,
                &format!("spec.ports[{i}].protocol"),
                format!(
                    "Unsupported value: \"{proto}\": supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        let pname = p.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.len() > 1 && pname.is_empty() {
            return Err(invalid(
                name,
                &format!("spec.ports[{i}].name"),
                "Required value",
            ));
        }
        if !names.insert(pname.to_string()) {
            return Err(invalid(
                name,
                &format!("spec.ports[{i}].name"),
                format!("Duplicate value: \"{pname}\""),
            ));
        }
    }
    Ok(())
}

/// Values a stored Service holds: its ClusterIP and node ports.
fn held(svc: &Value) -> (Option<Ipv4Addr>, Vec<(u16, String, i64)>) {
    let ip = svc
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok());
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let np = p.get("nodePort").and_then(Value::as_u64)?;
                    Some((
                        u16::try_from(np).ok()?,
                        p.get("protocol")
                            .and_then(Value::as_str)
                            .unwrap_or("TCP")
                            .to_string(),
                        p.get("port").and_then(Value::as_i64).unwrap_or(0),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    (ip, ports)
}

async fn reserved(store: &Store, prefix: &str) -> Result<HashSet<String>, ApiError> {
    let mut req = RangeRequest::prefix(prefix.as_bytes().to_vec());
    req.keys_only = true;
    let r = store.range(req).await?;
    Ok(r.kvs
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.key[prefix.len()..]).ok())
        .map(String::from)
        .collect())
}

fn reserve(res: &mut Reservations, key: String, uid: &str) {
    res.compare.push(Compare::absent(key.clone()));
    res.ops.push(Op::Put {
        key: key.into_bytes(),
        value: uid.as_bytes().to_vec(),
        lease: 0,
    });
}

/// Defaults, validates and allocates the values of a Service about to be stored over
/// `old` (None on create). The returned reservations go into the same transaction.
pub async fn prepare(
    store: &Store,
    ranges: &ServiceRanges,
    old: Option<&Value>,
    svc: &mut Value,
) -> Result<Reservations, ApiError> {
    apply_defaults(svc);
    let name = meta_str(svc, "name").unwrap_or("").to_string();
    let uid = meta_str(svc, "uid").unwrap_or("").to_string();
    let mut res = Reservations::default();
    let (old_ip, old_ports) = old.map(held).unwrap_or((None, Vec::new()));
    let Some(spec) = svc.get("spec").cloned() else {
        return Err(invalid(&name, "spec", "Required value"));
    };
    let ty = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if !matches!(
        ty.as_str(),
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        return Err(invalid(
            &name,
            "spec.type",
            format!("Unsupported value: \"{ty}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let asked_ip = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();

    // ClusterIP.
    if ty == "ExternalName" {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
        {
            return Err(invalid(&name, "spec.externalName", "Required value"));
        }
        if !asked_ip.is_empty()
            && Some(asked_ip.as_str()) != old_ip.map(|i| i.to_string()).as_deref()
        {
            return Err(invalid(
                &name,
                "spec.clusterIP",
                "Invalid value: must be empty for ExternalName services",
            ));
        }
        if let Some(s) = svc.get_mut("spec").and_then(Value::as_object_mut) {
            s.remove("clusterIP");
            s.remove("clusterIPs");
        }
    } else if asked_ip == "None" {
        if old.is_some_and(|o| {
            o.pointer("/spec/clusterIP").and_then(Value::as_str) != Some("None")
                && o.pointer("/spec/type").and_then(Value::as_str) != Some("ExternalName")
        }) {
            return Err(invalid(
                &name,
                "spec.clusterIP",
                "Invalid value: \"None\": field is immutable",
            ));
        }
        if ty != "ClusterIP" {
            return Err(invalid(
                &name,
                "spec.clusterIP",
                format!("Invalid value: \"None\": may not be set to 'None' for {ty} services"),
            ));
        }
        svc["spec"]["clusterIPs"] = json!(["None"]);
    } else {
        let ip = match (asked_ip.as_str(), old_ip) {
            ("", Some(ip)) => ip,
            (s, Some(ip)) if s == ip.to_string() => ip,
            (s, Some(ip)) => {
                return Err(invalid(
                    &name,
                    "spec.clusterIP",
                    format!("Invalid value: \"{s}\": field is immutable (was {ip})"),
                ))
            }
            ("", None) => {
                let taken = reserved(store, IP_PREFIX).await?;
                let n = ranges.host_count();
                let start = rand::thread_rng().gen_range(0..n);
                let free = (0..n)
                    .map(|i| ranges.host((start + i) % n))
                    // The first address belongs to the `kubernetes` Service.
                    .filter(|ip| *ip != ranges.host(0))
                    .find(|ip| !taken.contains(&ip.to_string()))
                    .ok_or_else(|| {
                        ApiError::unavailable(format!(
                            "failed to allocate a serviceIP: range {} is full",
                            ranges.cidr()
                        ))
                    })?;
                reserve(&mut res, format!("{IP_PREFIX}{free}"), &uid);
                free
            }
            (s, None) => {
                let ip: Ipv4Addr = s.parse().map_err(|_| {
                    invalid(
                        &name,
                        "spec.clusterIP",
                        format!("Invalid value: \"{s}\": must be a valid IP address"),
                    )
                })?;
                if !ranges.contains(ip) {
                    return Err(invalid(
                        &name,
                        "spec.clusterIPs",
                        format!(
                            "Invalid value: []string{{\"{s}\"}}: failed to allocate IP {s}: the provided IP ({s}) is not in the valid range. The range of valid IPs is {}",
                            ranges.cidr()
                        ),
                    ));
                }
                if store
                    .get(format!("{IP_PREFIX}{ip}").as_bytes())
                    .await?
                    .is_some()
                {
                    return Err(invalid(
                        &name,
                        "spec.clusterIPs",
                        format!("Invalid value: []string{{\"{s}\"}}: failed to allocate IP {s}: provided IP is already allocated"),
                    ));
                }
                reserve(&mut res, format!("{IP_PREFIX}{ip}"), &uid);
                ip
            }
        };
        svc["spec"]["clusterIP"] = json!(ip.to_string());
        svc["spec"]["clusterIPs"] = json!([ip.to_string()]);
    }
    if let Some(ip) = old_ip {
        if svc.pointer("/spec/clusterIP").and_then(Value::as_str) != Some(&ip.to_string()) {
            res.release.push(format!("{IP_PREFIX}{ip}"));
        }
    }
    let headless = svc.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
    if ty != "ExternalName" {
        validate_ports(&name, &spec, headless)?;
    }

    // Node ports.
    let wants_node_ports = matches!(ty.as_str(), "NodePort" | "LoadBalancer");
    let mut kept: HashSet<u16> = HashSet::new();
    let mut taken: Option<HashSet<String>> = None;
    let mut claimed: HashSet<(u16, String)> = HashSet::new();
    let count = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    for i in 0..count {
        let p = svc["spec"]["ports"][i].clone();
        let proto = p
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP")
            .to_string();
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        let field = format!("spec.ports[{i}].nodePort");
        let asked = match p.get("nodePort") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().filter(|n| *n != 0)),
        }
        .flatten();
        if !wants_node_ports {
            if asked.is_some() {
                return Err(invalid(
                    &name,
                    &field,
                    format!("Forbidden: may not be used when `type` is '{ty}'"),
                ));
            }
            continue;
        }
        let np: u16 = match asked {
            Some(n) => {
                let n16 = u16::try_from(n)
                    .ok()
                    .filter(|n| ranges.node_ports.contains(n))
                    .ok_or_else(|| {
                        invalid(
                            &name,
                            &field,
                            format!(
                                "Invalid value: {n}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                ranges.node_ports.start(),
                                ranges.node_ports.end()
                            ),
                        )
                    })?;
                if !old_ports.iter().any(|(o, _, _)| *o == n16) && !kept.contains(&n16) {
                    if store
                        .get(format!("{PORT_PREFIX}{n16}").as_bytes())
                        .await?
                        .is_some()
                    {
                        return Err(invalid(
                            &name,
                            &field,
                            format!("Invalid value: {n}: provided port is already allocated"),
                        ));
                    }
                    reserve(&mut res, format!("{PORT_PREFIX}{n16}"), &uid);
                }
                n16
            }
            None => match old_ports
                .iter()
                .find(|(_, op, oport)| *op == proto && *oport == port)
            {
                Some((o, _, _)) => *o,
                None => {
                    if taken.is_none() {
                        taken = Some(reserved(store, PORT_PREFIX).await?);
                    }
                    let taken = taken.get_or_insert_with(HashSet::new);
                    let lo = *ranges.node_ports.start() as u32;
                    let n = *ranges.node_ports.end() as u32 - lo + 1;
                    let start = rand::thread_rng().gen_range(0..n);
                    let free = (0..n)
                        .map(|i| (lo + (start + i) % n) as u16)
                        .find(|p| !taken.contains(&p.to_string()) && !kept.contains(p))
                        .ok_or_else(|| {
                            ApiError::unavailable(format!(
                                "failed to allocate a nodePort: range {}-{} is full",
                                ranges.node_ports.start(),
                                ranges.node_ports.end()
                            ))
                        })?;
                    taken.insert(free.to_string());
                    reserve(&mut res, format!("{PORT_PREFIX}{free}"), &uid);
                    free
                }
            },
        };
        if !claimed.insert((np, proto.clone())) {
            return Err(invalid(&name, &field, format!("Duplicate value: {np}")));
        }
        kept.insert(np);
        svc["spec"]["ports"][i]["nodePort"] = json!(np);
    }
    for (o, _, _) in &old_ports {
        if !kept.contains(o) {
            res.release.push(format!("{PORT_PREFIX}{o}"));
        }
    }
    res.release.sort();
    res.release.dedup();
    Ok(res)
}

/// Frees `keys` if they still belong to the Service with `uid`.
pub async fn release(store: &Store, uid: &str, keys: &[String]) {
    for key in keys {
        let r = store
            .txn(TxnRequest {
                compare: vec![Compare {
                    key: key.as_bytes().to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(uid.as_bytes().to_vec()),
                }],
                success: vec![Op::Delete {
                    key: key.as_bytes().to_vec(),
                }],
                failure: vec![],
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(key, error = %e, "cannot release a service reservation");
        }
    }
}

/// The reservation keys a stored Service holds.
pub fn reservation_keys(svc: &Value) -> Vec<String> {
    let (ip, ports) = held(svc);
    ip.map(|ip| format!("{IP_PREFIX}{ip}"))
        .into_iter()
        .chain(ports.iter().map(|(p, _, _)| format!("{PORT_PREFIX}{p}")))
        .collect()
}

/// Frees reservations whose Service no longer exists (left behind when a server stopped
/// between deleting a Service and releasing its values). Returns how many were freed.
pub async fn repair(store: &Store) -> Result<usize, ApiError> {
    let Some(def) = resources::lookup("", "v1", "services") else {
        return Ok(0);
    };
    let rev = store.current_revision();
    let services = store
        .range(RangeRequest::prefix(def.storage_prefix().into_bytes()).at_revision(rev))
        .await?;
    let mut uids = HashSet::new();
    for kv in &services.kvs {
        if let Ok(v) = serde_json::from_slice::<Value>(&kv.value) {
            if let Some(uid) = meta_str(&v, "uid") {
                uids.insert(uid.to_string());
            }
        }
    }
    let mut freed = 0;
    for prefix in [IP_PREFIX, PORT_PREFIX] {
        let r = store
            .range(RangeRequest::prefix(prefix.as_bytes().to_vec()).at_revision(rev))
            .await?;
        for kv in r.kvs {
            let owner = String::from_utf8_lossy(&kv.value).to_string();
            if uids.contains(&owner) {
                continue;
            }
            let t = store
                .txn(TxnRequest {
                    compare: vec![Compare::mod_revision_is(kv.key.clone(), kv.mod_revision)],
                    success: vec![Op::Delete { key: kv.key }],
                    failure: vec![],
                })
                .await?;
            if t.succeeded {
                freed += 1;
            }
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_bound() {
        let r = ServiceRanges::new("10.43.0.0/16", 30000..=32767).expect("valid");
        assert_eq!(r.host(0), Ipv4Addr::new(10, 43, 0, 1));
        assert!(r.contains(Ipv4Addr::new(10, 43, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 43, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 43, 0, 0)));
        assert!(!r.contains(Ipv4Addr::new(10, 44, 0, 1)));
        assert!(ServiceRanges::new("10.43.0.0", 30000..=32767).is_err());
        assert!(ServiceRanges::new("10.43.0.0/31", 30000..=32767).is_err());
        assert!(ServiceRanges::new("nope/16", 30000..=32767).is_err());
    }

    #[test]
    fn defaults_are_those_of_kube_apiserver() {
        let mut s = json!({"spec": {"ports": [{"port": 80}]}});
        apply_defaults(&mut s);
        assert_eq!(s["spec"]["type"], "ClusterIP");
        assert_eq!(s["spec"]["sessionAffinity"], "None");
        assert_eq!(s["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 80);
        assert!(s["spec"].get("externalTrafficPolicy").is_none());
    }
}
