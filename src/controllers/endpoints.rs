//! The Endpoints and EndpointSlice controller: for every Service with a selector, the
//! IPs and resolved target ports of its pods, ready ones as addresses and the others as
//! not-ready addresses (or not-ready endpoints in slices).

use crate::controllers::owner_index::Feed;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use super::{pods, watch_config, Context, Result};

/// Label naming the Service an EndpointSlice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Marks Endpoints this controller wrote (and may delete with their Service).
const TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
const MAX_PER_SLICE: usize = 100;

/// Runs the controller until `shutdown`; pods come from the controllers' shared pod
/// watch (`pod_events`).
pub async fn run(
    ctx: Arc<Context>,
    pod_events: Feed<Pod>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let services = Api::<Service>::all(ctx.client.clone());
    let endpoints = Api::<Endpoints>::all(ctx.client.clone());
    let controller = Controller::new(services, watch_config());
    let store = controller.store();
    let by_pod = store.clone();
    let controller = controller
        .watches_stream(pod_events, move |pod: Pod| {
            let ns = pod.namespace();
            let labels = pod.labels().clone();
            by_pod
                .state()
                .into_iter()
                .filter(|s| s.namespace() == ns)
                .filter(|s| {
                    s.spec
                        .as_ref()
                        .and_then(|sp| sp.selector.as_ref())
                        .is_some_and(|sel| {
                            !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                        })
                })
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches(endpoints, watch_config(), |ep: Endpoints| {
            Some(ObjectRef::<Service>::new(&ep.name_any()).within(&ep.namespace()?))
        });
    let cleaner = {
        let ctx = ctx.clone();
        async move { remove_orphans(ctx, store).await }
    };
    tokio::select! {
        _ = super::run("endpoints", controller, reconcile, ctx, shutdown) => {}
        _ = cleaner => {}
    }
}

/// Deletes Endpoints this controller wrote whose Service is gone.
async fn remove_orphans(ctx: Arc<Context>, services: kube::runtime::reflector::Store<Service>) {
    let api = Api::<Endpoints>::all(ctx.client.clone());
    loop {
        // A leftover Endpoints object is harmless for a few seconds; keep the scan rare.
        tokio::time::sleep(Duration::from_secs(5)).await;
        if services.wait_until_ready().await.is_err() {
            return;
        }
        let Ok(list) = api.list(&ListParams::default()).await else {
            continue;
        };
        for ep in list.items {
            if !ep.annotations().contains_key(TRIGGER_TIME) {
                continue;
            }
            let Some(ns) = ep.namespace() else { continue };
            let key = ObjectRef::<Service>::new(&ep.name_any()).within(&ns);
            if services.get(&key).is_none() {
                let ns_api = Api::<Endpoints>::namespaced(ctx.client.clone(), &ns);
                let _ = ns_api
                    .delete(&ep.name_any(), &DeleteParams::default())
                    .await;
            }
        }
    }
}

/// A service port resolved for one pod: the port number its target means there.
fn resolve(port: &ServicePort, pod: &Pod) -> Option<i32> {
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP")
                            == port.protocol.as_deref().unwrap_or("TCP"))
                    .then_some(p.container_port)
                })
            })
        }
    }
}

/// A service port resolved for a pod: name, port number, protocol, app protocol.
type ResolvedPort = (Option<String>, i32, String, Option<String>);

/// One pod as an endpoint: address, readiness, and its resolved ports.
struct Member<'a> {
    pod: &'a Pod,
    ip: String,
    ready: bool,
    terminating: bool,
    ports: Vec<ResolvedPort>,
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let Some(spec) = svc.spec.as_ref() else {
        return Ok(Action::await_change());
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        // Without a selector, Endpoints are the user's to write.
        return Ok(Action::await_change());
    };
    if spec.type_.as_deref() == Some("ExternalName") || svc.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let query = selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api_pods = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    let pod_list = api_pods.list(&ListParams::default().labels(&query)).await?;
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let service_ports = spec.ports.clone().unwrap_or_default();
    let mut members: Vec<Member> = Vec::new();
    for pod in &pod_list.items {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        let ports = service_ports
            .iter()
            .filter_map(|p| {
                Some((
                    p.name.clone(),
                    resolve(p, pod)?,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.app_protocol.clone(),
                ))
            })
            .collect::<Vec<_>>();
        if !service_ports.is_empty() && ports.is_empty() {
            continue;
        }
        members.push(Member {
            pod,
            ip,
            ready: publish_not_ready || pods::is_ready(pod),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            ports,
        });
    }
    members.sort_by(|a, b| a.ip.cmp(&b.ip));

    write_endpoints(&ctx, &svc, &members).await?;
    write_slices(&ctx, &svc, &members).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The pod's hostname, when its subdomain is the Service `service` (DNS names of the
/// form `<hostname>.<service>.<ns>.svc`).
fn hostname_in(pod: &Pod, service: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    (spec.subdomain.as_deref() == Some(service))
        .then(|| spec.hostname.clone())
        .flatten()
}

fn node_of(pod: &Pod) -> Option<String> {
    pod.spec.as_ref().and_then(|s| s.node_name.clone())
}

async fn write_endpoints(ctx: &Context, svc: &Service, members: &[Member<'_>]) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let api = Api::<Endpoints>::namespaced(ctx.client.clone(), &ns);
    // Pods with the same resolved ports share a subset.
    let mut groups: BTreeMap<Vec<ResolvedPort>, EndpointSubset> = BTreeMap::new();
    for m in members.iter().filter(|m| !m.terminating) {
        let subset = groups
            .entry(m.ports.clone())
            .or_insert_with(|| EndpointSubset {
                ports: Some(
                    m.ports
                        .iter()
                        .map(|(name, port, proto, app)| EndpointPort {
                            name: name.clone(),
                            port: *port,
                            protocol: Some(proto.clone()),
                            app_protocol: app.clone(),
                        })
                        .collect(),
                )
                .filter(|p: &Vec<EndpointPort>| !p.is_empty()),
                ..Default::default()
            });
        let addr = EndpointAddress {
            ip: m.ip.clone(),
            node_name: node_of(m.pod),
            target_ref: Some(target_ref(m.pod)),
            hostname: hostname_in(m.pod, &svc.name_any()),
        };
        if m.ready {
            subset.addresses.get_or_insert_with(Vec::new).push(addr);
        } else {
            subset
                .not_ready_addresses
                .get_or_insert_with(Vec::new)
                .push(addr);
        }
    }
    let subsets: Vec<EndpointSubset> = groups.into_values().collect();
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let mut labels = svc.labels().clone();
    if svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    match api.get_opt(&svc.name_any()).await? {
        Some(mut ep) => {
            if ep.subsets == subsets
                && ep.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()) == &labels
            {
                return Ok(());
            }
            ep.subsets = subsets;
            ep.metadata.labels = Some(labels);
            ep.annotations_mut()
                .insert(TRIGGER_TIME.into(), crate::api::objects::now_rfc3339());
            api.replace(&svc.name_any(), &PostParams::default(), &ep)
                .await?;
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: svc.metadata.name.clone(),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    annotations: Some(
                        [(TRIGGER_TIME.to_string(), crate::api::objects::now_rfc3339())].into(),
                    ),
                    ..Default::default()
                },
                subsets,
            };
            match api.create(&PostParams::default(), &ep).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

async fn write_slices(ctx: &Context, svc: &Service, members: &[Member<'_>]) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let api = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns);
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<&Member>> = BTreeMap::new();
    for m in members {
        groups.entry(m.ports.clone()).or_default().push(m);
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    let mut wanted: Vec<EndpointSlice> = Vec::new();
    for (ports, ms) in groups {
        let chunks: Vec<&[&Member]> = if ms.is_empty() {
            vec![&[]]
        } else {
            ms.chunks(MAX_PER_SLICE).collect()
        };
        for chunk in chunks {
            let index = wanted.len();
            let mut labels = svc.labels().clone();
            labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
            labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
            wanted.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{name}-{index}")),
                    namespace: Some(ns.clone()),
                    labels: Some(labels),
                    owner_references: pods::controller_ref(svc).map(|r| vec![r]),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: chunk
                    .iter()
                    .map(|m| Endpoint {
                        addresses: vec![m.ip.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(m.ready && !m.terminating),
                            serving: Some(m.ready),
                            terminating: Some(m.terminating),
                        }),
                        node_name: node_of(m.pod),
                        target_ref: Some(target_ref(m.pod)),
                        hostname: hostname_in(m.pod, &name),
                        ..Default::default()
                    })
                    .collect(),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p, proto, app)| SlicePort {
                            name: n.clone(),
                            port: Some(*p),
                            protocol: Some(proto.clone()),
                            app_protocol: app.clone(),
                        })
                        .collect(),
                ),
            });
        }
    }
    let existing = api
        .list(&ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={name}")))
        .await?
        .items;
    for want in &wanted {
        let wname = want.metadata.name.clone().unwrap_or_default();
        match existing
            .iter()
            .find(|e| e.metadata.name.as_deref() == Some(&wname))
        {
            Some(cur)
                if cur.endpoints == want.endpoints
                    && cur.ports == want.ports
                    && cur.metadata.labels == want.metadata.labels => {}
            Some(cur) => {
                let mut next = want.clone();
                next.metadata.resource_version = cur.metadata.resource_version.clone();
                api.replace(&wname, &PostParams::default(), &next).await?;
            }
            None => match api.create(&PostParams::default(), want).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            },
        }
    }
    for e in &existing {
        let managed = e.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY);
        if managed && !wanted.iter().any(|w| w.metadata.name == e.metadata.name) {
            let _ = api.delete(&e.name_any(), &DeleteParams::default()).await;
        }
    }
    Ok(())
}
