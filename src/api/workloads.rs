//! Defaults and checks of apps/v1 DaemonSets and StatefulSets, as kube-apiserver's
//! defaulting and validation give them: the update strategy (which `kubectl rollout
//! status` reads), history limit, pod management and claim retention policies; a
//! selector that matches the template; the StatefulSet fields that cannot change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Map, Value};

use super::objects::{child_map, meta_str};
use super::resources::ResourceDef;
use super::status::ApiError;
use crate::controllers::pods::selector_matches;

/// Defaults and checks `obj` (a new object when `old` is None).
pub fn prepare(def: &ResourceDef, old: Option<&Value>, obj: &mut Value) -> Result<(), ApiError> {
    super::defaults::apply(def, obj, old.is_none());
    if !def.is("apps", "DaemonSet") && !def.is("apps", "StatefulSet") {
        return Ok(());
    }
    if obj.get("spec").is_some_and(|s| !s.is_object()) {
        return Err(ApiError::bad_request(format!(
            "json: cannot unmarshal {} into Go struct field {}.spec of type v1.{}Spec",
            obj["spec"], def.kind, def.kind
        )));
    }
    let spec = child_map(obj, "spec");
    if def.kind == "DaemonSet" {
        default_daemonset(spec);
    } else {
        default_statefulset(spec);
    }
    let causes = check(&def.kind, old, obj);
    if causes.is_empty() {
        Ok(())
    } else {
        let name = meta_str(obj, "name").unwrap_or("");
        Err(ApiError::invalid(&def.kind, &def.group, name, causes))
    }
}

fn entry<'a>(m: &'a mut Map<String, Value>, key: &str, default: Value) -> &'a mut Value {
    let v = m.entry(key.to_string()).or_insert(Value::Null);
    if v.is_null() {
        *v = default;
    }
    v
}

fn default_daemonset(spec: &mut Map<String, Value>) {
    let us = entry(spec, "updateStrategy", json!({}));
    if let Some(us) = us.as_object_mut() {
        let t = entry(us, "type", json!("RollingUpdate")).clone();
        if t == "RollingUpdate" {
            if let Some(ru) = entry(us, "rollingUpdate", json!({})).as_object_mut() {
                entry(ru, "maxUnavailable", json!(1));
                entry(ru, "maxSurge", json!(0));
            }
        }
    }
    entry(spec, "revisionHistoryLimit", json!(10));
}

fn default_statefulset(spec: &mut Map<String, Value>) {
    entry(spec, "replicas", json!(1));
    entry(spec, "podManagementPolicy", json!("OrderedReady"));
    entry(spec, "revisionHistoryLimit", json!(10));
    let us = entry(spec, "updateStrategy", json!({}));
    if let Some(us) = us.as_object_mut() {
        let t = entry(us, "type", json!("RollingUpdate")).clone();
        if t == "RollingUpdate" {
            if let Some(ru) = entry(us, "rollingUpdate", json!({})).as_object_mut() {
                entry(ru, "partition", json!(0));
            }
        }
    }
    if let Some(p) = entry(spec, "persistentVolumeClaimRetentionPolicy", json!({})).as_object_mut()
    {
        entry(p, "whenDeleted", json!("Retain"));
        entry(p, "whenScaled", json!("Retain"));
    }
}

fn one_of(causes: &mut Vec<(String, String)>, obj: &Value, field: &str, allowed: &[&str]) {
    let pointer = format!("/{}", field.replace('.', "/"));
    if let Some(v) = obj.pointer(&pointer) {
        if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
            let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
            causes.push((
                field.into(),
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    list.join(", ")
                ),
            ));
        }
    }
}

fn check(kind: &str, old: Option<&Value>, obj: &Value) -> Vec<(String, String)> {
    let mut causes = Vec::new();
    let selector: Option<LabelSelector> = obj
        .pointer("/spec/selector")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let empty = selector.as_ref().is_none_or(|s| {
        s.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && s.match_expressions.as_ref().is_none_or(|e| e.is_empty())
    });
    if empty {
        causes.push(("spec.selector".into(), "Required value".into()));
    } else if let Some(sel) = &selector {
        let labels = obj
            .pointer("/spec/template/metadata/labels")
            .and_then(|l| serde_json::from_value(l.clone()).ok());
        if !selector_matches(sel, labels.as_ref()) {
            causes.push((
                "spec.template.metadata.labels".into(),
                format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    obj.pointer("/spec/template/metadata/labels")
                        .cloned()
                        .unwrap_or(json!({}))
                ),
            ));
        }
    }
    one_of(
        &mut causes,
        obj,
        "spec.updateStrategy.type",
        &["OnDelete", "RollingUpdate"],
    );
    for field in ["revisionHistoryLimit", "minReadySeconds", "replicas"] {
        if let Some(n) = obj.pointer(&format!("/spec/{field}")) {
            if n.as_i64().is_none_or(|n| n < 0) {
                causes.push((
                    format!("spec.{field}"),
                    format!("Invalid value: {n}: must be greater than or equal to 0"),
                ));
            }
        }
    }
    if kind == "StatefulSet" {
        one_of(
            &mut causes,
            obj,
            "spec.podManagementPolicy",
            &["OrderedReady", "Parallel"],
        );
        for f in ["whenDeleted", "whenScaled"] {
            one_of(
                &mut causes,
                obj,
                &format!("spec.persistentVolumeClaimRetentionPolicy.{f}"),
                &["Retain", "Delete"],
            );
        }
    }
    if let Some(old) = old {
        immutable(kind, old, obj, &mut causes);
    }
    causes
}

/// A DaemonSet's selector, and a StatefulSet's spec but for the fields kube-apiserver
/// lets change, stay as they are.
fn immutable(kind: &str, old: &Value, obj: &Value, causes: &mut Vec<(String, String)>) {
    if kind == "DaemonSet" {
        if old.pointer("/spec/selector") != obj.pointer("/spec/selector") {
            causes.push((
                "spec.selector".into(),
                format!(
                    "Invalid value: {}: field is immutable",
                    obj.pointer("/spec/selector")
                        .cloned()
                        .unwrap_or(Value::Null)
                ),
            ));
        }
        return;
    }
    let strip = |v: &Value| {
        let mut s = v.get("spec").cloned().unwrap_or(json!({}));
        if let Some(m) = s.as_object_mut() {
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "revisionHistoryLimit",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                m.remove(k);
            }
        }
        s
    };
    if strip(old) != strip(obj) {
        causes.push((
            "spec".into(),
            "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    fn obj(spec: Value) -> Value {
        json!({"metadata": {"name": "x"}, "spec": spec})
    }

    #[test]
    fn defaults_are_those_of_kube_apiserver() {
        let ds = &lookup("apps", "v1", "daemonsets").expect("ds");
        let mut o = obj(json!({"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}}}));
        prepare(ds, None, &mut o).expect("valid");
        assert_eq!(
            o["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
        );
        assert_eq!(o["spec"]["revisionHistoryLimit"], 10);
        let sts = &lookup("apps", "v1", "statefulsets").expect("sts");
        let mut o = obj(json!({"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}},
            "updateStrategy": {"type": "OnDelete"}}));
        prepare(sts, None, &mut o).expect("valid");
        assert_eq!(o["spec"]["replicas"], 1);
        assert_eq!(o["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(o["spec"]["updateStrategy"], json!({"type": "OnDelete"}));
        assert_eq!(
            o["spec"]["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"})
        );
    }

    #[test]
    fn bad_specs_are_422() {
        let sts = &lookup("apps", "v1", "statefulsets").expect("sts");
        let mut o = obj(json!({"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "c"}}}, "podManagementPolicy": "Whenever"}));
        let e = prepare(sts, None, &mut o).expect_err("invalid").to_status();
        assert_eq!(e["code"], 422);
        let msg = e["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("`selector` does not match template `labels`"),
            "{msg}"
        );
        assert!(
            msg.contains("spec.podManagementPolicy: Unsupported value: \"Whenever\""),
            "{msg}"
        );
        let mut no_sel = obj(json!({"template": {}}));
        assert!(prepare(sts, None, &mut no_sel).is_err());
        let mut not_object = obj(json!("x"));
        let e = prepare(sts, None, &mut not_object).expect_err("bad spec");
        assert_eq!(e.to_status()["code"], 400);
        // Only some fields of a StatefulSet may change.
        let mut old = obj(
            json!({"selector": {"matchLabels": {"a": "b"}}, "serviceName": "s",
            "template": {"metadata": {"labels": {"a": "b"}}}}),
        );
        prepare(sts, None, &mut old).expect("valid");
        let mut scaled = old.clone();
        scaled["spec"]["replicas"] = json!(5);
        prepare(sts, Some(&old), &mut scaled).expect("replicas may change");
        let mut renamed = old.clone();
        renamed["spec"]["serviceName"] = json!("t");
        let e = prepare(sts, Some(&old), &mut renamed).expect_err("immutable");
        assert!(e.to_status()["message"]
            .as_str()
            .unwrap_or("")
            .contains("Forbidden"));
    }
}
