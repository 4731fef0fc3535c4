//! The cluster's Services, EndpointSlices and Pods, kept by kube-runtime reflectors and
//! turned into a [`Zone`] after every change of the records (coalesced over a few
//! milliseconds). An update that leaves an object's DNS facts as they were (a Pod's
//! conditions, a Service's status, any heartbeat) is filtered out by the fingerprint of
//! those facts, so it neither rebuilds the zone nor drops the answer cache. The zone in
//! use is swapped as a whole, so a lookup only clones an `Arc` under a read lock that is
//! never held while building.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use super::cache::AnswerCache;
use super::records::{
    EndpointData, PodData, PortData, ServiceData, ServiceKind, Zone, ZoneConfig, ZoneData,
};
use crate::watch_filter;

/// Label of an EndpointSlice naming its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// How long changes are collected before the zone is rebuilt.
const COALESCE: Duration = Duration::from_millis(20);

/// One version of the zone with the encoded answers given from it.
pub struct Snapshot {
    /// The records.
    pub zone: Zone,
    /// Replies already encoded from `zone`.
    pub answers: AnswerCache,
}

/// The zone in use, replaced as a whole on every rebuild.
pub struct SharedZone {
    zone: RwLock<Arc<Snapshot>>,
    /// Zones put in use so far.
    builds: AtomicU64,
}

fn snapshot(zone: Zone) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        zone,
        answers: AnswerCache::default(),
    })
}

impl SharedZone {
    /// Starts with `zone`.
    pub fn new(zone: Zone) -> SharedZone {
        SharedZone {
            zone: RwLock::new(snapshot(zone)),
            builds: AtomicU64::new(0),
        }
    }

    /// How many zones were put in use by [`SharedZone::set`] (rebuilds, for tests and
    /// benchmarks).
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }

    /// The zone in use now.
    pub fn current(&self) -> Arc<Snapshot> {
        match self.zone.read() {
            Ok(z) => z.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `zone` in use.
    pub fn set(&self, zone: Zone) {
        let zone = snapshot(zone);
        match self.zone.write() {
            Ok(mut z) => *z = zone,
            Err(poisoned) => *poisoned.into_inner() = zone,
        }
        self.builds.fetch_add(1, Ordering::Relaxed);
    }
}

fn parse_ips<'a>(ips: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    ips.into_iter().filter_map(|s| s.parse().ok()).collect()
}

/// A port of a Service or EndpointSlice (protocol TCP when unset); None without a valid
/// number.
fn port_data(
    name: &Option<String>,
    protocol: &Option<String>,
    port: Option<i32>,
) -> Option<PortData> {
    Some(PortData {
        name: name.clone().unwrap_or_default(),
        protocol: protocol.clone().unwrap_or_else(|| "TCP".into()),
        port: u16::try_from(port?).ok()?,
    })
}

/// The DNS facts of a Service (None for one without addresses yet).
pub fn service_data(svc: &Service) -> Option<ServiceData> {
    let spec = svc.spec.as_ref()?;
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        ServiceKind::ExternalName(spec.external_name.clone()?)
    } else if spec.cluster_ip.as_deref() == Some("None") {
        ServiceKind::Headless
    } else {
        let ips = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => parse_ips(ips),
            _ => parse_ips(spec.cluster_ip.iter()),
        };
        if ips.is_empty() {
            return None;
        }
        ServiceKind::ClusterIp(ips)
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_data(&p.name, &p.protocol, Some(p.port)))
        .collect();
    Some(ServiceData {
        namespace: svc.namespace()?,
        name: svc.name_any(),
        kind,
        ports,
    })
}

/// The DNS facts of the endpoints of an EndpointSlice.
pub fn endpoint_data(slice: &EndpointSlice) -> Vec<EndpointData> {
    let (Some(namespace), Some(service)) =
        (slice.namespace(), slice.labels().get(SERVICE_NAME_LABEL))
    else {
        return Vec::new();
    };
    let ports: Vec<PortData> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| port_data(&p.name, &p.protocol, p.port))
        .collect();
    slice
        .endpoints
        .iter()
        .map(|e| EndpointData {
            namespace: namespace.clone(),
            service: service.clone(),
            ips: parse_ips(&e.addresses),
            hostname: e.hostname.clone().filter(|h| !h.is_empty()),
            // An unknown readiness counts as ready (the EndpointSlice API's advice).
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            ports: ports.clone(),
        })
        .collect()
}

/// The DNS facts of a Pod: running or pending pods with their own IPs.
pub fn pod_data(pod: &Pod) -> Option<PodData> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ips = match &status.pod_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|p| p.ip.parse().ok()).collect(),
        _ => parse_ips(status.pod_ip.iter()),
    };
    if ips.is_empty() {
        return None;
    }
    Some(PodData {
        namespace: pod.namespace()?,
        ips,
    })
}

/// The three caches the zone is built from.
#[derive(Clone)]
struct Caches {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
}

impl Caches {
    fn data(&self) -> ZoneData {
        ZoneData {
            services: self
                .services
                .state()
                .iter()
                .filter_map(|s| service_data(s))
                .collect(),
            endpoints: self
                .slices
                .state()
                .iter()
                .flat_map(|s| endpoint_data(s))
                .collect(),
            pods: self
                .pods
                .state()
                .iter()
                .filter_map(|p| pod_data(p))
                .collect(),
        }
    }

    async fn wait_until_ready(&self) -> bool {
        self.services.wait_until_ready().await.is_ok()
            && self.slices.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
    }
}

/// Drops what DNS never reads from a cached object (managed fields, annotations).
fn slim_meta(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
}

/// Keeps only what [`pod_data`] reads of a Pod: a node holds many pods, and a Pi little
/// memory.
fn slim_pod(pod: &mut Pod) {
    slim_meta(&mut pod.metadata);
    pod.metadata.labels = None;
    pod.metadata.owner_references = None;
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network);
    pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
        host_network,
        ..Default::default()
    });
    if let Some(status) = pod.status.as_mut() {
        *status = k8s_openapi::api::core::v1::PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            ..Default::default()
        };
    }
}

/// Runs a reflector of `K` (each object trimmed by `slim` before it is stored) into a
/// new store, waking `changed` when an object's DNS facts (`facts`, hashed) changed.
fn reflect<K, D: std::hash::Hash + 'static>(
    client: &Client,
    changed: Arc<Notify>,
    tasks: &mut tokio::task::JoinSet<()>,
    slim: fn(&mut K),
    facts: fn(&K) -> D,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watch_filter::relevant(
        reflector::reflector(
            writer,
            watcher(Api::<K>::all(client.clone()), watcher::Config::default()).modify(slim),
        )
        .default_backoff(),
        move |obj: &K| watch_filter::fingerprint(&facts(obj)),
    );
    tasks.spawn(async move {
        stream
            .for_each(|event| {
                match event {
                    Ok(_) => changed.notify_one(),
                    Err(e) => tracing::debug!(error = %e, "dns watch"),
                }
                std::future::ready(())
            })
            .await;
    });
    reader
}

/// Keeps `zone` in step with the cluster until `shutdown` completes. Returns once the
/// first complete zone is in use through `ready` (so the server can start answering).
pub async fn run(
    client: Client,
    config: ZoneConfig,
    zone: Arc<SharedZone>,
    ready: tokio::sync::oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let changed = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    let caches = Caches {
        services: reflect(
            &client,
            changed.clone(),
            &mut tasks,
            |s: &mut Service| {
                slim_meta(&mut s.metadata);
                s.status = None;
            },
            service_data,
        ),
        slices: reflect(
            &client,
            changed.clone(),
            &mut tasks,
            |s: &mut EndpointSlice| slim_meta(&mut s.metadata),
            endpoint_data,
        ),
        pods: reflect(&client, changed.clone(), &mut tasks, slim_pod, pod_data),
    };
    let rebuild = async {
        if !caches.wait_until_ready().await {
            return;
        }
        let mut serial = 0u32;
        let mut ready = Some(ready);
        loop {
            let now = u32::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            )
            .unwrap_or(u32::MAX);
            serial = now.max(serial.wrapping_add(1));
            let (c, cfg) = (caches.clone(), config.clone());
            match tokio::task::spawn_blocking(move || Zone::build(&cfg, serial, &c.data())).await {
                Ok(z) => {
                    tracing::debug!(names = z.len(), serial, "dns zone rebuilt");
                    zone.set(z);
                }
                Err(e) => tracing::warn!(error = %e, "dns zone rebuild failed"),
            }
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            changed.notified().await;
            tokio::time::sleep(COALESCE).await;
        }
    };
    tokio::select! {
        _ = rebuild => {}
        _ = shutdown => {}
    }
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": "p", "namespace": "ns", "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.7", "podIPs": [{"ip": "10.42.0.7"}, {"ip": "fd00::7"}]},
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, e) in extra {
                v.insert(k.clone(), e.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn pods_give_their_ips_and_slimming_keeps_them() {
        let p = pod(json!({}));
        let d = pod_data(&p).unwrap();
        assert_eq!(d.namespace, "ns");
        assert_eq!(d.ips.len(), 2);
        let mut slim = p.clone();
        slim_pod(&mut slim);
        assert_eq!(pod_data(&slim).unwrap().ips, d.ips);
        assert!(slim.metadata.annotations.is_none());
        assert!(slim.spec.unwrap().containers.is_empty());

        let host = pod(json!({"spec": {"hostNetwork": true, "containers": []}}));
        let mut slim_host = host.clone();
        slim_pod(&mut slim_host);
        assert!(pod_data(&host).is_none() && pod_data(&slim_host).is_none());
        let done = pod(json!({"status": {"phase": "Succeeded", "podIP": "10.42.0.8"}}));
        assert!(pod_data(&done).is_none());
        let pending = pod(json!({"status": {"phase": "Pending"}}));
        assert!(pod_data(&pending).is_none());
    }

    #[test]
    fn services_by_type() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(
                json!({"metadata": {"name": "s", "namespace": "ns"}, "spec": spec}),
            )
            .unwrap()
        };
        let d = service_data(&svc(
            json!({"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5", "fd00::5"],
            "ports": [{"name": "http", "port": 80}, {"port": 81, "protocol": "UDP"}]}),
        ))
        .unwrap();
        assert_eq!(
            d.kind,
            ServiceKind::ClusterIp(vec![
                "10.43.0.5".parse().unwrap(),
                "fd00::5".parse().unwrap()
            ])
        );
        assert_eq!(d.ports[0].protocol, "TCP");
        assert_eq!(d.ports[1].name, "");
        let h = service_data(&svc(json!({"clusterIP": "None"}))).unwrap();
        assert_eq!(h.kind, ServiceKind::Headless);
        let e = service_data(&svc(
            json!({"type": "ExternalName", "externalName": "example.org"}),
        ));
        assert_eq!(
            e.unwrap().kind,
            ServiceKind::ExternalName("example.org".into())
        );
        assert!(service_data(&svc(json!({}))).is_none(), "no address yet");
    }

    #[test]
    fn slices_give_endpoints_with_readiness() {
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "db-abc", "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.42.0.7"]},
            ],
        }))
        .unwrap();
        let eps = endpoint_data(&slice);
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].service, "db");
        assert_eq!(eps[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(
            eps.iter().map(|e| e.ready).collect::<Vec<_>>(),
            [true, false, true]
        );
        assert_eq!(eps[0].ports[0].port, 5432);
        let mut orphan = slice.clone();
        orphan.metadata.labels = None;
        assert!(endpoint_data(&orphan).is_empty());
    }

    /// What the zone in use answers for `name` (A records as text, or how it fails).
    fn resolve(zone: &SharedZone, name: &str) -> String {
        use super::super::records::Lookup;
        use hickory_proto::rr::{LowerName, Name, RecordType};
        let name = LowerName::from(Name::from_ascii(name).expect("name"));
        match zone.current().zone.lookup(&name, RecordType::A) {
            Lookup::Answer(records) => records
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>()
                .join(","),
            other => format!("{other:?}"),
        }
    }

    async fn eventually(zone: &SharedZone, name: &str, want: impl Fn(&str) -> bool) {
        let t = std::time::Instant::now();
        loop {
            let got = resolve(zone, name);
            if want(&got) {
                return;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{name}: {got}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits out the coalescing of the zone rebuilds, then returns how many there were.
    async fn settled(zone: &SharedZone) -> u64 {
        tokio::time::sleep(COALESCE * 10).await;
        zone.builds()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_follow_changes_and_other_updates_rebuild_nothing() {
        use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
        let api = crate::controllers::client::TestApi::start().await;
        let client = api.client("system:kube-dns");
        let config = ZoneConfig::new("cluster.local", 5, None).expect("zone config");
        let zone = Arc::new(SharedZone::new(Zone::build(
            &config,
            0,
            &ZoneData::default(),
        )));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watching = tokio::spawn(run(client.clone(), config, zone.clone(), ready_tx, async {
            let _ = stop_rx.await;
        }));
        ready_rx.await.expect("zone ready");

        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80}]},
        }))
        .expect("service");
        let created = services
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service");
        let ip = created.spec.and_then(|s| s.cluster_ip).expect("cluster IP");
        eventually(&zone, "web.default.svc.cluster.local.", |a| a == ip).await;

        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
        let status = |ip: &str, ready: &str| {
            Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip,
                "podIPs": [{"ip": ip}],
                "conditions": [{"type": "Ready", "status": ready}]}}))
        };
        let pp = PatchParams::default();
        let new_ip = |ip: &'static str| {
            let (pods, pp, zone) = (pods.clone(), pp.clone(), zone.clone());
            async move {
                pods.patch_status("p", &pp, &status(ip, "True"))
                    .await
                    .expect("pod IP");
                let name = format!("{}.default.pod.cluster.local.", ip.replace('.', "-"));
                eventually(&zone, &name, |a| a == ip).await;
            }
        };
        new_ip("10.42.0.9").await;

        // Updates that change no record: readiness of a pod (no EndpointSlice here),
        // labels and annotations of a Service. No rebuild, the answer cache stays.
        let quiet = settled(&zone).await;
        for ready in ["True", "False", "True"] {
            pods.patch_status("p", &pp, &status("10.42.0.9", ready))
                .await
                .expect("readiness");
        }
        services
            .patch(
                "web",
                &pp,
                &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"},
                    "annotations": {"note": "x"}}})),
            )
            .await
            .expect("labels");
        assert_eq!(
            settled(&zone).await,
            quiet,
            "updates without DNS facts rebuilt"
        );

        // A new pod IP and a deleted Service change the records.
        new_ip("10.42.0.10").await;
        services
            .delete("web", &DeleteParams::default())
            .await
            .expect("delete service");
        eventually(&zone, "web.default.svc.cluster.local.", |a| a == "NxDomain").await;
        assert!(zone.builds() > quiet);

        let _ = stop_tx.send(());
        let _ = watching.await;
        api.shutdown().await;
    }
}
