//! The ServiceAccount admission of new pods, as kube-apiserver's plugin does it: the
//! pod's service account defaults to `default`, and unless `automountServiceAccountToken`
//! is false (on the pod, else on its service account) the pod gets a projected
//! `kube-api-access-<random>` volume (a bound token, the cluster CA from the
//! `kube-root-ca.crt` ConfigMap, the namespace) mounted read-only at
//! [`MOUNT_PATH`] in every container, which is what in-cluster clients read.

use pikube_raft::Store;
use serde_json::{json, Value};

use super::objects::{child_map, generate_name, meta_str};
use super::service_account_tokens::find;
use super::status::ApiError;

/// Where in-cluster clients find the token, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime the kubelet asks for the projected token (kube-apiserver's 3607 s).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The ConfigMap with the cluster CA that every namespace has.
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// Admits a new pod: defaults its service account and adds the token volume; a pod
/// starts in phase Pending, as kube-apiserver's pod strategy sets it (`kubectl describe`
/// shows "Status: Pending" while it waits for a node).
pub async fn admit(store: &Store, pod: &mut Value) -> Result<(), ApiError> {
    if !pod.get("spec").is_some_and(Value::is_object) {
        return Ok(()); // validation reports it
    }
    let status = child_map(pod, "status");
    if !status.get("phase").is_some_and(Value::is_string) {
        status.insert("phase".into(), json!("Pending"));
    }
    let mirror = pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some();
    let ns = meta_str(pod, "namespace").unwrap_or("default").to_string();
    let spec = child_map(pod, "spec");
    let name = [spec.get("serviceAccountName"), spec.get("serviceAccount")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .find(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec.insert("serviceAccountName".into(), json!(name));
    spec.insert("serviceAccount".into(), json!(name));
    if mirror {
        return Ok(());
    }
    let automount = match spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
    {
        Some(a) => a,
        None => find(store, "serviceaccounts", &ns, &name)
            .await?
            .and_then(|sa| {
                sa.get("automountServiceAccountToken")
                    .and_then(Value::as_bool)
            })
            .unwrap_or(true),
    };
    if automount {
        add_token_volume(spec);
    }
    Ok(())
}

fn containers_mut(
    spec: &mut serde_json::Map<String, Value>,
) -> impl Iterator<Item = &mut serde_json::Map<String, Value>> {
    spec.iter_mut()
        .filter(|(k, _)| *k == "initContainers" || *k == "containers")
        .filter_map(|(_, v)| v.as_array_mut())
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// Adds the projected token volume and its mounts, unless a container already mounts
/// something at [`MOUNT_PATH`] (the pod brings its own credentials).
fn add_token_volume(spec: &mut serde_json::Map<String, Value>) {
    let mounts_own = containers_mut(spec).any(|c| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == MOUNT_PATH))
    });
    if mounts_own {
        return;
    }
    let volume = generate_name("kube-api-access-");
    for c in containers_mut(spec) {
        let mounts = c.entry("volumeMounts").or_insert_with(|| json!([]));
        if let Some(list) = mounts.as_array_mut() {
            list.push(json!({"name": volume, "readOnly": true, "mountPath": MOUNT_PATH}));
        }
    }
    let volumes = spec.entry("volumes").or_insert_with(|| json!([]));
    if let Some(list) = volumes.as_array_mut() {
        list.push(json!({
            "name": volume,
            "projected": {
                "defaultMode": 0o644,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                    {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_container_mounts_one_token_volume() {
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [{"name": "a", "image": "x", "volumeMounts": [{"name": "v", "mountPath": "/v"}]},
                           {"name": "b", "image": "x"}],
            "volumes": [{"name": "v", "emptyDir": {}}],
        }});
        add_token_volume(child_map(&mut pod, "spec"));
        let vols = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().unwrap();
        assert!(
            name.starts_with("kube-api-access-") && name.len() == 21,
            "{name}"
        );
        let sources = &vols[1]["projected"]["sources"];
        assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
        for c in ["initContainers", "containers"] {
            for container in pod["spec"][c].as_array().unwrap() {
                let m = container["volumeMounts"]
                    .as_array()
                    .unwrap()
                    .last()
                    .unwrap();
                assert_eq!(m["name"], name);
                assert_eq!(m["mountPath"], MOUNT_PATH);
                assert_eq!(m["readOnly"], true);
            }
        }
    }

    #[test]
    fn an_own_mount_at_the_path_wins() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x",
            "volumeMounts": [{"name": "mine", "mountPath": MOUNT_PATH}]}]}});
        let before = pod.clone();
        add_token_volume(child_map(&mut pod, "spec"));
        assert_eq!(pod, before);
    }
}
