//! The `default/kubernetes` Service's endpoints: the API server's own address and port,
//! written as Endpoints and an EndpointSlice (kube-apiserver's endpoint reconciler), so
//! pods reach the API through 10.43.0.1:443 by the service proxy.

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Writes (or corrects) the endpoints of `default/kubernetes` to `ip:port`.
pub async fn publish(client: &Client, ip: std::net::IpAddr, port: u16) -> Result<(), kube::Error> {
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{
            "addresses": [{"ip": ip.to_string()}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        }],
    });
    let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": family,
        "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    });
    upsert(
        &Api::<Endpoints>::namespaced(client.clone(), "default"),
        endpoints,
    )
    .await?;
    upsert(
        &Api::<EndpointSlice>::namespaced(client.clone(), "default"),
        slice,
    )
    .await
}

/// Creates the object, or replaces what it holds when it exists.
async fn upsert<K>(api: &Api<K>, obj: serde_json::Value) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let typed: K = serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
    match api.get_opt("kubernetes").await? {
        None => {
            api.create(&kube::api::PostParams::default(), &typed)
                .await?;
        }
        Some(_) => {
            api.patch("kubernetes", &PatchParams::default(), &Patch::Merge(obj))
                .await?;
        }
    }
    Ok(())
}
