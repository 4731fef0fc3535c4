//! Three nodes over the real peer transport: HTTPS on loopback with mutual TLS from a
//! cluster CA; a peer with a certificate of another CA is refused.

use std::sync::Arc;
use std::time::Duration;

use pikube_raft::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA as PEM: certificate and key.
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA.
pub fn ca() -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(DnType::CommonName, "test-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("ca cert");
    Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn node_tls(ca: &Ca) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let t = PeerTls::issue(&ca.cert_pem, &ca.key_pem, &["127.0.0.1".to_string()]).expect("tls");
    (t.server, t.client)
}

struct Node {
    store: Store,
    server: tokio::task::JoinHandle<()>,
}

async fn start_node(
    ca: &Ca,
    dir: &std::path::Path,
    id: NodeId,
    cluster_id: Option<String>,
) -> Node {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (server_tls, client_tls) = node_tls(ca);
    let mut c = Config::single_node(dir.join(format!("node-{id}")));
    c.node_id = id;
    c.advertise_addr = addr;
    c.bootstrap = id == 1;
    c.cluster_id = cluster_id;
    c.transport = Arc::new(HttpTransport::new(client_tls));
    c.timing = crate::harness::test_timing();
    c.request_timeout = Duration::from_secs(5);
    let store = Store::open(c).await.expect("open");
    let server = tokio::spawn(serve_peers(listener, server_tls, store.clone()));
    Node { store, server }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_over_https_with_mutual_tls() {
    let ca = ca();
    let dir = tempfile::tempdir().expect("tempdir");
    let n1 = start_node(&ca, dir.path(), 1, None).await;
    let cluster = Some(n1.store.cluster_id().to_string());
    let n2 = start_node(&ca, dir.path(), 2, cluster.clone()).await;
    let n3 = start_node(&ca, dir.path(), 3, cluster).await;
    assert!(
        n2.store.members().is_empty(),
        "a node that has not joined knows no members"
    );
    // Membership changes go through any member; addresses come from each node's config.
    let addr2 = node_addr(&n2);
    let addr3 = node_addr(&n3);
    n1.store.add_voter(2, &addr2).await.expect("add node 2");
    n1.store.add_voter(3, &addr3).await.expect("add node 3");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while n3.store.members().iter().filter(|m| m.voter).count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 never learnt the membership"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let put = n3
        .store
        .put(b"/k", b"v", 0)
        .await
        .expect("put via follower");
    for n in [&n1, &n2, &n3] {
        let kv = n.store.get(b"/k").await.expect("get").expect("key");
        assert_eq!(kv.mod_revision, put.revision);
    }
    // A peer whose certificate comes from another CA is refused at the handshake, even
    // though it trusts the cluster's CA.
    let other = self::ca();
    let mixed = Ca {
        cert_pem: format!("{}{}", other.cert_pem, ca.cert_pem),
        key_pem: other.key_pem.clone(),
    };
    let (_, foreign) = node_tls(&mixed);
    let t = HttpTransport::new(foreign);
    let err = t
        .send(1, &node_addr(&n1), b"hello".to_vec())
        .await
        .expect_err("foreign certificate refused");
    // (With TLS 1.3 the client learns of the refusal only when it first uses the
    // connection, so the error may name the connection rather than the handshake.)
    assert!(
        matches!(
            err,
            TransportError::Unreachable { .. } | TransportError::NoAnswer { .. }
        ),
        "{err}"
    );
    // Garbage from a trusted peer gets a refusal, not a crash.
    let (_, trusted) = node_tls(&ca);
    let t = HttpTransport::new(trusted);
    let reply = t
        .send(1, &node_addr(&n1), b"garbage".to_vec())
        .await
        .expect("answer");
    assert!(!reply.is_empty());
    assert!(n1.store.get(b"/k").await.expect("still serving").is_some());
    for n in [n1, n2, n3] {
        n.server.abort();
        n.store.shutdown().await.expect("shutdown");
    }
}

fn node_addr(n: &Node) -> String {
    n.store.advertise_addr().to_string()
}
