//! Server-side apply (`PATCH` with `application/apply-patch+yaml`): the applied
//! configuration is merged into the live object by the schema (maps and structs field by
//! field, keyed lists item by item, sets as sets, the rest replaced); fields the manager
//! applied before and no longer applies are removed unless another manager owns them;
//! changing a value another manager owns is a conflict unless forced.

use serde_json::{json, Map, Value};

use super::fieldset::{self, display, item_position, key_element, FieldSet};
use super::{entries, scoped, store, Manager};
use crate::api::openapi::schema::{Node, Shape};
use crate::api::status::ApiError;

/// A field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager, as kube-apiserver prints it (`"kubectl-scale" using apps/v1`).
    pub manager: String,
    /// The field (`.spec.replicas`).
    pub field: String,
}

/// The 409 of an apply that would change fields other managers own.
pub fn conflict_error(conflicts: &[Conflict]) -> ApiError {
    let message = if let [one] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            one.manager, one.field
        )
    } else {
        let mut managers: Vec<&str> = conflicts.iter().map(|c| c.manager.as_str()).collect();
        managers.sort_unstable();
        managers.dedup();
        let mut lines = Vec::new();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            for c in conflicts.iter().filter(|c| c.manager == m) {
                lines.push(format!("- {}", c.field));
            }
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|c| {
            json!({"type": "FieldManagerConflict", "message": format!("conflict with {}", c.manager), "field": c.field})
        })
        .collect();
    ApiError {
        code: 409,
        reason: "Conflict",
        message,
        details: Some(json!({ "causes": causes })),
    }
}

fn printed(entry: &Value) -> String {
    let name = entry.get("manager").and_then(Value::as_str).unwrap_or("");
    let mut out = format!("{name:?}");
    if let Some(s) = entry.get("subresource").and_then(Value::as_str) {
        out.push_str(&format!(" with subresource {s:?}"));
    }
    if entry.get("operation").and_then(Value::as_str) == Some("Update") {
        let v = entry
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        out.push_str(&format!(" using {v}"));
    }
    out
}

/// The object that results from `who` applying `config` over `live` (None: the object
/// is created), with its `managedFields`; conflicts unless `force`.
pub fn apply(
    schema: Node<'_>,
    live: Option<&Value>,
    config: &Value,
    who: &Manager,
    force: bool,
    has_status: bool,
) -> Result<Value, Vec<Conflict>> {
    let mut config = config.clone();
    if has_status && who.subresource.is_none() {
        if let Some(m) = config.as_object_mut() {
            m.remove("status");
        }
    }
    if let Some(m) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    let applied = scoped(FieldSet::of(schema, &config), who, has_status);
    let Some(live) = live else {
        let mut obj = config;
        store(&mut obj, Vec::new(), who, applied);
        return Ok(obj);
    };
    let mut list = entries(live);
    let mut conflicts = Vec::new();
    let mut taken: Vec<(usize, Vec<String>)> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        if who.matches(&e.raw) {
            continue;
        }
        for p in e.fields.intersection(&applied).paths() {
            if !applied.is_leaf(&p) {
                continue;
            }
            if fieldset::value_at(live, &p) != fieldset::value_at(&config, &p) {
                conflicts.push(Conflict {
                    manager: printed(&e.raw),
                    field: display(&p),
                });
                taken.push((i, p));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (i, p) in taken {
        let mut one = FieldSet::default();
        one.insert(&p);
        list[i].fields.remove_all(&one);
    }
    // What this manager applied before, applies no more, and nobody else owns goes.
    let mut gone = list
        .iter()
        .find(|e| who.matches(&e.raw))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    gone.remove_all(&applied);
    for e in list.iter().filter(|e| !who.matches(&e.raw)) {
        gone.remove_all(&e.fields);
    }
    let mut obj = live.clone();
    for p in gone.paths() {
        fieldset::remove_at(&mut obj, &p);
    }
    merge(schema, &mut obj, &config);
    store(&mut obj, list, who, applied);
    Ok(obj)
}

/// Merges `applied` into `live` by the schema at `node`.
fn merge(node: Node<'_>, live: &mut Value, applied: &Value) {
    match (node.shape(applied), applied) {
        (Shape::Struct | Shape::Map, Value::Object(fields)) => {
            if !live.is_object() {
                *live = Value::Object(Map::new());
            }
            let Some(target) = live.as_object_mut() else {
                return;
            };
            for (k, v) in fields {
                if v.is_null() {
                    target.remove(k);
                    continue;
                }
                let child = node.field(k).unwrap_or_else(|| node.free());
                match target.get_mut(k) {
                    Some(existing) => merge(child, existing, v),
                    None => {
                        target.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Shape::KeyedList(keys), Value::Array(items)) => {
            let Some(current) = live.as_array_mut() else {
                *live = applied.clone();
                return;
            };
            let item = node.items();
            for a in items {
                let at = key_element(&keys, a).and_then(|pe| item_position(current, &pe));
                match at {
                    Some(i) => merge(item, &mut current[i], a),
                    None => current.push(a.clone()),
                }
            }
        }
        (Shape::Set, Value::Array(items)) => {
            let Some(current) = live.as_array_mut() else {
                *live = applied.clone();
                return;
            };
            for a in items {
                if !current.contains(a) {
                    current.push(a.clone());
                }
            }
        }
        _ => *live = applied.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::managed::track_update;
    use crate::api::openapi::schema::Schemas;
    use serde_json::json;

    fn schema() -> Node<'static> {
        Schemas::builtin()
            .kind("apps/v1", "Deployment")
            .expect("schema")
    }

    fn applier(name: &str) -> Manager {
        Manager {
            name: name.into(),
            apply: true,
            subresource: None,
        }
    }

    fn config(replicas: i64, image: &str, labels: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "a", "image": image}]}}}})
    }

    #[test]
    fn apply_merges_owns_and_removes_what_it_no_longer_applies() {
        let me = applier("kubectl");
        let first = apply(
            schema(),
            None,
            &config(2, "x:1", json!({"a": "1", "b": "2"})),
            &me,
            false,
            true,
        )
        .expect("create");
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "kubectl");
        assert_eq!(first["metadata"]["managedFields"][0]["operation"], "Apply");
        // Another manager adds a label by an update: it is theirs.
        let mut labelled = first.clone();
        labelled["metadata"]["labels"]["c"] = json!("3");
        let editor = Manager {
            name: "kubectl-label".into(),
            apply: false,
            subresource: None,
        };
        track_update(schema(), Some(&first), &mut labelled, &editor, true);
        // Applying again without label b removes it; label c (another's) stays.
        let second = apply(
            schema(),
            Some(&labelled),
            &config(2, "x:2", json!({"a": "1"})),
            &me,
            false,
            true,
        )
        .expect("apply");
        assert_eq!(second["metadata"]["labels"], json!({"a": "1", "c": "3"}));
        assert_eq!(
            second["spec"]["template"]["spec"]["containers"][0]["image"],
            "x:2"
        );
        let managers: Vec<&str> = second["metadata"]["managedFields"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, ["kubectl", "kubectl-label"]);
    }

    #[test]
    fn changing_what_another_manager_owns_conflicts_unless_forced() {
        let me = applier("kubectl");
        let live = apply(
            schema(),
            None,
            &config(2, "x:1", json!({})),
            &me,
            false,
            true,
        )
        .expect("create");
        let mut scaled = live.clone();
        scaled["spec"]["replicas"] = json!(5);
        let scaler = Manager {
            name: "kubectl-scale".into(),
            apply: false,
            subresource: None,
        };
        track_update(schema(), Some(&live), &mut scaled, &scaler, true);
        let err = apply(
            schema(),
            Some(&scaled),
            &config(3, "x:1", json!({})),
            &me,
            false,
            true,
        )
        .expect_err("conflict");
        assert_eq!(
            err,
            [Conflict {
                manager: "\"kubectl-scale\" using apps/v1".into(),
                field: ".spec.replicas".into()
            }]
        );
        assert_eq!(
            conflict_error(&err).message,
            "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
        );
        // The same value is shared, not a conflict; force takes the field over.
        assert!(apply(
            schema(),
            Some(&scaled),
            &config(5, "x:1", json!({})),
            &me,
            false,
            true
        )
        .is_ok());
        let forced = apply(
            schema(),
            Some(&scaled),
            &config(3, "x:1", json!({})),
            &me,
            true,
            true,
        )
        .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 3);
        let entries = forced["metadata"]["managedFields"]
            .as_array()
            .expect("entries");
        assert_eq!(
            entries.len(),
            1,
            "the scaler owned nothing else: {entries:?}"
        );
    }
}
