//! Service-account tokens: the cluster's signing key (ES256, generated once under the
//! server's TLS directory and handed to joining servers with the CA), JWTs with the claims
//! kube-apiserver puts in them, their verification, and the `TokenRequest` subresource
//! (`POST .../serviceaccounts/<name>/token`, what `kubectl create token` and the kubelet
//! call). A token stays valid only while its service account (and the pod it is bound
//! to) is the same object it was issued for.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use pikube_raft::Store;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;

use super::objects::meta_str;
use super::resources;
use super::rest::{self, Target};
use super::status::ApiError;

/// How far the clocks of the servers of a cluster may differ for a token to count.
const LEEWAY_SECS: i64 = 60;
/// The issuer (and default audience) of every token, as kube-apiserver's default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// File of the signing key in the server's TLS directory (PKCS#8 PEM, mode 0600).
pub const KEY_FILE: &str = "service-account.key";
/// Lifetime of a requested token when the request names none (kube-apiserver's).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// Shortest lifetime a TokenRequest may ask for (kube-apiserver's).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Longest lifetime a TokenRequest gets: longer requests are cut to it.
pub const MAX_EXPIRATION_SECONDS: i64 = 48 * 3600;

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts with JSON header and claims.
    #[error("malformed token")]
    Malformed,
    /// Not signed with ES256 by this cluster's key.
    #[error("invalid signature")]
    BadSignature,
    /// Past its `exp`, or before its `nbf`.
    #[error("token is expired or not yet valid")]
    Expired,
    /// Another issuer, or no audience of this API server.
    #[error("token is for another issuer or audience")]
    WrongAudience,
    /// A key that cannot be read or used.
    #[error("service account key: {0}")]
    Key(String),
}

/// `name` and `uid` of an object a token names.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectClaim {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The `kubernetes.io` claim: whose token it is and what it is bound to.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KubernetesClaim {
    /// Namespace of the service account.
    pub namespace: String,
    /// The service account.
    pub serviceaccount: ObjectClaim,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectClaim>,
}

/// The claims of a service-account token, as kube-apiserver writes them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Issuer.
    pub iss: String,
    /// Unique id of this token.
    #[serde(default)]
    pub jti: String,
    /// Not before.
    pub nbf: i64,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Namespace, service account and bound pod.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

impl Claims {
    /// Claims for service account `sa` of `namespace`, optionally bound to `pod`, valid
    /// from `now` for `seconds`.
    pub fn new(
        namespace: &str,
        sa: ObjectClaim,
        pod: Option<ObjectClaim>,
        audiences: Vec<String>,
        now: i64,
        seconds: i64,
    ) -> Claims {
        Claims {
            aud: audiences,
            exp: now + seconds,
            iat: now,
            iss: ISSUER.into(),
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            sub: format!("system:serviceaccount:{namespace}:{}", sa.name),
            kubernetes: KubernetesClaim {
                namespace: namespace.into(),
                serviceaccount: sa,
                pod,
            },
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The cluster's token signing key (ECDSA P-256).
pub struct SigningKey {
    pair: EcdsaKeyPair,
    pem: String,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish()
    }
}

impl SigningKey {
    /// A new random key.
    pub fn generate() -> Result<SigningKey, TokenError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| TokenError::Key("cannot generate a key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    fn from_pkcs8(der: &[u8]) -> Result<SigningKey, TokenError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| TokenError::Key(format!("not a P-256 PKCS#8 key: {e}")))?;
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        let b64 = STANDARD.encode(der);
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        let kid = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(pair.public_key().as_ref()));
        Ok(SigningKey { pair, pem, kid })
    }

    /// The key from its PEM (PKCS#8 `PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<SigningKey, TokenError> {
        let b64: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(b64)
            .map_err(|e| TokenError::Key(format!("bad PEM: {e}")))?;
        Self::from_pkcs8(&der)
    }

    /// The key in `dir`, created there on first use.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<SigningKey> {
        use anyhow::Context;
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => Ok(Self::from_pem(&pem).with_context(|| path.display().to_string())?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                crate::pki::write_secret(&path, &key.pem)?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes this key (one received from the cluster) into `dir`.
    pub fn store(&self, dir: &Path) -> anyhow::Result<()> {
        crate::pki::write_secret(&dir.join(KEY_FILE), &self.pem)
    }

    /// The key as PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A signed JWT carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let body = serde_json::to_vec(claims).map_err(|e| TokenError::Key(e.to_string()))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(body)
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }

    /// The claims of `token` when this key signed it, it is valid at `now`, and it is
    /// meant for this API server.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Malformed);
        let header: Value =
            serde_json::from_slice(&decode(h)?).map_err(|_| TokenError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::BadSignature);
        }
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.pair.public_key().as_ref(),
        );
        public
            .verify(&token.as_bytes()[..h.len() + 1 + c.len()], &decode(s)?)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims =
            serde_json::from_slice(&decode(c)?).map_err(|_| TokenError::Malformed)?;
        // A minute of leeway for clocks of other servers (as Kubernetes' JWT checks).
        if now >= claims.exp + LEEWAY_SECS || now + LEEWAY_SECS < claims.nbf {
            return Err(TokenError::Expired);
        }
        if claims.iss != ISSUER || !claims.aud.iter().any(|a| a == ISSUER) {
            return Err(TokenError::WrongAudience);
        }
        Ok(claims)
    }
}

fn target(plural: &str, namespace: &str) -> Result<Target, ApiError> {
    let def = resources::lookup("", "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("no resource {plural}")))?;
    Ok(Target {
        def,
        namespace: Some(namespace.into()),
        name: None,
        subresource: None,
    })
}

/// The core/v1 object `plural/name` of `namespace` when it exists; None when it does not.
pub async fn find(
    store: &Store,
    plural: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Value>, ApiError> {
    match rest::get(store, &target(plural, namespace)?, name).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the service account (and pod) `claims` names still exist as the objects the
/// token was issued for: a deleted or re-created one invalidates its tokens.
pub async fn still_bound(store: &Store, claims: &KubernetesClaim) -> Result<bool, ApiError> {
    let same =
        |obj: Option<Value>, uid: &str| obj.is_some_and(|o| meta_str(&o, "uid") == Some(uid));
    let sa = &claims.serviceaccount;
    if !same(
        find(store, "serviceaccounts", &claims.namespace, &sa.name).await?,
        &sa.uid,
    ) {
        return Ok(false);
    }
    match &claims.pod {
        Some(p) => Ok(same(
            find(store, "pods", &claims.namespace, &p.name).await?,
            &p.uid,
        )),
        None => Ok(true),
    }
}

/// The strings of a request's `audiences` list (none when it is missing or not a list).
pub fn audiences(list: Option<&Value>) -> Vec<String> {
    crate::api::objects::strings(list)
}

/// Serves `POST .../serviceaccounts/<name>/token`: a token for that service account,
/// bound to the pod the request's `boundObjectRef` names; the TokenRequest with its
/// `status` filled in.
pub async fn token_request(
    store: &Store,
    key: &SigningKey,
    namespace: &str,
    name: &str,
    mut body: Value,
) -> Result<Value, ApiError> {
    let sa = find(store, "serviceaccounts", namespace, name)
        .await?
        .ok_or_else(|| ApiError::not_found("serviceaccounts", "", name))?;
    let spec = match body.get("spec") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "json: cannot unmarshal {other} into Go struct field TokenRequest.spec of type v1.TokenRequestSpec"
            )))
        }
    };
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
    if seconds < MIN_EXPIRATION_SECONDS {
        return Err(ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            name,
            vec![(
                "spec.expirationSeconds".into(),
                format!("may not specify a duration less than {MIN_EXPIRATION_SECONDS} seconds"),
            )],
        ));
    }
    let seconds = seconds.min(MAX_EXPIRATION_SECONDS);
    let mut audiences = audiences(spec.get("audiences"));
    if audiences.is_empty() {
        audiences.push(ISSUER.into());
    }
    let pod = match spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        None => None,
        Some(r) => Some(bound_pod(store, namespace, r).await?),
    };
    let sa_claim = ObjectClaim {
        name: name.into(),
        uid: meta_str(&sa, "uid").unwrap_or_default().into(),
    };
    let now = now();
    let claims = Claims::new(namespace, sa_claim, pod, audiences.clone(), now, seconds);
    let token = key
        .issue(&claims)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires = chrono::DateTime::from_timestamp(claims.exp, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut spec = spec;
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenRequest");
    if !body.get("metadata").is_some_and(Value::is_object) {
        body["metadata"] = json!({});
    }
    body["metadata"]["name"] = json!(name);
    body["metadata"]["namespace"] = json!(namespace);
    body["spec"] = spec;
    body["status"] = json!({"token": token, "expirationTimestamp": expires});
    Ok(body)
}

/// The pod a `boundObjectRef` names, checked to exist with the given uid.
async fn bound_pod(store: &Store, namespace: &str, r: &Value) -> Result<ObjectClaim, ApiError> {
    let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("");
    let bad = |m: String| {
        ApiError::invalid(
            "TokenRequest",
            "authentication.k8s.io",
            field("name"),
            vec![("spec.boundObjectRef".into(), m)],
        )
    };
    if field("kind") != "Pod" || !matches!(field("apiVersion"), "" | "v1") {
        return Err(bad(format!(
            "unsupported kind {:?}: tokens bind to Pods only",
            field("kind")
        )));
    }
    let pod = find(store, "pods", namespace, field("name"))
        .await?
        .ok_or_else(|| ApiError::not_found("pods", "", field("name")))?;
    let uid = meta_str(&pod, "uid").unwrap_or_default();
    if !field("uid").is_empty() && field("uid") != uid {
        return Err(ApiError::conflict("pods", "", field("name")));
    }
    Ok(ObjectClaim {
        name: field("name").into(),
        uid: uid.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64, aud: &str) -> Claims {
        let sa = ObjectClaim {
            name: "default".into(),
            uid: "u1".into(),
        };
        let pod = ObjectClaim {
            name: "p".into(),
            uid: "u2".into(),
        };
        Claims::new("ns", sa, Some(pod), vec![aud.into()], now, 600)
    }

    #[test]
    fn issued_tokens_verify_with_their_claims() {
        let key = SigningKey::generate().unwrap();
        let c = claims(1_000_000, ISSUER);
        let token = key.issue(&c).unwrap();
        assert_eq!(key.verify(&token, 1_000_100).unwrap(), c);
        assert_eq!(c.sub, "system:serviceaccount:ns:default");
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "ES256");
        let body: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(body["kubernetes.io"]["pod"]["uid"], "u2");
        assert_eq!(body["kubernetes.io"]["serviceaccount"]["name"], "default");
    }

    #[test]
    fn expired_foreign_tampered_and_garbage_tokens_are_refused() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let c = claims(1_000_000, ISSUER);
        let token = key.issue(&c).unwrap();
        // A minute of clock leeway on either side, then refused.
        assert!(key.verify(&token, 1_000_659).is_ok());
        assert_eq!(key.verify(&token, 1_000_660), Err(TokenError::Expired));
        assert!(key.verify(&token, 999_940).is_ok());
        assert_eq!(key.verify(&token, 999_939), Err(TokenError::Expired));
        assert_eq!(
            other.verify(&token, 1_000_001),
            Err(TokenError::BadSignature)
        );
        let mut forged = c.clone();
        forged.kubernetes.namespace = "kube-system".into();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!("{}.{forged_body}.{}", parts[0], parts[2]);
        assert_eq!(
            key.verify(&tampered, 1_000_001),
            Err(TokenError::BadSignature)
        );
        let foreign = key.issue(&claims(1_000_000, "vault")).unwrap();
        assert_eq!(
            key.verify(&foreign, 1_000_001),
            Err(TokenError::WrongAudience)
        );
        for junk in ["", "a.b", "a.b.c", "....", "x.y.z.w", "é.é.é"] {
            assert!(key.verify(junk, 1_000_001).is_err(), "{junk:?}");
        }
    }

    #[tokio::test]
    async fn token_requests_with_odd_bodies_are_client_errors() {
        let test = crate::controllers::client::TestApi::start().await;
        let key = SigningKey::generate().unwrap();
        let sa: k8s_openapi::api::core::v1::ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        kube::Api::namespaced(test.client("admin"), "default")
            .create(&Default::default(), &sa)
            .await
            .unwrap();
        let ask = |body: Value| token_request(&test.store, &key, "default", "default", body);
        for (body, code) in [
            (json!({"spec": "x"}), 400),
            (json!({"spec": {"expirationSeconds": 60}}), 422),
            (json!({"spec": {"boundObjectRef": 7}}), 422),
            (
                json!({"spec": {"boundObjectRef": {"kind": "Secret", "name": "s"}}}),
                422,
            ),
            (
                json!({"spec": {"boundObjectRef": {"kind": "Pod", "name": "gone"}}}),
                404,
            ),
        ] {
            let err = ask(body.clone()).await.unwrap_err();
            assert_eq!(err.code, code, "{body}: {}", err.message);
        }
        for body in [
            json!({"metadata": 3, "spec": {"audiences": 5, "expirationSeconds": "x"}}),
            json!({"spec": {"expirationSeconds": 1_000_000_000}}),
        ] {
            let answer = ask(body.clone()).await.unwrap();
            let token = answer["status"]["token"].as_str().unwrap();
            let claims = key.verify(token, now()).unwrap();
            assert!(claims.exp - claims.iat <= MAX_EXPIRATION_SECONDS, "{body}");
        }
        let err = token_request(&test.store, &key, "default", "nobody", json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.code, 404);
        test.shutdown().await;
    }

    #[test]
    fn keys_survive_their_pem_and_are_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load_or_create(dir.path()).unwrap();
        let again = SigningKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.pem(), again.pem());
        let token = key.issue(&claims(1_000_000, ISSUER)).unwrap();
        assert!(again.verify(&token, 1_000_001).is_ok());
        assert!(SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n").is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
