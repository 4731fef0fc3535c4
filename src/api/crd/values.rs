//! Custom resources against their definition's schema, as kube-apiserver checks them
//! after pruning (pruning itself is field validation's walk, `fields.rs`): `default`s
//! applied, then JSON types, `nullable`, `required`, `enum`, `minimum`/`maximum`,
//! lengths and item counts — each failure a cause with its field path in one 422.
//! Also what definitions must be: structural (every field typed).

use serde_json::{json, Map, Value};

use super::CustomVersion;
use crate::api::resources::ResourceDef;
use crate::api::status::ApiError;

type Causes = Vec<(String, String)>;

fn flag(s: &Value, key: &str) -> bool {
    s.get(key) == Some(&Value::Bool(true))
}

/// Gives every object node that lists no fields an empty field list, so pruning drops
/// all its fields (a structural schema keeps only what it specifies), unless it keeps
/// unknown fields or is a map; embedded resources get `apiVersion`, `kind`, `metadata`.
pub fn close_objects(schema: &mut Value) {
    let Some(m) = schema.as_object_mut() else {
        return;
    };
    if m.contains_key("$ref") {
        return;
    }
    let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let is_object = m.get("type").and_then(Value::as_str) == Some("object");
    if is_object
        && !preserve
        && !m.contains_key("properties")
        && !m.contains_key("additionalProperties")
    {
        m.insert("properties".into(), json!({}));
    }
    if m.get("x-kubernetes-embedded-resource") == Some(&Value::Bool(true)) {
        if let Some(Value::Object(p)) = m.get_mut("properties") {
            p.entry("apiVersion").or_insert(json!({"type": "string"}));
            p.entry("kind").or_insert(json!({"type": "string"}));
            p.entry("metadata").or_insert(
                json!({"$ref": crate::api::openapi::schema::Schemas::object_meta_ref()}),
            );
        }
    }
    if let Some(Value::Object(p)) = m.get_mut("properties") {
        for child in p.values_mut() {
            close_objects(child);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = m.get_mut(key) {
            close_objects(child);
        }
    }
}

/// Checks that every field below `schema` has a type (or is int-or-string, or keeps
/// unknown fields), as structural schemas must.
pub fn check_structural(schema: &Value, path: &str, causes: &mut Causes) {
    let typed = |s: &Value| {
        s.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
            || flag(s, "x-kubernetes-int-or-string")
            || flag(s, "x-kubernetes-preserve-unknown-fields")
    };
    let mut children: Vec<(String, &Value, &str)> = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            children.push((
                format!("{path}.properties[{name}]"),
                child,
                "must not be empty for specified object fields",
            ));
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        children.push((
            format!("{path}.items"),
            items,
            "must not be empty for specified array items",
        ));
    }
    if let Some(ap) = schema.get("additionalProperties").filter(|a| a.is_object()) {
        children.push((
            format!("{path}.additionalProperties"),
            ap,
            "must not be empty if additionalProperties or properties are specified",
        ));
    }
    for (at, child, why) in children {
        if !typed(child) {
            causes.push((format!("{at}.type"), format!("Required value: {why}")));
        }
        check_structural(child, &at, causes);
    }
}

/// Applies the schema's defaults to `obj`, then checks it; a 422 naming every invalid
/// field otherwise.
pub fn check(def: &ResourceDef, custom: &CustomVersion, obj: &mut Value) -> Result<(), ApiError> {
    let mut causes = Causes::new();
    if let Some(m) = obj.as_object_mut() {
        for (key, child) in m.iter_mut() {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            if let Some(s) = custom.schema.pointer(&format!("/properties/{key}")) {
                walk(s, child, key, &mut causes);
            }
        }
        if let Some(required) = custom.schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !m.contains_key(r) {
                    causes.push((r.to_string(), "Required value".into()));
                }
            }
        }
    }
    ApiError::unless_invalid(&def.kind, &def.group, obj, causes)
}

/// The type a JSON value has, in OpenAPI's words.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_matches(schema: &Value, v: &Value) -> bool {
    let actual = type_of(v);
    if actual == "null" {
        return flag(schema, "nullable");
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        return matches!(actual, "integer" | "string");
    }
    match schema.get("type").and_then(Value::as_str) {
        None | Some("") => true,
        Some("number") => matches!(actual, "integer" | "number"),
        Some(t) => t == actual,
    }
}

fn apply_defaults(schema: &Value, m: &mut Map<String, Value>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, p) in props {
        if let (false, Some(d)) = (m.contains_key(name), p.get("default")) {
            m.insert(name.clone(), d.clone());
        }
    }
}

/// Checks `v` at `path` against `schema` (defaults applied first).
fn walk(schema: &Value, v: &mut Value, path: &str, causes: &mut Causes) {
    if !type_matches(schema, v) {
        let t = schema.get("type").and_then(Value::as_str).unwrap_or("");
        let actual = type_of(v);
        causes.push((
            path.to_string(),
            format!(
                "Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
            ),
        ));
        return;
    }
    check_bounds(schema, v, path, causes);
    match v {
        Value::Object(m) => {
            apply_defaults(schema, m);
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !m.contains_key(r) {
                    causes.push((format!("{path}.{r}"), "Required value".into()));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in m.iter_mut() {
                let s = props.and_then(|p| p.get(key)).or(extra);
                if let Some(s) = s {
                    walk(s, child, &format!("{path}.{key}"), causes);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|i| i.is_object()) {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(s, child, &format!("{path}[{i}]"), causes);
                }
            }
        }
        _ => {}
    }
}

/// `enum`, `minimum`/`maximum` (and their exclusive forms), `minLength`/`maxLength`,
/// `minItems`/`maxItems`.
fn check_bounds(schema: &Value, v: &Value, path: &str, causes: &mut Causes) {
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !v.is_null() && !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            causes.push((
                path.to_string(),
                format!(
                    "Unsupported value: {v}: supported values: {}",
                    list.join(", ")
                ),
            ));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            let exclusive = flag(schema, "exclusiveMinimum");
            if n < min || (exclusive && n == min) {
                let than = if exclusive {
                    "greater than"
                } else {
                    "greater than or equal to"
                };
                causes.push((
                    path.to_string(),
                    format!("Invalid value: {v}: {path} in body should be {than} {min}"),
                ));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            let exclusive = flag(schema, "exclusiveMaximum");
            if n > max || (exclusive && n == max) {
                let than = if exclusive {
                    "less than"
                } else {
                    "less than or equal to"
                };
                causes.push((
                    path.to_string(),
                    format!("Invalid value: {v}: {path} in body should be {than} {max}"),
                ));
            }
        }
    }
    // (length, its minimum, its maximum) of a string or a list, with the messages.
    let sized = match v {
        Value::String(s) => Some((s.chars().count() as u64, "minLength", "maxLength")),
        Value::Array(a) => Some((a.len() as u64, "minItems", "maxItems")),
        _ => None,
    };
    if let Some((len, min_key, max_key)) = sized {
        let strings = v.is_string();
        if let Some(min) = schema
            .get(min_key)
            .and_then(Value::as_u64)
            .filter(|m| len < *m)
        {
            let message = if strings {
                format!("Invalid value: {v}: {path} in body should be at least {min} chars long")
            } else {
                format!("Invalid value: {len}: {path} in body should have at least {min} items")
            };
            causes.push((path.to_string(), message));
        }
        if let Some(max) = schema
            .get(max_key)
            .and_then(Value::as_u64)
            .filter(|m| len > *m)
        {
            let message = if strings {
                format!("Too long: may not be more than {max} bytes")
            } else {
                format!("Too many: {len}: must have at most {max} items")
            };
            causes.push((path.to_string(), message));
        }
    }
}
