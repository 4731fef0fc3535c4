//! The in-process client: a kube-rs `Client` whose requests go straight into the API
//! server's router, with no TLS or socket in between, under a fixed identity.

use kube::client::Body;

use crate::api::{ApiServer, Identity};

/// A client of `api` that acts as `user` in `groups`.
pub fn in_process(api: &ApiServer, user: &str, groups: &[&str]) -> kube::Client {
    let identity = Identity {
        user: user.to_string(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
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

/// An API server on a store in a temp dir, bootstrapped as `pikube server` does, for
/// tests that drive components through their in-process client.
#[cfg(test)]
pub struct TestApi {
    /// The API server.
    pub api: ApiServer,
    /// Its store (shut down by [`TestApi::shutdown`]).
    pub store: pikube_raft::Store,
    _dir: tempfile::TempDir,
}

#[cfg(test)]
impl TestApi {
    /// Opens the store and bootstraps the API server (service range 10.43.0.0/16, the
    /// `kube-dns` Service on 10.43.0.10).
    pub async fn start() -> TestApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let store =
            pikube_raft::Store::open(pikube_raft::Config::single_node(dir.path().join("db")))
                .await
                .expect("store");
        let api = ApiServer::new(
            store.clone(),
            "127.0.0.1:6443".into(),
            crate::api::services::ServiceRanges::new("10.43.0.0/16", 30000..=32767)
                .expect("ranges"),
        );
        crate::server::bootstrap(
            &api,
            &crate::server::BootstrapAddresses {
                kubernetes_ip: std::net::Ipv4Addr::new(10, 43, 0, 1),
                https_port: 6443,
                cluster_dns: Some(std::net::IpAddr::from([10, 43, 0, 10])),
            },
        )
        .await
        .expect("bootstrap");
        TestApi {
            api,
            store,
            _dir: dir,
        }
    }

    /// A cluster-admin client of the server acting as `user`.
    pub fn client(&self, user: &str) -> kube::Client {
        in_process(&self.api, user, &["system:masters"])
    }

    /// Shuts the store down.
    pub async fn shutdown(&self) {
        self.store.shutdown().await.expect("store shutdown");
    }
}
