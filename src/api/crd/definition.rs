//! Checks of a CustomResourceDefinition before it is stored (kube-apiserver's
//! apiextensions validation: names, group, scope, versions, one storage version,
//! structural schemas) and its status: the accepted names and the `NamesAccepted` and
//! `Established` conditions, which kube's controllers set a moment later and pikube sets
//! with the write itself, so `kubectl wait --for condition=established` returns at once.

use serde_json::{json, Map, Value};

use crate::api::objects;
use crate::api::resources::Catalog;
use crate::api::status::ApiError;

type Causes = Vec<(String, String)>;

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

use crate::api::objects::{is_dns1123_label as is_dns_label, is_dns1123_subdomain};

/// Whether a stored definition is established (its resources are served).
pub fn is_established(crd: &Value) -> bool {
    condition(crd, "Established") == Some("True")
}

fn condition<'a>(crd: &'a Value, kind: &str) -> Option<&'a str> {
    crd.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?
        .get("status")?
        .as_str()
}

/// Checks the names of `spec.names` (and defaults `singular` and `listKind`).
fn check_names(names: &mut Map<String, Value>, causes: &mut Causes) {
    let field = |f: &str| format!("spec.names.{f}");
    let plural = names.get("plural").and_then(Value::as_str).unwrap_or("");
    if plural.is_empty() {
        causes.push((field("plural"), "Required value".into()));
    } else if !is_dns_label(plural) {
        causes.push((
            field("plural"),
            format!("Invalid value: \"{plural}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
        ));
    }
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if kind.is_empty() {
        causes.push((field("kind"), "Required value".into()));
    } else if !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        causes.push((
            field("kind"),
            format!("Invalid value: \"{kind}\": may have mixed case, but should otherwise match: ^[a-z]([-a-z0-9]*[a-z0-9])?$"),
        ));
    }
    if names
        .get("singular")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        names.insert("singular".into(), json!(kind.to_lowercase()));
    }
    if names
        .get("listKind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        names.insert("listKind".into(), json!(format!("{kind}List")));
    }
    let singular = names.get("singular").and_then(Value::as_str).unwrap_or("");
    if !is_dns_label(singular) {
        causes.push((
            field("singular"),
            format!("Invalid value: \"{singular}\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
        ));
    }
    for (list, what) in [("shortNames", "shortNames"), ("categories", "categories")] {
        for (i, n) in names
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if !n.as_str().is_some_and(is_dns_label) {
                causes.push((
                    format!("spec.names.{what}[{i}]"),
                    format!("Invalid value: {n}: a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'"),
                ));
            }
        }
    }
}

/// Checks the versions: unique names, exactly one storage version, a structural schema
/// each, subresource paths.
fn check_versions(spec: &Value, causes: &mut Causes) {
    let Some(versions) = spec["versions"].as_array().filter(|v| !v.is_empty()) else {
        causes.push((
            "spec.versions".into(),
            "Invalid value: null: must have exactly one version marked as storage version".into(),
        ));
        return;
    };
    let mut seen: Vec<&str> = Vec::new();
    let storage = versions
        .iter()
        .filter(|v| v["storage"] == json!(true))
        .count();
    if storage != 1 {
        causes.push((
            "spec.versions".into(),
            format!(
                "Invalid value: {}: must have exactly one version marked as storage version",
                json!(versions.iter().map(|v| &v["name"]).collect::<Vec<_>>())
            ),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        let at = |f: &str| format!("spec.versions[{i}].{f}");
        let name = v["name"].as_str().unwrap_or("");
        if !is_dns_label(name) {
            causes.push((at("name"), format!("Invalid value: \"{name}\": a DNS-1035 label must consist of lower case alphanumeric characters or '-'")));
        }
        if seen.contains(&name) {
            causes.push((at("name"), format!("Duplicate value: \"{name}\"")));
        }
        seen.push(name);
        match v.pointer("/schema/openAPIV3Schema") {
            None => causes.push((
                at("schema.openAPIV3Schema"),
                "Required value: schemas are required".into(),
            )),
            Some(schema) => {
                if schema.get("type").and_then(Value::as_str) != Some("object") {
                    causes.push((
                        at("schema.openAPIV3Schema.type"),
                        "Unsupported value: must be object at the root".into(),
                    ));
                }
                super::values::check_structural(schema, &at("schema.openAPIV3Schema"), causes);
            }
        }
        if let Some(scale) = v.pointer("/subresources/scale") {
            for f in ["specReplicasPath", "statusReplicasPath"] {
                let p = scale[f].as_str().unwrap_or("");
                if super::json_path_pointer(p).is_none() {
                    causes.push((
                        at(&format!("subresources.scale.{f}")),
                        format!(
                            "Invalid value: \"{p}\": should be a json path under .spec or .status"
                        ),
                    ));
                }
            }
        }
        for (j, c) in v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = c["jsonPath"].as_str().unwrap_or("");
            if c["name"].as_str().is_none_or(str::is_empty) {
                causes.push((
                    at(&format!("additionalPrinterColumns[{j}].name")),
                    "Required value".into(),
                ));
            }
            if super::JsonPath::parse(p).is_none() {
                causes.push((
                    at(&format!("additionalPrinterColumns[{j}].jsonPath")),
                    format!(
                        "Invalid value: \"{p}\": pikube supports fields, indexes, [*] and [?(@.field==\"value\")] only"
                    ),
                ));
            }
        }
    }
}

/// Checks a definition about to be stored over `old` and sets its status: names
/// accepted unless another definition of the group serves the same kind or plural,
/// established once they are.
pub fn prepare(catalog: &Catalog, old: Option<&Value>, crd: &mut Value) -> Result<(), ApiError> {
    let name = text(crd, "/metadata/name").to_string();
    let mut causes = Causes::new();
    let group = text(crd, "/spec/group").to_string();
    if group.is_empty() {
        causes.push(("spec.group".into(), "Required value".into()));
    } else if !is_dns1123_subdomain(&group) || !group.contains('.') {
        causes.push((
            "spec.group".into(),
            format!("Invalid value: \"{group}\": should be a domain with at least one dot"),
        ));
    }
    let scope = text(crd, "/spec/scope").to_string();
    if scope != "Namespaced" && scope != "Cluster" {
        causes.push((
            "spec.scope".into(),
            format!(
                "Unsupported value: \"{scope}\": supported values: \"Cluster\", \"Namespaced\""
            ),
        ));
    }
    if let Some(old) = old {
        if text(old, "/spec/scope") != scope {
            causes.push((
                "spec.scope".into(),
                format!("Invalid value: \"{scope}\": field is immutable"),
            ));
        }
    }
    match crd
        .pointer_mut("/spec/names")
        .and_then(Value::as_object_mut)
    {
        Some(names) => check_names(names, &mut causes),
        None => causes.push(("spec.names".into(), "Required value".into())),
    }
    let plural = text(crd, "/spec/names/plural");
    if !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    check_versions(&crd["spec"], &mut causes);
    if !causes.is_empty() {
        return Err(ApiError::invalid(
            "CustomResourceDefinition",
            super::GROUP,
            &name,
            causes,
        ));
    }
    set_status(catalog, old, crd, &name);
    Ok(())
}

/// The status of a valid definition.
fn set_status(catalog: &Catalog, old: Option<&Value>, crd: &mut Value, name: &str) {
    let names = crd["spec"]["names"].clone();
    let group = text(crd, "/spec/group");
    let kind = text(&names, "/kind");
    let conflict = catalog.all().into_iter().find(|d| {
        d.group == group
            && d.custom.as_ref().is_none_or(|c| c.crd != name)
            && (d.kind == kind || names["plural"] == json!(d.plural))
    });
    let now = objects::now_rfc3339();
    let previous = |t: &str, status: &str| {
        old.and_then(|o| o.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .and_then(|cs| {
                cs.iter()
                    .find(|c| c["type"] == t && c["status"] == status)
                    .and_then(|c| c.get("lastTransitionTime").cloned())
            })
            .unwrap_or_else(|| json!(now))
    };
    let (accepted, reason, message) = match &conflict {
        None => ("True", "NoConflicts", "no conflicts found".to_string()),
        Some(d) => (
            "False",
            "KindOrPluralConflict",
            format!("\"{}\" is already in use", d.plural),
        ),
    };
    let (established, ereason, emessage) = if conflict.is_none() {
        (
            "True",
            "InitialNamesAccepted",
            "the initial names have been accepted",
        )
    } else {
        ("False", "NotAccepted", "not all names are accepted")
    };
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    let mut stored: Vec<Value> = old
        .and_then(|o| o.pointer("/status/storedVersions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let accepted_names = if conflict.is_none() {
        names
    } else {
        old.and_then(|o| o.pointer("/status/acceptedNames"))
            .cloned()
            .unwrap_or(json!({"plural": "", "kind": ""}))
    };
    crd["status"] = json!({
        "acceptedNames": accepted_names,
        "conditions": [
            {"type": "NamesAccepted", "status": accepted, "reason": reason, "message": message,
             "lastTransitionTime": previous("NamesAccepted", accepted)},
            {"type": "Established", "status": established, "reason": ereason, "message": emessage,
             "lastTransitionTime": previous("Established", established)},
        ],
        "storedVersions": stored,
    });
}
