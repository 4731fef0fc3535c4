//! Objects between the wire and the store: decoding request bodies, object metadata
//! (names, uid, timestamps, generation), and the store's revision as resourceVersion.

use axum::http::HeaderMap;
use serde_json::{json, Map, Value};

use super::resources::ResourceDef;
use super::status::ApiError;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Kinds whose `status` is written only through the status subresource.
const STATUS_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "Service",
    "Node",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "ResourceQuota",
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "Job",
    "CronJob",
    "Ingress",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
];

/// Whether the kind has a status subresource.
pub fn has_status(def: &ResourceDef) -> bool {
    match &def.custom {
        Some(c) => c.status,
        None => STATUS_KINDS.contains(&def.kind.as_str()),
    }
}

/// Decodes a JSON, YAML or Kubernetes protobuf request body into an object.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::too_large(format!(
            "request body of {} bytes exceeds the limit of {MAX_BODY_BYTES}",
            body.len()
        )));
    }
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let value: Value = match media.as_str() {
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON request body: {e}")))?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML request body: {e}")))?,
        super::protobuf::MEDIA_TYPE => super::protobuf::decode(body)?,
        _ => return Err(ApiError::unsupported_media_type(ct)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Checks the body's apiVersion/kind against the URL, filling them in when absent.
pub fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = def.api_version();
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))?;
    match map.get("apiVersion").and_then(Value::as_str) {
        None => {
            map.insert("apiVersion".into(), json!(want_av));
        }
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None => {
            map.insert("kind".into(), json!(def.kind));
        }
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )))
        }
    }
    if !map.get("metadata").map(Value::is_object).unwrap_or(true) {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    map.entry("metadata").or_insert_with(|| json!({}));
    Ok(())
}

/// The map under `field` of an object, created (or replacing a non-map value) when
/// needed. Callers pass objects, checked by [`check_type`] or read from the store; a
/// non-object is turned into an empty one rather than panicking.
pub fn child_map<'a>(obj: &'a mut Value, field: &str) -> &'a mut Map<String, Value> {
    if !obj.is_object() {
        *obj = Value::Object(Map::new());
    }
    let Value::Object(map) = obj else {
        unreachable!("made an object above")
    };
    let entry = map
        .entry(field.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    let Value::Object(child) = entry else {
        unreachable!("made an object above")
    };
    child
}

/// The object's `metadata` map (present after [`check_type`]).
pub fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    child_map(obj, "metadata")
}

/// A string field of `metadata`.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

/// Whether `s` is a DNS-1123 label (namespaces, services).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (most object names).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// Checks an object's name for its resource; `Err` lists the causes for a 422.
pub fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let label = def.custom.is_none() && matches!(def.kind.as_str(), "Namespace" | "Service");
    let ok = if label {
        is_dns1123_label(name)
    } else {
        is_dns1123_subdomain(name)
    };
    if ok {
        return Ok(());
    }
    let rule = if label {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
    } else {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
    };
    Err(ApiError::invalid(
        &def.kind,
        &def.group,
        name,
        vec![(
            "metadata.name".into(),
            format!("Invalid value: {name:?}: {rule}"),
        )],
    ))
}

/// A name for `generateName`: the prefix and five random characters, as Kubernetes does.
pub fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect();
    let prefix: String = prefix.chars().take(58).collect();
    format!("{prefix}{suffix}")
}

/// The current time in the format of `metav1.Time`.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Serialises an object for the store: without resourceVersion (the revision is the
/// key's mod_revision).
pub fn to_stored(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut o = obj.clone();
    meta(&mut o).remove("resourceVersion");
    serde_json::to_vec(&o).map_err(|e| ApiError::internal(format!("cannot encode object: {e}")))
}

/// Serialises an object of `def` for the store, in the version the store keeps
/// (events.k8s.io Events as core ones; see [`super::event_versions`]).
pub fn to_stored_as(def: &ResourceDef, obj: &Value) -> Result<Vec<u8>, ApiError> {
    if super::event_versions::is_events_v1(def) {
        let mut o = obj.clone();
        super::event_versions::to_storage(def, &mut o);
        return to_stored(&o);
    }
    to_stored(obj)
}

/// Reads a stored object and sets its resourceVersion to `revision`.
pub fn from_stored(bytes: &[u8], revision: i64) -> Result<Value, ApiError> {
    let mut o: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    meta(&mut o).insert("resourceVersion".into(), json!(revision.to_string()));
    Ok(o)
}

/// A stored object of `def`, read: custom resources are stored in the version that
/// wrote them and served in every version of their definition (conversion `None`: only
/// `apiVersion` changes); Events are converted to the version `def` serves.
pub fn read_stored(def: &ResourceDef, bytes: &[u8], revision: i64) -> Result<Value, ApiError> {
    let mut o = from_stored(bytes, revision)?;
    super::event_versions::from_storage(def, &mut o);
    // As kube-apiserver defaults what it decodes from storage: objects stored before a
    // default existed read as if written with it.
    super::defaults::apply(def, &mut o, false);
    if def.custom.is_some() && o.is_object() {
        o["apiVersion"] = json!(def.api_version());
    }
    Ok(o)
}

/// Parses a resourceVersion sent by a client.
pub fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>()
        .ok()
        .filter(|v| *v >= 0)
        .ok_or_else(|| ApiError::bad_request(format!("invalid resource version: {rv:?}")))
}

/// The strings of a JSON list (none when it is missing or not a list; other items skipped).
pub fn strings(list: Option<&Value>) -> Vec<String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn names_and_types() {
        assert!(is_dns1123_label("my-ns1"));
        assert!(!is_dns1123_label("My"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        let cm = &lookup("", "v1", "configmaps").unwrap();
        assert_eq!(validate_name(cm, "Bad_Name").unwrap_err().code, 422);
        let g = generate_name("web-");
        assert!(g.starts_with("web-") && g.len() == 9);
        let mut o = json!({"apiVersion": "apps/v1", "kind": "ConfigMap"});
        assert_eq!(check_type(cm, &mut o).unwrap_err().code, 400);
        let mut o = json!({"data": {}});
        check_type(cm, &mut o).unwrap();
        assert_eq!(o["kind"], "ConfigMap");
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            "application/vnd.kubernetes.protobuf".parse().unwrap(),
        );
        assert_eq!(decode_body(&headers, b"{}").unwrap_err().code, 400);
        headers.insert("content-type", "text/plain".parse().unwrap());
        assert_eq!(decode_body(&headers, b"{}").unwrap_err().code, 415);
        headers.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(decode_body(&headers, b"{not json").unwrap_err().code, 400);
        assert_eq!(decode_body(&headers, b"[1]").unwrap_err().code, 400);
        headers.insert("content-type", "application/yaml".parse().unwrap());
        assert_eq!(decode_body(&headers, b"a: 1\n").unwrap()["a"], 1);
        let stored =
            to_stored(&json!({"metadata": {"name": "x", "resourceVersion": "5"}})).unwrap();
        let back = from_stored(&stored, 9).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "9");
        assert!(parse_rv("-1").is_err());
    }
}
