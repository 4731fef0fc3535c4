//! The in-process client: a kube-rs `Client` whose requests go straight into the API
//! server's router, with no TLS or socket in between, under a fixed identity.

use kube::client::Body;

use crate::api::{ApiServer, Identity};

/// A client of `api` that acts as `user` in `groups`.
pub fn in_process(api: &ApiServer, user: &str, groups: &[&str]) -> kube::Client {
    let identity = Identity {
        user: user.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    // Writes are recorded in managedFields under the component's name, as Kubernetes
    // components name themselves: `kube-controller-manager`, `kubelet` for nodes, …
    let component = match user.strip_prefix("system:").unwrap_or(user) {
        n if n.starts_with("node:") => "kubelet".to_string(),
        "apiserver" => "kube-apiserver".to_string(),
        n => n.to_string(),
    };
    let agent = http::HeaderValue::from_str(&component)
        .unwrap_or_else(|_| http::HeaderValue::from_static("pikube"));
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<Body>| {
            req.extensions_mut().insert(identity.clone());
            req.headers_mut()
                .entry(http::header::USER_AGENT)
                .or_insert_with(|| agent.clone());
            req
        })
        .service(api.router());
    kube::Client::new(service, "default")
}
