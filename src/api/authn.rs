//! Bearer-token authentication: static tokens from a file, in kube-apiserver's
//! `--token-auth-file` format (one `token,user,uid[,"group1,group2"]` per line), and
//! service-account JWTs signed with the cluster's key.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use pikube_raft::Store;

use anyhow::{bail, Context, Result};

use super::router::Identity;
use serde_json::{json, Value};

use super::resources::ResourceDef;
use super::service_account_tokens::{self, SigningKey, ISSUER};
use super::status::ApiError;

/// The tokens a server accepts, each mapped to who presents it.
#[derive(Clone, Debug, Default)]
pub struct Tokens(HashMap<String, Identity>);

impl Tokens {
    /// Reads a token file; a malformed line is an error naming the line.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses the token file format.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut tokens = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(4, ',');
            let (Some(token), Some(user), Some(_uid)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("line {}: expected token,user,uid[,groups]", n + 1);
            };
            if token.is_empty() || user.is_empty() {
                bail!("line {}: token and user must not be empty", n + 1);
            }
            let groups = parts
                .next()
                .map(|g| {
                    g.trim()
                        .trim_matches('"')
                        .split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if tokens
                .insert(
                    token.to_string(),
                    Identity {
                        user: user.to_string(),
                        groups,
                        ..Default::default()
                    },
                )
                .is_some()
            {
                bail!("line {}: duplicate token", n + 1);
            }
        }
        Ok(Tokens(tokens))
    }

    /// Who an `Authorization` header value (`Bearer <token>`) identifies.
    pub fn authenticate(&self, authorization: &str) -> Option<Identity> {
        self.0.get(bearer(authorization)?).cloned()
    }
}

/// Who a bearer token identifies: a static token, or a service-account token that is
/// validly signed, unexpired and still bound to existing objects.
#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Tokens,
    service_accounts: Option<(Arc<SigningKey>, Store)>,
}

impl Authenticator {
    /// Static tokens only.
    pub fn new(tokens: Tokens) -> Self {
        Authenticator {
            tokens,
            service_accounts: None,
        }
    }

    /// Also service-account tokens signed with `key`, checked against `store`.
    pub fn with_service_accounts(mut self, key: Arc<SigningKey>, store: Store) -> Self {
        self.service_accounts = Some((key, store));
        self
    }

    /// Who an `Authorization` header value (`Bearer <token>`) identifies.
    pub async fn authenticate(&self, authorization: &str) -> Option<Identity> {
        if let Some(id) = self.tokens.authenticate(authorization) {
            return Some(id);
        }
        let (key, store) = self.service_accounts.as_ref()?;
        let token = bearer(authorization)?;
        let claims = match key.verify(token, service_account_tokens::now()) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "bearer token refused");
                return None;
            }
        };
        match service_account_tokens::still_bound(store, &claims.kubernetes).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(sub = %claims.sub, "token of a deleted service account or pod");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e.message, "cannot check a service-account token");
                return None;
            }
        }
        let k = &claims.kubernetes;
        let mut extra = BTreeMap::new();
        extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", claims.jti)],
        );
        if let Some(pod) = &k.pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        Some(Identity {
            user: claims.sub.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", k.namespace),
                "system:authenticated".into(),
            ],
            uid: k.serviceaccount.uid.clone(),
            extra,
        })
    }
}

/// Answers a TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`): who
/// `spec.token` identifies, for webhooks and proxies that check their callers' tokens.
/// Service-account tokens are reviewed for the API server's own audience only.
pub async fn token_review(
    auth: Option<&Authenticator>,
    def: &ResourceDef,
    mut body: Value,
) -> Result<Value, ApiError> {
    super::objects::check_type(def, &mut body)?;
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let audiences = service_account_tokens::audiences(body.pointer("/spec/audiences"));
    let own_audience = audiences.is_empty() || audiences.iter().any(|a| a == ISSUER);
    let identity = match auth {
        Some(auth) if !token.is_empty() && own_audience => {
            auth.authenticate(&format!("Bearer {token}")).await
        }
        _ => None,
    };
    body["status"] = match identity {
        Some(id) => json!({
            "authenticated": true,
            "user": super::reviews::user_info(&id),
            "audiences": [ISSUER],
        }),
        None if !own_audience => json!({
            "authenticated": false,
            "error": format!("token audiences {audiences:?} are not served by this API server"),
        }),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let meta = super::objects::child_map(&mut body, "metadata");
    meta.entry("creationTimestamp").or_insert(Value::Null);
    Ok(body)
}

fn bearer(authorization: &str) -> Option<&str> {
    authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_format() {
        let t =
            Tokens::parse("# comment\nabc,alice,1,\"system:masters,devs\"\nxyz,bob,2\n").unwrap();
        let alice = t.authenticate("Bearer abc").unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["system:masters", "devs"]);
        assert_eq!(
            t.authenticate("Bearer xyz").unwrap().groups,
            Vec::<String>::new()
        );
        assert!(t.authenticate("Bearer nope").is_none());
        assert!(t.authenticate("Basic abc").is_none());
        assert!(Tokens::parse("onlytoken\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(Tokens::parse("a,b,1\na,c,2\n")
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
    }

    #[tokio::test]
    async fn service_account_tokens_authenticate_while_their_account_exists() {
        use serde_json::json;
        let test = crate::controllers::client::TestApi::start().await;
        let key = Arc::new(SigningKey::generate().unwrap());
        let client = test.client("admin");
        let sa: k8s_openapi::api::core::v1::ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "robot"}})).unwrap();
        let sas = kube::Api::namespaced(client, "default");
        sas.create(&Default::default(), &sa).await.unwrap();
        let issued = service_account_tokens::token_request(
            &test.store,
            &key,
            "default",
            "robot",
            json!({"spec": {}}),
        )
        .await
        .unwrap();
        let header = format!("Bearer {}", issued["status"]["token"].as_str().unwrap());
        let static_only = Authenticator::new(Tokens::default());
        assert!(static_only.authenticate(&header).await.is_none());
        let auth = static_only.with_service_accounts(key, test.store.clone());
        let id = auth.authenticate(&header).await.unwrap();
        assert_eq!(id.user, "system:serviceaccount:default:robot");
        assert_eq!(
            id.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:default",
                "system:authenticated"
            ]
        );
        assert!(id
            .extra
            .contains_key("authentication.kubernetes.io/credential-id"));
        assert!(!id
            .extra
            .contains_key("authentication.kubernetes.io/pod-name"));
        assert!(!id.uid.is_empty());
        assert!(auth.authenticate("Bearer x.y.z").await.is_none());
        sas.delete("robot", &Default::default()).await.unwrap();
        assert!(auth.authenticate(&header).await.is_none());
        test.shutdown().await;
    }
}
