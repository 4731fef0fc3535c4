//! Node passwords, as k3s has them: an agent generates a secret once and keeps it in its
//! data dir (`<data-dir>/agent/node-password`); the first join of a node name stores its
//! hash in the Secret `kube-system/<node>.node-password.pikube`, and a later join of that
//! name must present the same secret. So a join token does not let its holder take over
//! an existing node's name and credentials, while a node that joins again (a restart, a
//! lost `join.json`) still can.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// Namespace of the node password Secrets.
pub const NAMESPACE: &str = "kube-system";
/// Type of the node password Secrets.
pub const SECRET_TYPE: &str = "pikube.io/node-password";
/// Key of the password's hash in the Secret.
const HASH_KEY: &str = "hash";
/// The agent's file holding its node password.
pub const FILE: &str = "node-password";

/// Name of the Secret holding node `node`'s password hash.
pub fn secret_name(node: &str) -> String {
    format!("{node}.node-password.pikube")
}

/// sha256 of a password, hex. The passwords are 128-bit random values, so a plain hash
/// cannot be reversed by guessing.
pub fn hash(password: &str) -> String {
    crate::join::ca_hash(password)
}

/// Why a node password is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The name belongs to another node (a 409).
    #[error("{0}")]
    Taken(String),
    /// The request is malformed (a 400).
    #[error("{0}")]
    Invalid(String),
    /// The API could not be asked (a 503).
    #[error("cannot check the node password: {0}")]
    Unavailable(String),
}

/// How the operator frees the name `node` (one line).
fn how_to_free(node: &str) -> String {
    format!(
        "if that machine is gone, free the name with `kubectl delete node {node}; kubectl -n {NAMESPACE} delete secret {}`",
        secret_name(node)
    )
}

/// Checks `password` against the one stored for `node` in `stored`: the Secret, if any.
pub fn verify(node: &str, password: &str, stored: &Secret) -> Result<(), Refusal> {
    let have = stored
        .data
        .as_ref()
        .and_then(|d| d.get(HASH_KEY))
        .map(|b| b.0.as_slice())
        .unwrap_or_default();
    if crate::join::same(have, hash(password).as_bytes()) {
        Ok(())
    } else {
        Err(Refusal::Taken(format!(
            "node name {node:?} belongs to another machine (its node password differs): give this node another --node-name, or {}",
            how_to_free(node)
        )))
    }
}

/// The Secret that stores `password`'s hash for `node`.
fn to_secret(node: &str, password: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(node)),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(
            [(
                HASH_KEY.to_string(),
                ByteString(hash(password).into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

/// Lets node `node` join with `password`: the first join of the name stores it; later
/// ones must present the same. A Node that exists with no stored password (a server's own
/// node) is never handed out.
pub async fn ensure(client: &kube::Client, node: &str, password: &str) -> Result<(), Refusal> {
    if password.is_empty() {
        return Err(Refusal::Invalid(
            "the join request carries no node password (an agent older than this server?)".into(),
        ));
    }
    let name = secret_name(node);
    if !crate::api::objects::is_dns1123_subdomain(&name) {
        return Err(Refusal::Invalid(format!(
            "node name {node:?} is too long: its password Secret {name:?} would be no valid name"
        )));
    }
    let unavailable = |e: kube::Error| Refusal::Unavailable(e.to_string());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(stored) = secrets.get_opt(&name).await.map_err(unavailable)? {
        return verify(node, password, &stored);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(node).await.map_err(unavailable)?.is_some() {
        return Err(Refusal::Taken(format!(
            "node {node:?} exists and has no node password (a server's own node, or one that joined otherwise): give this node another --node-name, or {}",
            how_to_free(node)
        )));
    }
    match secrets
        .create(&PostParams::default(), &to_secret(node, password))
        .await
    {
        Ok(_) => Ok(()),
        // Two joins of one name at once: the first one stored wins.
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let stored = secrets.get(&name).await.map_err(unavailable)?;
            verify(node, password, &stored)
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// The agent's node password in `agent_dir`, generated (mode 0600) on first use.
pub fn load_or_create(agent_dir: &Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = agent_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => anyhow::bail!(
            "{} is empty: delete it, and the node's password Secret on the server, to start afresh",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let password = uuid::Uuid::new_v4().simple().to_string();
            crate::pki::write_secret(&path, &format!("{password}\n"))?;
            Ok(password)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_hash_admits_only_its_password() {
        let s = to_secret("pi2", "first");
        assert_eq!(s.metadata.name.as_deref(), Some("pi2.node-password.pikube"));
        assert_eq!(verify("pi2", "first", &s), Ok(()));
        let Err(Refusal::Taken(why)) = verify("pi2", "second", &s) else {
            panic!("another password is refused");
        };
        assert!(
            why.contains("kubectl -n kube-system delete secret pi2.node-password.pikube")
                && !why.contains('\n'),
            "{why}"
        );
        assert!(verify("pi2", "first", &Secret::default()).is_err());
    }

    #[test]
    fn an_agent_keeps_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(load_or_create(other.path()).unwrap(), first);
    }
}
