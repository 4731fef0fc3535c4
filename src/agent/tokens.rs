//! Service-account tokens of projected volumes, as the kubelet's token manager keeps
//! them: requested through TokenRequest bound to the pod, cached, and requested anew once
//! 80 % of their lifetime has passed, so the file in the pod is always a valid token.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};

use super::env::ConfigError;

/// Lifetime asked for when a projection names none (the API's default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

struct Cached {
    token: String,
    refresh_at: Instant,
}

/// The tokens this node holds for its pods' projected volumes.
#[derive(Default)]
pub struct ProjectedTokens {
    cache: std::sync::Mutex<HashMap<String, Cached>>,
}

/// When a token issued at `issued` and valid for `lifetime` is requested again: after
/// 80 % of its lifetime (the kubelet's rule).
pub fn refresh_at(issued: Instant, lifetime: Duration) -> Instant {
    issued + lifetime.mul_f64(0.8)
}

impl ProjectedTokens {
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
        let now = Instant::now();
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
        let source = ServiceAccountTokenProjection {
            expiration_seconds: Some(3607),
            path: "token".into(),
            audience: None,
        };
        let tokens = ProjectedTokens::default();
        let first = tokens.token(&client, &pod, &source).await.unwrap();
        assert_eq!(tokens.token(&client, &pod, &source).await.unwrap(), first);
        let claims = key.verify(&first, now()).unwrap();
        assert_eq!(claims.exp - claims.iat, 3607);
        let bound = claims.kubernetes.pod.unwrap();
        assert_eq!((bound.name.as_str(), Some(bound.uid)), ("p", pod.uid()));
        // Past its refresh time, a new token replaces it.
        for c in tokens.cache().values_mut() {
            c.refresh_at = Instant::now();
        }
        let second = tokens.token(&client, &pod, &source).await.unwrap();
        assert_ne!(second, first);
        assert!(key.verify(&second, now()).is_ok());
        tokens.forget(&pod.uid().unwrap());
        assert!(tokens.cache().is_empty());
        // No token for a pod of another uid.
        let mut stranger = pod.clone();
        stranger.metadata.uid = Some("not-the-pod".into());
        assert!(tokens.token(&client, &stranger, &source).await.is_err());
        test.shutdown().await;
    }

    #[test]
    fn tokens_are_renewed_after_four_fifths_of_their_life() {
        let t0 = Instant::now();
        assert_eq!(
            refresh_at(t0, Duration::from_secs(3607)) - t0,
            Duration::from_secs_f64(2885.6)
        );
        assert_eq!(refresh_at(t0, Duration::ZERO), t0);
    }
}
