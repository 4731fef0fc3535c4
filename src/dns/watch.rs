//! The cluster's Services, EndpointSlices and Pods, kept by kube-runtime reflectors and
//! turned into a [`Zone`] after every change (coalesced over a few milliseconds). The
//! zone in use is swapped as a whole, so a lookup only clones an `Arc` under a read lock
//! that is never held while building.

use std::net::IpAddr;
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
pub struct SharedZone(RwLock<Arc<Snapshot>>);

fn snapshot(zone: Zone) -> Arc<Snapshot> {
    Arc::new(Snapshot {
        zone,
        answers: AnswerCache::default(),
    })
}

impl SharedZone {
    /// Starts with `zone`.
    pub fn new(zone: Zone) -> SharedZone {
        SharedZone(RwLock::new(snapshot(zone)))
    }

    /// The zone in use now.
    pub fn current(&self) -> Arc<Snapshot> {
        match self.0.read() {
            Ok(z) => z.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `zone` in use.
    pub fn set(&self, zone: Zone) {
        let zone = snapshot(zone);
        match self.0.write() {
            Ok(mut z) => *z = zone,
            Err(poisoned) => *poisoned.into_inner() = zone,
        }
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

/// Runs a reflector of `K` into a new store, waking `changed` on every event.
fn reflect<K>(
    client: &Client,
    changed: Arc<Notify>,
    tasks: &mut tokio::task::JoinSet<()>,
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
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
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
        services: reflect(&client, changed.clone(), &mut tasks),
        slices: reflect(&client, changed.clone(), &mut tasks),
        pods: reflect(&client, changed.clone(), &mut tasks),
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
