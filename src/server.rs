//! Starting a pikube server: PKI, store, the objects every cluster has, and the API
//! server on its HTTPS port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;

use crate::api::{self, rest, ApiServer};
use crate::config::ServerConfig;
use crate::pki;

/// Namespaces every cluster starts with.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// The first address of the service CIDR: the `kubernetes` Service's ClusterIP.
pub fn kubernetes_service_ip(service_cidr: &str) -> Result<Ipv4Addr> {
    let (addr, bits) = service_cidr
        .split_once('/')
        .with_context(|| format!("service CIDR {service_cidr:?} is not of the form a.b.c.d/n"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("service CIDR {service_cidr:?} has a bad address"))?;
    let bits: u32 = bits
        .parse()
        .ok()
        .filter(|b| *b <= 30)
        .with_context(|| format!("service CIDR {service_cidr:?} has a bad prefix length"))?;
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    Ok(Ipv4Addr::from((u32::from(addr) & mask) + 1))
}

/// Creates `obj` through the registry unless it exists already.
async fn create_if_missing(
    api: &ApiServer,
    resource: &str,
    namespace: Option<&str>,
    obj: serde_json::Value,
    what: &str,
) -> Result<()> {
    let (group, version) = match obj["apiVersion"].as_str().unwrap_or("v1").split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), "v1".to_string()),
    };
    let def = api::resources::lookup(&group, &version, resource)
        .with_context(|| format!("{resource} are not served"))?;
    let target = rest::Target {
        def,
        namespace: namespace.map(String::from),
        name: None,
        subresource: None,
    };
    match rest::create(api.registry(), &target, obj, rest::WriteOptions::default()).await {
        Ok(_) => tracing::info!(object = what, "created"),
        Err(e) if e.reason == "AlreadyExists" => {}
        Err(e) => anyhow::bail!("cannot create {what}: {}", e.message),
    }
    Ok(())
}

/// The addresses the bootstrap objects point at.
pub struct BootstrapAddresses {
    /// ClusterIP of `default/kubernetes`.
    pub kubernetes_ip: Ipv4Addr,
    /// The API server's HTTPS port (target port of `default/kubernetes`).
    pub https_port: u16,
    /// ClusterIP of `kube-system/kube-dns` (the cluster DNS address); None when the DNS
    /// is disabled (as k3s leaves out CoreDNS's Service with `--disable coredns`).
    pub cluster_dns: Option<IpAddr>,
}

/// Creates what every cluster has from the start, if it is missing: the system
/// namespaces, `default/kubernetes`, and `kube-system/kube-dns` (no selector: the DNS is
/// answered on every node itself, as k3s users expect to find it under that name).
pub async fn bootstrap(api: &ApiServer, addrs: &BootstrapAddresses) -> Result<()> {
    for ns in SYSTEM_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}});
        create_if_missing(api, "namespaces", None, obj, &format!("namespace {ns}")).await?;
    }
    let kubernetes_ip = addrs.kubernetes_ip.to_string();
    let svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": kubernetes_ip,
            "clusterIPs": [kubernetes_ip],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": addrs.https_port}],
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
        },
    });
    create_if_missing(
        api,
        "services",
        Some("default"),
        svc,
        "service default/kubernetes",
    )
    .await?;
    let Some(cluster_dns) = addrs.cluster_dns else {
        return Ok(());
    };
    let dns_ip = cluster_dns.to_string();
    let family = if cluster_dns.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    };
    let dns = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {
            "k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": dns_ip,
            "clusterIPs": [dns_ip],
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153},
            ],
            "sessionAffinity": "None",
            "ipFamilies": [family],
            "ipFamilyPolicy": "SingleStack",
        },
    });
    create_if_missing(
        api,
        "services",
        Some("kube-system"),
        dns,
        "service kube-system/kube-dns",
    )
    .await
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Runs a pikube server until `shutdown` completes.
pub async fn run(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let kubernetes_ip = kubernetes_service_ip(&config.service_cidr)?;
    // The node's containerd starts while the store opens and the API server comes up.
    let runtime =
        (!config.disable_agent).then(|| crate::agent::RuntimeStart::spawn(&config.agent()));
    let pod_cidrs = crate::controllers::nodeipam::CidrPlan::new(&config.cluster_cidr, 24)
        .map_err(anyhow::Error::msg)?;
    let tokens = match &config.token_auth_file {
        Some(path) => api::authn::Tokens::load(path)?,
        None => api::authn::Tokens::default(),
    };
    let mut ips: Vec<IpAddr> = config.node_ips.clone();
    if !config.bind_address.is_unspecified() {
        ips.push(config.bind_address);
    }
    ips.extend(config.advertise_address);
    // The node's own address (the default route's when no flag names one), so agents on
    // other machines can reach the API server by it.
    if let Ok(ip) = config.agent().node_ip.parse::<IpAddr>() {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let sans = pki::serving_sans(
        &hostname(),
        &ips,
        &config.cluster_domain,
        IpAddr::V4(kubernetes_ip),
    );
    let tls_dir = config.data_dir.join("server").join("tls");
    let prepared = crate::cluster::prepare(&config, &tls_dir).await?;
    let pki = pki::Pki::load_or_create(&tls_dir, &sans)?;
    let sa_key = Arc::new(
        api::service_account_tokens::SigningKey::load_or_create(&tls_dir)
            .context("service-account signing key")?,
    );
    let server_dir = config.data_dir.join("server");
    let token = crate::join::load_or_create(
        &server_dir,
        crate::join::Role::Server,
        config.token.as_deref(),
        &pki.ca.cert_pem,
    )?;
    let agent_token = crate::join::load_or_create(
        &server_dir,
        crate::join::Role::Agent,
        config.agent_token.as_deref(),
        &pki.ca.cert_pem,
    )?;
    anyhow::ensure!(
        !crate::join::same(token.secret.as_bytes(), agent_token.secret.as_bytes()),
        "the agent token must differ from the server token: agents would get what only servers may (the CA key)"
    );

    let (store, peers) = crate::cluster::open_store(&config, &prepared, &pki).await?;
    let auth = Arc::new(
        api::authn::Authenticator::new(tokens).with_service_accounts(sa_key.clone(), store.clone()),
    );

    let client_host = if config.bind_address.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        config.bind_address
    };
    let server_address = SocketAddr::new(
        config.advertise_address.unwrap_or(client_host),
        config.https_listen_port,
    );
    let ranges = api::services::ServiceRanges::new(
        &config.service_cidr,
        config.service_node_port_range.clone(),
    )?;
    let api = ApiServer::new(store.clone(), server_address.to_string(), ranges)
        .with_node_tls(
            pki::tls::mutual_client(&pki.ca.cert_pem, &pki.kubelet_client)
                .context("client TLS towards node agents")?,
        )
        .with_service_account_key(sa_key.clone())
        .with_authenticator(auth.clone())
        .with_unreachable_toleration(
            i64::try_from(config.default_unreachable_toleration.as_secs()).unwrap_or(i64::MAX),
        );
    match api::services::repair(&store).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(freed = n, "freed service reservations of deleted Services"),
        Err(e) => tracing::warn!(error = %e.message, "cannot check service reservations"),
    }
    bootstrap(
        &api,
        &BootstrapAddresses {
            kubernetes_ip,
            https_port: config.https_listen_port,
            cluster_dns: (!config.is_disabled("dns")).then_some(config.cluster_dns),
        },
    )
    .await?;
    if !config.is_disabled("local-storage") {
        let class = api::storage_admission::local_path_class();
        create_if_missing(
            &api,
            "storageclasses",
            None,
            class,
            "storageclass local-path",
        )
        .await?;
    }

    // Every server serves the custom resources (not only the store's leader).
    if let Err(e) = api.load_definitions().await {
        tracing::warn!(error = %e.message, "cannot read CustomResourceDefinitions");
    }
    let definitions = tokio::spawn(api.follow_definitions());

    let listen = SocketAddr::new(config.bind_address, config.https_listen_port);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let url = format!(
        "https://{}",
        SocketAddr::new(client_host, config.https_listen_port)
    );
    let kubeconfig = pki::kubeconfig(&url, &pki.ca.cert_pem, &pki.admin);
    pki::write_kubeconfig(
        &config.write_kubeconfig,
        config.write_kubeconfig_mode,
        &kubeconfig,
    )?;
    tracing::info!(%listen, kubeconfig = %config.write_kubeconfig.display(), "API server ready");

    // Pods reach the API server through `default/kubernetes` at the address other nodes
    // use for it: the advertised one, else this node's.
    let endpoint_ip = config
        .advertise_address
        .or_else(|| config.agent().node_ip.parse().ok())
        .unwrap_or(client_host);
    let apiserver =
        crate::controllers::client::in_process(&api, "system:apiserver", &["system:masters"]);
    if let Err(e) = crate::controllers::apiserver_endpoints::publish(
        &apiserver,
        endpoint_ip,
        config.https_listen_port,
    )
    .await
    {
        tracing::warn!(error = %e, "cannot publish the kubernetes Service's endpoints");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut components = tokio::task::JoinSet::new();
    let loops = {
        let (api, store, config) = (api.clone(), store.clone(), config.clone());
        let ca_pem = pki.ca.cert_pem.clone();
        move |stop: tokio::sync::watch::Receiver<bool>| {
            control_loops(&api, &store, &config, &ca_pem, pod_cidrs, stop)
        }
    };
    components.spawn(crate::cluster::while_leader(
        store.clone(),
        stop_rx.clone(),
        loops,
    ));
    if let Some(runtime) = runtime {
        let mut agent = config.agent();
        // The server, not its node, decides the node's roles (see `server_roles`).
        agent.role_labels = crate::agent::node::server_roles(prepared.clustered());
        let mut agent_sans = vec![agent.node_name.clone(), agent.node_ip.clone()];
        let host = hostname();
        if !host.is_empty() {
            agent_sans.push(host);
        }
        agent_sans.sort();
        agent_sans.dedup();
        agent.tls = Some(crate::agent::api::AgentTls {
            ca_cert_pem: pki.ca.cert_pem.clone(),
            serving: pki.agent_serving(&tls_dir, &agent_sans)?,
            allowed_user: pki::KUBELET_CLIENT_USER.to_string(),
        });
        let client = crate::controllers::client::in_process(
            &api,
            &format!("system:node:{}", agent.node_name),
            &["system:nodes", "system:masters"],
        );
        let rx = stop_rx.clone();
        components.spawn(async move {
            if let Err(e) = crate::agent::run(client, agent, runtime, rx).await {
                tracing::error!(error = %e, "node agent stopped");
            }
        });
    }
    if !config.disable_agent && !config.is_disabled("proxy") {
        let client =
            crate::controllers::client::in_process(&api, "system:kube-proxy", &["system:masters"]);
        crate::proxy::start(client, &config, stop_rx.clone(), &mut components);
    }
    if !config.is_disabled("dns") {
        let client =
            crate::controllers::client::in_process(&api, "system:pikube-dns", &["system:masters"]);
        components.spawn(dns_component(client, &config, stop_rx.clone())?);
    }
    let tls = api::http::tls_config(&pki)?;
    let servers = crate::cluster::router(
        store.clone(),
        &pki,
        &token,
        &agent_token,
        sa_key.pem(),
        prepared.clustered(),
    );
    let snapshots = crate::snapshot::router(
        store.clone(),
        config.data_dir.join("server").join("snapshots"),
    );
    let join = crate::join::router(
        Arc::new(pki.clone()),
        store.clone(),
        &token,
        &agent_token,
        crate::join::ClusterSettings {
            cluster_cidr: config.cluster_cidr.clone(),
            service_cidr: config.service_cidr.clone(),
            cluster_dns: config.cluster_dns,
            cluster_domain: config.cluster_domain.clone(),
            api_server_sans: sans,
        },
        crate::controllers::client::in_process(&api, "system:pikube-join", &["system:masters"]),
    );
    tracing::info!(token = %server_dir.join(crate::join::Role::Agent.file()).display(), "agents join with the token in this file");
    let served = api::http::serve(
        listener,
        tls,
        api.router().merge(join).merge(servers).merge(snapshots),
        auth,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    definitions.abort();
    if tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while components.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        components.abort_all();
    }
    served?;
    if let Some(peers) = peers {
        peers.abort();
    }
    store.shutdown().await.context("store shutdown")?;
    Ok(())
}

/// The control loops of the cluster — controllers, scheduler, compaction — as they run on
/// the store's leader, until `stop` fires.
fn control_loops(
    api: &ApiServer,
    store: &pikube_raft::Store,
    config: &ServerConfig,
    ca_pem: &str,
    pod_cidrs: crate::controllers::nodeipam::CidrPlan,
    stop_rx: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let mut set_all = tokio::task::JoinSet::new();
    {
        let (store, interval, mut rx) =
            (store.clone(), config.compaction_interval, stop_rx.clone());
        set_all.spawn(async move {
            tokio::select! {
                _ = crate::compactor::run(store, interval) => {}
                _ = rx.wait_for(|s| *s) => {}
            }
        });
    }
    if !config.is_disabled("controllers") {
        let client = crate::controllers::client::in_process(
            api,
            "system:kube-controller-manager",
            &["system:masters"],
        );
        let mut set = crate::controllers::start(client.clone(), stop_rx.clone());
        {
            let mut rx = stop_rx.clone();
            set.spawn(crate::controllers::rootca::run(
                client.clone(),
                ca_pem.to_string(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ));
        }
        set.spawn(crate::controllers::nodelifecycle::run(
            client.clone(),
            crate::controllers::nodelifecycle::Timing {
                grace: config.node_monitor_grace_period,
                default_toleration: config.default_unreachable_toleration,
            },
            stop_rx.clone(),
        ));
        let ipam_ctx = Arc::new(crate::controllers::Context {
            client: client.clone(),
        });
        let mut rx = stop_rx.clone();
        set.spawn(crate::controllers::nodeipam::run(
            ipam_ctx,
            pod_cidrs,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        let pv_ctx = Arc::new(crate::controllers::Context {
            client: client.clone(),
        });
        let mut rx = stop_rx.clone();
        set.spawn(crate::controllers::persistentvolume::run(
            pv_ctx,
            !config.is_disabled("local-storage"),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        set.spawn(crate::controllers::gc::run(
            api.registry().clone(),
            stop_rx.clone(),
        ));
        set_all.spawn(async move { while set.join_next().await.is_some() {} });
    }
    if !config.is_disabled("scheduler") {
        let client = crate::controllers::client::in_process(
            api,
            "system:kube-scheduler",
            &["system:masters"],
        );
        let mut rx = stop_rx.clone();
        set_all.spawn(crate::scheduler::run(client, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }

    set_all
}

/// The cluster DNS of this node as a task, answering from `client`'s watches (errors
/// are logged: the rest of the node keeps running without it).
pub fn dns_component(
    client: kube::Client,
    config: &ServerConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<impl std::future::Future<Output = ()>> {
    let zone = crate::dns::records::ZoneConfig::new(
        &config.cluster_domain,
        crate::dns::DEFAULT_TTL,
        Some(config.cluster_dns),
    )
    .map_err(anyhow::Error::msg)
    .context("--cluster-domain")?;
    let dns = crate::dns::DnsConfig {
        listen: config
            .dns_listen_address
            .unwrap_or(SocketAddr::new(config.cluster_dns, 53)),
        cluster_dns: config.cluster_dns,
        zone,
        resolv_conf: config.resolv_conf.clone(),
        local_address: config.dns_listen_address.is_none(),
    };
    Ok(async move {
        if let Err(e) = crate::dns::run(client, dns, stop).await {
            tracing::error!(error = %e, "cluster DNS stopped");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_ip_is_the_first_service_address() {
        assert_eq!(
            kubernetes_service_ip("10.43.0.0/16").unwrap(),
            Ipv4Addr::new(10, 43, 0, 1)
        );
        assert_eq!(
            kubernetes_service_ip("10.96.5.7/12").unwrap(),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert!(kubernetes_service_ip("10.43.0.0").is_err());
        assert!(kubernetes_service_ip("10.43.0.0/33").is_err());
    }
}
