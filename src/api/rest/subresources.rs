//! The `binding` and `scale` subresources.

use super::*;

/// Binds a pod to a node (the `pods/binding` subresource the scheduler writes): sets
/// `spec.nodeName` once, and the PodScheduled condition.
pub async fn bind(
    reg: &Registry,
    target: &Target,
    name: &str,
    binding: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let store = &reg.store;
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                "",
                name,
                vec![("target.name".into(), "Required value".into())],
            )
        })?;
    if let Some(kind) = binding.pointer("/target/kind").and_then(Value::as_str) {
        if !kind.is_empty() && kind != "Node" {
            return Err(ApiError::invalid(
                "Binding",
                "",
                name,
                vec![(
                    "target.kind".into(),
                    format!("Unsupported value: \"{kind}\": supported values: \"Node\""),
                )],
            ));
        }
    }
    if meta_str(binding, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the Binding ({}) does not match the pod on the URL ({name})",
            meta_str(binding, "name").unwrap_or("")
        )));
    }
    let main = Target {
        subresource: None,
        ..target.clone()
    };
    for _ in 0..5 {
        let key = main.key(name);
        let kv = store
            .get(key.as_bytes())
            .await?
            .ok_or_else(|| main.not_found(name))?;
        let mut pod = from_stored(&kv.value, kv.mod_revision)?;
        if let Some(uid) = binding.pointer("/metadata/uid").and_then(Value::as_str) {
            if meta_str(&pod, "uid") != Some(uid) {
                return Err(ApiError::conflict("pods", "", name));
            }
        }
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict("pods", "", name).with_message(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(existing) = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict("pods", "", name).with_message(format!(
                "pod {name} is already assigned to node \"{existing}\""
            )));
        }
        objects::child_map(&mut pod, "spec").insert("nodeName".into(), json!(node));
        let status = objects::child_map(&mut pod, "status");
        let conds = status.entry("conditions").or_insert_with(|| json!([]));
        if let Some(list) = conds.as_array_mut() {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(json!({
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": null,
                "lastTransitionTime": objects::now_rfc3339(),
            }));
        }
        if dry_run
            || put_if_unchanged(store, &target.def, &key, kv.mod_revision, &pod)
                .await?
                .is_some()
        {
            return Ok(
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            );
        }
    }
    Err(ApiError::conflict("pods", "", name))
}

/// Kinds served with a `scale` subresource.
pub fn has_scale(def: &ResourceDef) -> bool {
    match &def.custom {
        Some(c) => c.scale.is_some(),
        None => matches!(
            def.kind.as_str(),
            "Deployment" | "ReplicaSet" | "StatefulSet"
        ),
    }
}

/// Where the replica counts of objects of `def` are: (spec, status, label selector).
fn scale_paths(def: &ResourceDef) -> (&str, &str, Option<&str>) {
    match def.custom.as_ref().and_then(|c| c.scale.as_ref()) {
        Some(s) => (
            &s.spec_replicas,
            &s.status_replicas,
            s.label_selector.as_deref(),
        ),
        None => ("/spec/replicas", "/status/replicas", None),
    }
}

/// The autoscaling/v1 Scale view of a scalable object.
fn scale_of(def: &ResourceDef, obj: &Value) -> Value {
    let (spec_path, status_path, selector_path) = scale_paths(def);
    let selector = match selector_path {
        Some(p) => obj
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        None => obj
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default(),
    };
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"),
            "namespace": m.get("namespace"),
            "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"),
            "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer(spec_path).and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer(status_path).and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

/// Reads the `scale` subresource.
pub async fn get_scale(store: &Store, target: &Target, name: &str) -> Result<Value, ApiError> {
    Ok(scale_of(&target.def, &get(store, target, name).await?))
}

/// Writes the `scale` subresource (PUT, or a patch of the Scale object): only
/// `spec.replicas` of the object changes.
pub async fn update_scale(
    reg: &Registry,
    target: &Target,
    name: &str,
    patch: Option<(PatchKind, &[u8])>,
    body: Option<Value>,
    opts: WriteOptions,
) -> Result<Value, ApiError> {
    let store = &reg.store;
    let main = Target {
        subresource: None,
        ..target.clone()
    };
    for _ in 0..5 {
        let kv = store
            .get(main.key(name).as_bytes())
            .await?
            .ok_or_else(|| main.not_found(name))?;
        let current = objects::read_stored(&main.def, &kv.value, kv.mod_revision)?;
        let mut scale = scale_of(&target.def, &current);
        let explicit_rv = match (&patch, &body) {
            (Some((kind, raw)), _) => {
                let p: Value = serde_json::from_slice(raw)
                    .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
                match kind {
                    PatchKind::Merge | PatchKind::Strategic => json_patch::merge(&mut scale, &p),
                    PatchKind::Json => {
                        let ops: json_patch::Patch = serde_json::from_value(p).map_err(|e| {
                            ApiError::bad_request(format!("invalid JSON patch: {e}"))
                        })?;
                        json_patch::patch(&mut scale, &ops).map_err(|e| {
                            ApiError::invalid(
                                "Scale",
                                "autoscaling",
                                name,
                                vec![("patch".into(), e.to_string())],
                            )
                        })?;
                    }
                }
                false
            }
            (None, Some(b)) => {
                scale = b.clone();
                meta_str(b, "resourceVersion").is_some_and(|rv| !rv.is_empty())
            }
            (None, None) => return Err(ApiError::bad_request("a Scale body is required")),
        };
        let replicas = scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    name,
                    vec![("spec.replicas".into(), "Required value".into())],
                )
            })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![(
                    "spec.replicas".into(),
                    format!("Invalid value: {replicas}: must be greater than or equal to 0"),
                )],
            ));
        }
        let mut obj = current.clone();
        set_pointer(&mut obj, scale_paths(&target.def).0, json!(replicas));
        if explicit_rv {
            meta(&mut obj).insert(
                "resourceVersion".into(),
                json!(meta_str(&scale, "resourceVersion").unwrap_or("")),
            );
        }
        match write_update(
            reg,
            &main,
            name,
            &current,
            kv.mod_revision,
            obj,
            opts.clone(),
        )
        .await
        {
            Err(e) if e.reason == "Conflict" && !explicit_rv => continue,
            Err(e) => return Err(e),
            Ok(updated) => return Ok(scale_of(&target.def, &updated.object)),
        }
    }
    Err(ApiError::conflict(
        &target.def.plural,
        &target.def.group,
        name,
    ))
}

/// Sets the value at a JSON pointer, making the objects on its way.
fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    if !obj.is_object() {
        return;
    }
    let mut at = obj;
    let segs: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, path)) = segs.split_last() else {
        return;
    };
    for seg in path {
        if !at.get(seg).is_some_and(Value::is_object) {
            at[seg.as_str()] = json!({});
        }
        at = &mut at[seg.as_str()];
    }
    if at.is_object() {
        at[last.as_str()] = value;
    }
}
