//! Service-account tokens of projected volumes, as the kubelet's token manager keeps
//! them: requested through TokenRequest bound to the pod, cached, and requested anew
//! before 80 % of their lifetime (and at most 24 h) has passed, so the file in the pod
//! is always a valid token. The pod worker rewrites the pod's volumes at every resync
//! (at most 10 s apart), so a token is renewed at least that much before its 80 % mark.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use super::env::ConfigError;

/// Lifetime asked for when a projection names none (the API's default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The oldest a token gets before it is renewed, whatever its lifetime (kubelet's
/// maxTTL).
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How much earlier than its 80 % mark a token is renewed: the longest gap between two
/// syncs of a pod (the pod worker's resync), so the file is new before the mark.
const MARGIN: Duration = Duration::from_secs(10);

struct Cached {
    token: String,
    refresh_at: Instant,
}

/// What tokens are aged by (tests move it).
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The tokens this node holds for its pods' projected volumes.
pub struct ProjectedTokens {
    cache: std::sync::Mutex<HashMap<String, Cached>>,
    clock: Clock,
}

impl Default for ProjectedTokens {
    fn default() -> ProjectedTokens {
        ProjectedTokens::with_clock(Arc::new(Instant::now))
    }
}

/// When a token issued at `issued` and valid for `lifetime` is requested again: before
/// 80 % of its lifetime (the kubelet's rule) by [`MARGIN`], and within 24 h.
pub fn refresh_at(issued: Instant, lifetime: Duration) -> Instant {
    issued + lifetime.mul_f64(0.8).min(MAX_AGE).saturating_sub(MARGIN)
}

impl ProjectedTokens {
    /// Tokens aged by `clock`.
    pub fn with_clock(clock: Clock) -> ProjectedTokens {
        ProjectedTokens {
            cache: Default::default(),
            clock,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token `source` asks for in `pod`: the cached one while it is fresh, else a new
    /// one from the API server, bound to the pod.
    pub async fn token(
        &self,
        client: &Client,
        pod: &Pod,
        source: &ServiceAccountTokenProjection,
    ) -> Result<String, ConfigError> {
        let uid = pod.uid().unwrap_or_default();
        let sa = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let seconds = source
            .expiration_seconds
            .unwrap_or(DEFAULT_EXPIRATION_SECONDS);
        let audience = source.audience.clone().unwrap_or_default();
        let key = format!("{uid}/{sa}/{audience}/{seconds}");
        let now = (self.clock)();
        if let Some(c) = self.cache().get(&key).filter(|c| now < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: if audience.is_empty() {
                    vec![]
                } else {
                    vec![audience]
                },
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    uid: Some(uid.clone()),
                }),
            },
            ..Default::default()
        };
        let ns = pod.namespace().unwrap_or_default();
        let answer = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .create_token_request(&sa, &PostParams::default(), &request)
            .await
            .map_err(|e| {
                ConfigError(format!(
                    "cannot get a token for service account {ns}/{sa}: {e}"
                ))
            })?;
        let status = answer
            .status
            .ok_or_else(|| ConfigError("TokenRequest answered without a token".into()))?;
        let left = status.expiration_timestamp.0.as_second() - Timestamp::now().as_second();
        let lifetime = Duration::from_secs(left.max(0) as u64);
        self.cache().insert(
            key,
            Cached {
                token: status.token.clone(),
                refresh_at: refresh_at(now, lifetime),
            },
        );
        Ok(status.token)
    }

    /// Drops the tokens of pod `uid` (a pod that is gone).
    pub fn forget(&self, uid: &str) {
        let prefix = format!("{uid}/");
        self.cache().retain(|k, _| !k.starts_with(&prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_bound_to_the_pod_cached_and_renewed() {
        use crate::api::service_account_tokens::{now, SigningKey};
        use kube::api::ObjectMeta;
        let test = crate::controllers::client::TestApi::start().await;
        let key = std::sync::Arc::new(SigningKey::generate().unwrap());
        let api = test.api.clone().with_service_account_key(key.clone());
        let client = crate::controllers::client::in_process(&api, "system:node:n1", &[]);
        let meta = |name: &str| ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        };
        Api::<ServiceAccount>::namespaced(client.clone(), "default")
            .create(
                &PostParams::default(),
                &ServiceAccount {
                    metadata: meta("default"),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }))
        .unwrap();
        let pod = Api::<Pod>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
        // The shortest lifetime the API allows, on a clock the test moves.
        let source = ServiceAccountTokenProjection {
            expiration_seconds: Some(600),
            path: "token".into(),
            audience: None,
        };
        let t0 = Instant::now();
        let elapsed = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let clock = elapsed.clone();
        let tokens = ProjectedTokens::with_clock(Arc::new(move || t0 + *clock.lock().unwrap()));
        // The pod's projected volume, written as the pod worker does at each sync.
        let volume: k8s_openapi::api::core::v1::Volume =
            serde_json::from_value(serde_json::json!({
                "name": "kube-api-access",
                "projected": {"sources": [{"serviceAccountToken": source}]},
            }))
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ctx = crate::agent::env::EnvContext {
            client: &client,
            host_ip: "127.0.0.1",
            pod_ip: "10.42.0.5",
            node_cpu_millis: 1000,
            node_memory: 1 << 30,
            tokens: &tokens,
        };
        let file_at = |secs: u64| {
            *elapsed.lock().unwrap() = Duration::from_secs(secs);
            let (ctx, pod, dir, volume) = (&ctx, &pod, dir.path(), &volume);
            async move {
                let path = crate::agent::volumes::prepare(ctx, pod, dir, volume)
                    .await
                    .unwrap();
                std::fs::read_to_string(path.join("token")).unwrap()
            }
        };
        let first = file_at(0).await;
        let claims = key.verify(&first, now()).unwrap();
        assert_eq!(claims.exp - claims.iat, 600);
        let bound = claims.kubernetes.pod.unwrap();
        assert_eq!((bound.name.as_str(), Some(bound.uid)), ("p", pod.uid()));
        // Cached while young; renewed (and the file rewritten) before 80 % of its 600 s,
        // by the gap between two syncs.
        assert_eq!(file_at(1).await, first);
        assert_eq!(file_at(469).await, first);
        let second = file_at(471).await;
        assert_ne!(second, first);
        assert!(key.verify(&second, now()).is_ok());
        assert_eq!(file_at(480).await, second);
        tokens.forget(&pod.uid().unwrap());
        assert!(tokens.cache().is_empty());
        // No token for a pod of another uid.
        let mut stranger = pod.clone();
        stranger.metadata.uid = Some("not-the-pod".into());
        assert!(tokens.token(&client, &stranger, &source).await.is_err());
        test.shutdown().await;
    }

    #[test]
    fn tokens_are_renewed_before_four_fifths_of_their_life() {
        let t0 = Instant::now();
        assert_eq!(
            refresh_at(t0, Duration::from_secs(3607)) - t0,
            Duration::from_secs_f64(2875.6)
        );
        assert_eq!(
            refresh_at(t0, Duration::from_secs(48 * 3600)) - t0,
            MAX_AGE - MARGIN
        );
        assert_eq!(refresh_at(t0, Duration::ZERO), t0);
    }
}
