//! `pikube agent`: a node that joins a server with its token and runs the node agent,
//! service proxy and cluster DNS against the server's API over HTTPS, with the same
//! code that runs inside `pikube server`.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Result;

use crate::config::ServerConfig;
use crate::join::NodeRequest;

/// Everything `pikube agent` needs.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The server's URL (`https://host:6443`).
    pub server: String,
    /// The join token (the server's `<data-dir>/server/agent-token`, a bootstrap token, or
    /// its server token).
    pub token: String,
    /// This node's settings (the node-level fields; the cluster ranges, DNS address and
    /// domain come from the server when joining).
    pub node: ServerConfig,
}

/// Runs an agent node until `shutdown`.
pub async fn run(cfg: WorkerConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let mut node = cfg.node;
    let first = node.agent();
    let request = NodeRequest {
        node_name: first.node_name.clone(),
        node_ips: first.node_ip.parse::<IpAddr>().into_iter().collect(),
        node_password: crate::join::password::load_or_create(&first.agent_dir())?,
    };
    let (joined, kubeconfig) =
        crate::agent::join::join_or_reuse(&first.agent_dir(), &cfg.server, &cfg.token, &request)
            .await?;
    node.cluster_cidr = joined.cluster_cidr.clone();
    node.service_cidr = joined.service_cidr.clone();
    node.cluster_dns = joined.cluster_dns;
    node.cluster_domain = joined.cluster_domain.clone();
    tracing::info!(server = %cfg.server, node = %request.node_name, "joined");

    let client = crate::cli::kube_client(&kubeconfig).await?;

    let mut agent = node.agent();
    agent.tls = Some(crate::agent::api::AgentTls {
        ca_cert_pem: joined.ca.clone(),
        serving: joined.serving.clone(),
        allowed_user: joined.api_server_user.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut components = tokio::task::JoinSet::new();
    let agent_client = client.clone();
    let rx = stop_rx.clone();
    let runtime = crate::agent::RuntimeStart::spawn(&agent);
    components.spawn(async move {
        if let Err(e) = crate::agent::run(agent_client, agent, runtime, rx).await {
            tracing::error!(error = %e, "node agent stopped");
        }
    });
    if !node.is_disabled("proxy") {
        crate::proxy::start(client.clone(), &node, stop_rx.clone(), &mut components);
    }
    if !node.is_disabled("dns") {
        components.spawn(crate::server::dns_component(
            client,
            &node,
            stop_rx.clone(),
        )?);
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(15), async {
        while components.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        components.abort_all();
    }
    Ok(())
}
