//! Images for containers: `imagePullPolicy` with its defaults, pulls through CRI with
//! credentials from `imagePullSecrets`, and the waiting reasons kubectl users know
//! (ErrImagePull, ImagePullBackOff, ErrImageNeverPull).

use base64::Engine;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::{Api, Client, ResourceExt};
use pikube_runtime::cri::{v1 as cri, Cri};
use serde_json::Value;

use super::status::Waiting;

/// The pull policy of a container: as given, or Always for `:latest` and untagged
/// images, IfNotPresent otherwise (the API server's defaulting).
pub fn pull_policy(c: &Container) -> String {
    if let Some(p) = c.image_pull_policy.as_deref().filter(|p| !p.is_empty()) {
        return p.to_string();
    }
    let image = c.image.as_deref().unwrap_or("");
    if image.contains('@') {
        return "IfNotPresent".into();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent".into(),
        _ => "Always".into(),
    }
}

/// The registry host of an image reference (`docker.io` when none is named).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Credentials for `registry` from a `.dockerconfigjson` document.
fn auth_from_docker_config(doc: &Value, registry: &str) -> Option<cri::AuthConfig> {
    let auths = doc.get("auths")?.as_object()?;
    let wanted = |key: &str| {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or("");
        host == registry
            || (registry == "docker.io"
                && (host == "index.docker.io" || host == "registry-1.docker.io"))
    };
    let (key, entry) = auths.iter().find(|(k, _)| wanted(k))?;
    let mut auth = cri::AuthConfig {
        server_address: key.clone(),
        username: entry
            .get("username")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        password: entry
            .get("password")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        auth: entry
            .get("auth")
            .and_then(Value::as_str)
            .unwrap_or("")
            .into(),
        ..Default::default()
    };
    if auth.username.is_empty() && !auth.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&auth.auth)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())?;
        let (u, p) = decoded.split_once(':')?;
        auth.username = u.to_string();
        auth.password = p.to_string();
    }
    Some(auth)
}

/// Credentials for `image` from the pod's `imagePullSecrets`, if any match its registry.
async fn pull_auth(client: &Client, pod: &Pod, image: &str) -> Option<cri::AuthConfig> {
    let ns = pod.namespace().unwrap_or_default();
    let api = Api::<Secret>::namespaced(client.clone(), &ns);
    let registry = registry_of(image);
    for r in pod
        .spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.clone())
        .unwrap_or_default()
    {
        let Ok(secret) = api.get(&r.name).await else {
            continue;
        };
        let data = secret.data.unwrap_or_default();
        let raw = data
            .get(".dockerconfigjson")
            .map(|b| b.0.clone())
            .or_else(|| {
                data.get(".dockercfg").map(|b| {
                    // The legacy format is the "auths" object on its own.
                    let inner: Value = serde_json::from_slice(&b.0).unwrap_or(Value::Null);
                    serde_json::to_vec(&serde_json::json!({ "auths": inner })).unwrap_or_default()
                })
            });
        let Some(doc) = raw.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) else {
            continue;
        };
        if let Some(auth) = auth_from_docker_config(&doc, registry) {
            return Some(auth);
        }
    }
    None
}

/// Outcome of making a container's image available.
pub enum Pull {
    /// The image is there: pulled now (taking this long), or already present (None).
    Ready(Option<std::time::Duration>),
    /// The container must wait, for this reason.
    Wait(Waiting),
    /// A pull was tried and failed: the caller starts the pull back-off.
    Failed(Waiting),
}

/// Makes the image of `c` available according to its pull policy; `backing_off` says the
/// pull back-off for this container has not run out.
pub async fn ensure(
    cri: &Cri,
    client: &Client,
    pod: &Pod,
    c: &Container,
    backing_off: bool,
) -> Pull {
    let image = c.image.clone().unwrap_or_default();
    if image.is_empty() {
        return Pull::Wait(Waiting {
            reason: "InvalidImageName".into(),
            message: "the container has no image".into(),
        });
    }
    let spec = cri::ImageSpec {
        image: image.clone(),
        ..Default::default()
    };
    let present = cri
        .images()
        .image_status(cri::ImageStatusRequest {
            image: Some(spec.clone()),
            verbose: false,
        })
        .await
        .map(|r| r.into_inner().image.is_some())
        .unwrap_or(false);
    let policy = pull_policy(c);
    if policy == "Never" {
        return if present {
            Pull::Ready(None)
        } else {
            Pull::Wait(Waiting {
                reason: "ErrImageNeverPull".into(),
                message: format!(
                    "Container image \"{image}\" is not present with pull policy of Never"
                ),
            })
        };
    }
    if present && policy == "IfNotPresent" {
        return Pull::Ready(None);
    }
    if backing_off {
        return Pull::Wait(Waiting {
            reason: "ImagePullBackOff".into(),
            message: format!("Back-off pulling image \"{image}\""),
        });
    }
    let auth = pull_auth(client, pod, &image).await;
    let started = std::time::Instant::now();
    match cri
        .images()
        .pull_image(cri::PullImageRequest {
            image: Some(spec),
            auth,
            sandbox_config: None,
        })
        .await
    {
        Ok(_) => {
            tracing::info!(%image, pod = %pod.name_any(), "pulled image");
            Pull::Ready(Some(started.elapsed()))
        }
        Err(status) => Pull::Failed(Waiting {
            reason: "ErrImagePull".into(),
            message: format!("failed to pull image \"{image}\": {}", status.message()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container(image: &str, policy: Option<&str>) -> Container {
        let mut c = json!({"name": "c", "image": image});
        if let Some(p) = policy {
            c["imagePullPolicy"] = json!(p);
        }
        serde_json::from_value(c).unwrap()
    }

    #[test]
    fn default_pull_policies() {
        assert_eq!(pull_policy(&container("busybox", None)), "Always");
        assert_eq!(pull_policy(&container("busybox:latest", None)), "Always");
        assert_eq!(
            pull_policy(&container("busybox:1.35", None)),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/app", None)),
            "Always"
        );
        assert_eq!(
            pull_policy(&container("localhost:5000/app:v1", None)),
            "IfNotPresent"
        );
        assert_eq!(
            pull_policy(&container("app@sha256:abc", None)),
            "IfNotPresent"
        );
        assert_eq!(pull_policy(&container("busybox", Some("Never"))), "Never");
    }

    #[test]
    fn registries_and_credentials() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("ghcr.io/x/y:1"), "ghcr.io");
        assert_eq!(registry_of("localhost/pause:3.9"), "localhost");
        let doc = json!({"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "ghcr.io": {"username": "me", "password": "pw"},
        }});
        let hub = auth_from_docker_config(&doc, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("user", "pass")
        );
        let gh = auth_from_docker_config(&doc, "ghcr.io").unwrap();
        assert_eq!(gh.username, "me");
        assert!(auth_from_docker_config(&doc, "quay.io").is_none());
    }
}
