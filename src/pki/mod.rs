//! Certificates and credentials: cluster CA, serving and client certificates, kubeconfig.
//!
//! Created on a server's first start under `<data-dir>/server/tls/` and reused afterwards,
//! so clients keep trusting the server across restarts.

pub mod tls;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM material of one certificate and its key.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct CertKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The server's certificates.
#[derive(Clone, Debug)]
pub struct Pki {
    /// The cluster CA (signs everything else; clients verify the server with it).
    pub ca: CertKey,
    /// The API server's serving certificate.
    pub serving: CertKey,
    /// The admin client certificate (CN=system:admin, O=system:masters).
    pub admin: CertKey,
    /// The API server's client certificate for node agents' APIs (logs, exec, attach).
    pub kubelet_client: CertKey,
}

/// Common name of the API server's client certificate towards node agents; agents
/// accept only this identity.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// Names and addresses the serving certificate is valid for.
pub fn serving_sans(
    hostname: &str,
    ips: &[IpAddr],
    cluster_domain: &str,
    kubernetes_ip: IpAddr,
) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        format!("kubernetes.default.svc.{cluster_domain}"),
        "127.0.0.1".to_string(),
        kubernetes_ip.to_string(),
    ];
    if !hostname.is_empty() {
        sans.push(hostname.to_string());
    }
    sans.extend(ips.iter().map(|ip| ip.to_string()));
    sans.sort();
    sans.dedup();
    sans
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn read_pair(dir: &Path, name: &str) -> Result<Option<CertKey>> {
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    match (c.exists(), k.exists()) {
        (false, false) => Ok(None),
        (true, true) => Ok(Some(CertKey {
            cert_pem: std::fs::read_to_string(&c)
                .with_context(|| format!("cannot read {}", c.display()))?,
            key_pem: std::fs::read_to_string(&k)
                .with_context(|| format!("cannot read {}", k.display()))?,
        })),
        _ => anyhow::bail!(
            "{} holds only half of the {name} certificate pair: refusing to replace it",
            dir.display()
        ),
    }
}

fn write_pair(dir: &Path, name: &str, ck: &CertKey) -> Result<()> {
    write_private(&dir.join(format!("{name}.key")), &ck.key_pem)?;
    write_private(&dir.join(format!("{name}.crt")), &ck.cert_pem)
}

fn new_ca() -> Result<CertKey> {
    let key = KeyPair::generate().context("cannot generate the CA key")?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params
        .distinguished_name
        .push(DnType::CommonName, "pikube-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_after = rcgen::date_time_ymd(2126, 1, 1);
    let cert = params
        .self_signed(&key)
        .context("cannot sign the CA certificate")?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue(
    ca: &CertKey,
    common_name: &str,
    orgs: &[&str],
    sans: &[String],
    server: bool,
) -> Result<CertKey> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).context("the CA key is unreadable")?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)
        .context("the CA certificate is unreadable")?;
    let key = KeyPair::generate().context("cannot generate a key")?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).context("certificate parameters")?;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .context("invalid name for a certificate")?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for o in orgs {
        params.distinguished_name.push(DnType::OrganizationName, *o);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.not_after = rcgen::date_time_ymd(2126, 1, 1);
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign a certificate")?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate pair `name` in `dir`, reissued when `sans` changed.
fn load_or_issue_serving(
    dir: &Path,
    name: &str,
    ca: &CertKey,
    common_name: &str,
    sans: &[String],
) -> Result<CertKey> {
    let sans_file = dir.join(format!("{name}.sans"));
    let wanted = sans.join(",");
    match (
        read_pair(dir, name)?,
        std::fs::read_to_string(&sans_file).ok(),
    ) {
        (Some(s), Some(old)) if old == wanted => Ok(s),
        _ => {
            let s = issue(ca, common_name, &[], sans, true)?;
            write_pair(dir, name, &s)?;
            write_private(&sans_file, &wanted)?;
            Ok(s)
        }
    }
}

/// A client certificate pair `name` in `dir` (CN `user`, O system:masters), created once.
fn load_or_issue_client(dir: &Path, name: &str, ca: &CertKey, user: &str) -> Result<CertKey> {
    match read_pair(dir, name)? {
        Some(a) => Ok(a),
        None => {
            let a = issue(ca, user, &["system:masters"], &[], false)?;
            write_pair(dir, name, &a)?;
            Ok(a)
        }
    }
}

/// Puts the cluster CA `ca` (received when joining a cluster) into `dir`, unless it is
/// there already; a different CA there is refused, never replaced.
pub fn adopt_ca(dir: &Path, ca: &CertKey) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    match read_pair(dir, "ca")? {
        Some(have) if have.cert_pem == ca.cert_pem => Ok(()),
        Some(_) => anyhow::bail!(
            "{} holds another cluster's CA: this data directory belongs to another cluster",
            dir.display()
        ),
        None => write_pair(dir, "ca", ca),
    }
}

impl Pki {
    /// Loads the certificates from `dir`, creating what is missing. The serving
    /// certificate is reissued when `sans` changed (e.g. a new node IP).
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca = match read_pair(dir, "ca")? {
            Some(ca) => ca,
            None => {
                let ca = new_ca()?;
                write_pair(dir, "ca", &ca)?;
                ca
            }
        };
        let serving = load_or_issue_serving(dir, "serving", &ca, "pikube-apiserver", sans)?;
        let admin = load_or_issue_client(dir, "admin", &ca, "system:admin")?;
        let kubelet_client =
            load_or_issue_client(dir, "apiserver-kubelet-client", &ca, KUBELET_CLIENT_USER)?;
        Ok(Pki {
            ca,
            serving,
            admin,
            kubelet_client,
        })
    }

    /// The serving certificate of a node agent's API (`agent-serving.*` in `dir`), valid
    /// for the node's name and IPs; reissued when they change.
    pub fn agent_serving(&self, dir: &Path, sans: &[String]) -> Result<CertKey> {
        load_or_issue_serving(dir, "agent-serving", &self.ca, "pikube-agent", sans)
    }

    /// The certificates of a joining node, as kubelets have them: its client certificate
    /// and its agent API's serving certificate for `sans`, both `system:node:<name>` in
    /// `system:nodes`. The caller checks `sans` (see `join::serving`).
    pub fn node_certs(&self, node: &str, sans: &[String]) -> Result<(CertKey, CertKey)> {
        let user = format!("system:node:{node}");
        let client = issue(&self.ca, &user, &["system:nodes"], &[], false)?;
        let serving = issue(&self.ca, &user, &["system:nodes"], sans, true)?;
        Ok((client, serving))
    }

    /// Issues a client certificate for `user` in `groups`, signed by the cluster CA.
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertKey> {
        issue(&self.ca, user, groups, &[], false)
    }
}

/// A kubeconfig with one cluster, one user (client certificate) and one context.
pub fn kubeconfig(server_url: &str, ca_pem: &str, client: &CertKey) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: default\n  context:\n    cluster: default\n    user: default\ncurrent-context: default\n",
        b64(ca_pem),
        b64(&client.cert_pem),
        b64(&client.key_pem)
    )
}

/// Writes a kubeconfig file with the given mode (0600 by default: it holds a key).
/// Writes a file only its owner may read (mode 0600), atomically; creates its directory.
pub fn write_secret(path: &Path, contents: &str) -> Result<()> {
    write_kubeconfig(path, 0o600, contents).map(|_| ())
}

pub fn write_kubeconfig(path: &Path, mode: u32, contents: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_private(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let sans = serving_sans(
            "pi1",
            &["192.0.2.7".parse().unwrap()],
            "cluster.local",
            "10.43.0.1".parse().unwrap(),
        );
        assert!(sans.contains(&"kubernetes.default.svc.cluster.local".to_string()));
        let a = Pki::load_or_create(dir.path(), &sans).unwrap();
        let b = Pki::load_or_create(dir.path(), &sans).unwrap();
        assert_eq!(a.ca.cert_pem, b.ca.cert_pem);
        assert_eq!(a.serving.cert_pem, b.serving.cert_pem);
        assert_eq!(a.admin.cert_pem, b.admin.cert_pem);
        assert_eq!(a.kubelet_client.cert_pem, b.kubelet_client.cert_pem);
        let agent = a.agent_serving(dir.path(), &["node1".into()]).unwrap();
        let again = b.agent_serving(dir.path(), &["node1".into()]).unwrap();
        assert_eq!(agent.cert_pem, again.cert_pem);
        // A new SAN reissues the serving certificate only.
        let mut more = sans.clone();
        more.push("pi1.example".into());
        let c = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_eq!(a.ca.cert_pem, c.ca.cert_pem);
        assert_ne!(a.serving.cert_pem, c.serving.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn half_a_pair_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
        let err = Pki::load_or_create(dir.path(), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("half"), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ca.crt")).unwrap(),
            "x"
        );
    }
}
