//! Mutual TLS for the peer transport: a node certificate issued (rcgen) from the CA the
//! caller provides, used as server certificate towards peers that connect and as client
//! certificate towards peers it connects to; only certificates of that CA are accepted.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

/// The TLS configurations of one node's peer transport.
#[derive(Clone)]
pub struct PeerTls {
    /// For [`crate::serve_peers`]: requires a client certificate of the CA.
    pub server: Arc<rustls::ServerConfig>,
    /// For [`crate::HttpTransport`]: presents the node certificate, trusts only the CA.
    pub client: Arc<rustls::ClientConfig>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{what}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Issues a certificate for `names` (IP addresses or DNS names peers dial) signed by
    /// the CA in `ca_cert_pem` / `ca_key_pem`, and builds both TLS configurations.
    pub fn issue(ca_cert_pem: &str, ca_key_pem: &str, names: &[String]) -> Result<PeerTls> {
        let ca_key = KeyPair::from_pem(ca_key_pem).map_err(|e| bad("CA key", e))?;
        let issuer =
            Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(|e| bad("CA certificate", e))?;
        let key = KeyPair::generate().map_err(|e| bad("node key", e))?;
        let mut params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| bad("certificate", e))?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| bad("peer name", e))?;
        params
            .distinguished_name
            .push(DnType::CommonName, "pikube-store-peer");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| bad("signing the node certificate", e))?;
        let chain = vec![cert.der().clone()];
        let pk = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_cert_pem.as_bytes()) {
            let c: CertificateDer<'static> = c.map_err(|e| bad("CA certificate", e))?;
            roots.add(c).map_err(|e| bad("CA certificate", e))?;
        }
        let roots = Arc::new(roots);
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| bad("client verifier", e))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), pk())
            .map_err(|e| bad("server certificate", e))?;
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, pk())
            .map_err(|e| bad("client certificate", e))?;
        client.alpn_protocols = vec![b"h2".to_vec()];
        Ok(PeerTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}
