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
    let service = tower::ServiceBuilder::new()
        .map_request(move |mut req: http::Request<Body>| {
            req.extensions_mut().insert(identity.clone());
            req
        })
        .service(api.router());
    kube::Client::new(service, "default")
}
