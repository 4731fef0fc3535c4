//! Strategic merge patch (what `kubectl apply`, `kubectl patch` and `kubectl rollout
//! restart` send for built-in kinds): maps merge, `null` deletes, and lists of objects
//! with a merge key (containers by name, ports by number, …) merge item by item.
//!
//! Directives handled: `$patch: replace|delete|merge`, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>`, `$setElementOrder/<field>`.

use serde_json::{Map, Value};

use super::openapi::schema::{ListMerge, Node};

/// Why a patch could not be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PatchError {
    /// The patch is not of the shape the directive or field needs.
    #[error("invalid strategic merge patch: {0}")]
    Invalid(String),
}

/// Applies a strategic merge `patch` to `original`, an object whose schema is `schema`
/// (its fields' `x-kubernetes-patch-*` facts decide how lists merge).
pub fn strategic_merge(
    schema: Node<'_>,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let mut out = original.clone();
    merge_value(schema, &mut out, patch)?;
    Ok(out)
}

fn merge_value(node: Node<'_>, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Some(pmap) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    if pmap.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replaced = pmap.clone();
        replaced.remove("$patch");
        *target = Value::Object(replaced);
        return Ok(());
    }
    if pmap.get("$patch").and_then(Value::as_str) == Some("delete") {
        *target = Value::Null;
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(tmap) = target.as_object_mut() else {
        return Ok(());
    };
    for (key, pval) in pmap {
        if key == "$patch" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if key == "$retainKeys" {
            let keep: Vec<&str> = pval
                .as_array()
                .ok_or_else(|| PatchError::Invalid("$retainKeys must be a list".into()))?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            tmap.retain(|k, _| keep.contains(&k.as_str()));
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = pval
                .as_array()
                .ok_or_else(|| PatchError::Invalid(format!("{key} must be a list")))?;
            if let Some(Value::Array(items)) = tmap.get_mut(field) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        if pval.is_null() {
            tmap.remove(key);
            continue;
        }
        let field = node.field(key).unwrap_or_else(|| node.free());
        match (pval, field.list_merge()) {
            (Value::Array(items), ListMerge::ByKey(merge_key)) => {
                let current = tmap
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                merge_keyed_list(field.items(), key, current, items, &merge_key)?;
            }
            (Value::Array(items), ListMerge::Union) => {
                let current = tmap
                    .entry(key.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(cur) = current {
                    for i in items {
                        if !cur.contains(i) {
                            cur.push(i.clone());
                        }
                    }
                } else {
                    *current = Value::Array(items.clone());
                }
            }
            (Value::Object(_), _) => {
                let entry = tmap.entry(key.clone()).or_insert(Value::Null);
                merge_value(field, entry, pval)?;
                if entry.is_null() {
                    tmap.remove(key);
                }
            }
            _ => {
                tmap.insert(key.clone(), pval.clone());
            }
        }
    }
    Ok(())
}

fn merge_keyed_list(
    item: Node<'_>,
    field: &str,
    current: &mut Value,
    patch_items: &[Value],
    merge_key: &str,
) -> Result<(), PatchError> {
    if !current.is_array() {
        *current = Value::Array(Vec::new());
    }
    let Value::Array(items) = current else {
        return Ok(());
    };
    // `$patch: replace` as an item replaces the whole list with the other items.
    if patch_items
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *items = patch_items
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(());
    }
    for p in patch_items {
        let Some(key_value) = p.get(merge_key) else {
            return Err(PatchError::Invalid(format!(
                "an item of {field} lacks its merge key {merge_key}"
            )));
        };
        let pos = items
            .iter()
            .position(|i| i.get(merge_key) == Some(key_value));
        if p.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(pos) = pos {
                items.remove(pos);
            }
            continue;
        }
        match pos {
            Some(pos) => merge_value(item, &mut items[pos], p)?,
            None => {
                let mut fresh = Value::Null;
                merge_value(item, &mut fresh, p)?;
                items.push(fresh);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::schema::Schemas;
    use serde_json::json;

    fn strategic_merge(kind: &str, original: &Value, patch: &Value) -> Result<Value, PatchError> {
        let api_version = if kind == "Deployment" {
            "apps/v1"
        } else {
            "v1"
        };
        let schema = Schemas::builtin().kind(api_version, kind).expect("kind");
        super::strategic_merge(schema, original, patch)
    }

    #[test]
    fn containers_merge_by_name_and_ports_by_number() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}], "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 443}], "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]},
            {"name": "c", "image": "c:1"}
        ]}}}});
        let out = strategic_merge("Deployment", &orig, &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 3);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(
            cs[0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 443}])
        );
        assert_eq!(
            cs[0]["env"],
            json!([{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}])
        );
        assert_eq!(cs[1]["image"], "b:1");
        assert_eq!(cs[2]["name"], "c");
    }

    #[test]
    fn directives_and_deletions() {
        let orig = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "args": ["1", "2"], "tolerations": [{"key": "k"}]}});
        let patch = json!({"metadata": {"labels": {"a": null}, "finalizers": ["y"]},
            "spec": {"containers": [{"name": "b", "$patch": "delete"}], "$deleteFromPrimitiveList/args": ["1"],
                     "tolerations": [{"key": "z"}], "$setElementOrder/containers": [{"name": "a"}]}});
        let out = strategic_merge("Pod", &orig, &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y"]));
        assert_eq!(out["spec"]["containers"], json!([{"name": "a"}]));
        assert_eq!(out["spec"]["args"], json!(["2"]));
        assert_eq!(
            out["spec"]["tolerations"],
            json!([{"key": "z"}]),
            "lists without a merge key are replaced"
        );
        assert!(out["spec"].get("$setElementOrder/containers").is_none());

        let replaced = strategic_merge(
            "Pod",
            &orig,
            &json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(replaced["metadata"]["labels"], json!({"c": "3"}));
        let retained = strategic_merge(
            "Deployment",
            &json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
            &json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}),
        )
        .unwrap();
        assert_eq!(retained["strategy"], json!({"type": "Recreate"}));
        let svc = strategic_merge(
            "Service",
            &json!({"spec": {"ports": [{"port": 80, "name": "http"}]}}),
            &json!({"spec": {"ports": [{"port": 443, "name": "https"}]}}),
        )
        .unwrap();
        assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 2);
        assert!(strategic_merge(
            "Pod",
            &orig,
            &json!({"spec": {"containers": [{"image": "x"}]}})
        )
        .is_err());
    }
}
