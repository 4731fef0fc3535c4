//! Field validation of written objects (`?fieldValidation=Ignore|Warn|Strict`), as
//! kube-apiserver does it: fields the kind's schema does not have are dropped — silently,
//! with a warning each (the default), or the write fails with 400 BadRequest (what kubectl
//! asks for since it validates on the server). A value of the wrong JSON type is a 400
//! whatever the directive, as Go's decoder refuses it.

use serde_json::Value;

use super::openapi::schema::{Expect, Node, Schemas};
use super::resources::ResourceDef;
use super::status::ApiError;

/// What to do with unknown fields of a written object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them, with one warning each (kube-apiserver's default).
    #[default]
    Warn,
    /// Refuse the write.
    Strict,
}

impl FieldValidation {
    /// The directive of a `fieldValidation` query parameter (absent: Warn).
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("warn") => Ok(FieldValidation::Warn),
            Some("ignore") => Ok(FieldValidation::Ignore),
            Some("strict") => Ok(FieldValidation::Strict),
            Some(_) => Err(ApiError::bad_request(format!(
                "invalid fieldValidation {:?}: must be Ignore, Warn or Strict",
                value.unwrap_or("")
            ))),
        }
    }
}

/// Applies `mode` to `obj`, an object of `def` about to be written over `before` (None on
/// create): refuses values of the wrong JSON type (always, as Go's decoder does), drops
/// unknown fields and returns the warnings to send, or fails under Strict. Unknown fields
/// the stored object already had (kept by an older version) are dropped silently: the
/// write did not bring them.
pub fn validate(
    def: &ResourceDef,
    obj: &mut Value,
    mode: FieldValidation,
    before: Option<&Value>,
) -> Result<Vec<String>, ApiError> {
    let Some(root) = Schemas::of_def(def) else {
        return Ok(Vec::new());
    };
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: {why}",
            kind = def.kind,
            version = def.version,
        ))
    };
    // Custom resources' values are checked against their schema by `crd` (422s, as
    // kube-apiserver's schema validation answers), not as Go's decoder would.
    let mut walk = Walk {
        path: String::new(),
        go_path: String::new(),
        unknown: Vec::new(),
        wrong: None,
        types: def.custom.is_none(),
    };
    walk.value(root, &def.kind, obj);
    if let Some(why) = walk.wrong.take() {
        // A value the stored object already had is not this write's mistake.
        let inherited = before.is_some_and(|b| {
            let mut old = Walk {
                path: String::new(),
                go_path: String::new(),
                unknown: Vec::new(),
                wrong: None,
                types: true,
            };
            old.value(root, &def.kind, &mut b.clone());
            old.wrong.as_deref() == Some(why.as_str())
        });
        if !inherited {
            return Err(cannot(why));
        }
    }
    if let (Some(before), false) = (before, walk.unknown.is_empty()) {
        let mut old = Walk {
            path: String::new(),
            go_path: String::new(),
            unknown: Vec::new(),
            wrong: None,
            types: false,
        };
        old.value(root, &def.kind, &mut before.clone());
        walk.unknown.retain(|p| !old.unknown.contains(p));
    }
    if walk.unknown.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = walk
        .unknown
        .iter()
        .map(|p| format!("unknown field {p:?}"))
        .collect();
    match mode {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(messages),
        FieldValidation::Strict => Err(cannot(format!(
            "strict decoding error: {}",
            messages.join(", ")
        ))),
    }
}

/// One pass over an object: unknown fields (removed) and the first value of the wrong
/// type.
struct Walk {
    /// `spec.containers[0].image`: how unknown fields are named.
    path: String,
    /// `spec.containers.image`: how Go's decoder names a field in a type error.
    go_path: String,
    unknown: Vec<String>,
    wrong: Option<String>,
    /// Whether values are type-checked.
    types: bool,
}

/// The JSON type of `v` as Go's decoder names it in errors.
fn json_type(v: &Value) -> String {
    match v {
        Value::String(_) => "string".into(),
        Value::Number(n) => format!("number {n}"),
        Value::Bool(_) => "bool".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
        Value::Null => "null".into(),
    }
}

/// The Go type of a position, as Go's decoder names it in errors.
fn go_type(node: &Node<'_>, expect: Expect<'_>) -> String {
    match expect {
        Expect::Integer(Some(f)) => f.to_string(),
        Expect::Integer(None) => "int".into(),
        Expect::Number => "float64".into(),
        Expect::Boolean => "bool".into(),
        Expect::String(_) => "string".into(),
        Expect::Array => match node.items().type_name() {
            Some(t) => format!("[]v1.{t}"),
            None => "[]string".into(),
        },
        Expect::Object => match node.type_name() {
            Some(t) => format!("v1.{t}"),
            None => "map[string]string".into(),
        },
        Expect::Any | Expect::NumberOrString => "interface {}".into(),
    }
}

impl Walk {
    fn value(&mut self, node: Node<'_>, parent: &str, v: &mut Value) {
        if self.types && self.wrong.is_none() {
            self.check_type(&node, parent, v);
        }
        match v {
            Value::Object(map) => {
                let here = node.type_name().unwrap_or(parent).to_string();
                let mut gone = Vec::new();
                for (key, child) in map.iter_mut() {
                    let (len, go_len) = (self.path.len(), self.go_path.len());
                    for p in [&mut self.path, &mut self.go_path] {
                        if !p.is_empty() {
                            p.push('.');
                        }
                        p.push_str(key);
                    }
                    match node.field(key) {
                        Some(n) => self.value(n, &here, child),
                        None => {
                            self.unknown.push(self.path.clone());
                            gone.push(key.clone());
                        }
                    }
                    self.path.truncate(len);
                    self.go_path.truncate(go_len);
                }
                for key in gone {
                    map.remove(&key);
                }
            }
            Value::Array(items) => {
                let item = node.items();
                for (i, child) in items.iter_mut().enumerate() {
                    let len = self.path.len();
                    self.path.push_str(&format!("[{i}]"));
                    self.value(item, parent, child);
                    self.path.truncate(len);
                }
            }
            _ => {}
        }
    }

    /// Records the first value whose JSON type the schema does not allow.
    fn check_type(&mut self, node: &Node<'_>, parent: &str, v: &Value) {
        let expect = node.expects();
        let fits = match (expect, v) {
            (_, Value::Null) | (Expect::Any, _) => true,
            (Expect::Object, Value::Object(_)) | (Expect::Array, Value::Array(_)) => true,
            (Expect::Boolean, Value::Bool(_)) | (Expect::Number, Value::Number(_)) => true,
            // Go's decoder refuses what does not fit the field's integer type.
            (Expect::Integer(Some("int32")), Value::Number(n)) => {
                n.as_i64().is_some_and(|i| i32::try_from(i).is_ok())
            }
            (Expect::Integer(_), Value::Number(n)) => n.is_i64(),
            (Expect::NumberOrString, Value::Number(_) | Value::String(_)) => true,
            (Expect::String(format), Value::String(s)) => {
                if let Some(why) = bad_format(format, s) {
                    self.wrong = Some(why);
                }
                true
            }
            _ => false,
        };
        if !fits {
            self.wrong = Some(format!(
                "json: cannot unmarshal {} into Go struct field {parent}.{} of type {}",
                json_type(v),
                self.go_path,
                go_type(node, expect)
            ));
        }
    }
}

/// Why a string does not decode as its format requires (times, base64 bytes).
fn bad_format(format: Option<&str>, s: &str) -> Option<String> {
    use base64::Engine;
    match format {
        Some("date-time") if chrono::DateTime::parse_from_rfc3339(s).is_err() => Some(format!(
            "parsing time {s:?} as \"2006-01-02T15:04:05Z07:00\": not an RFC 3339 time"
        )),
        // As Go's decoder: line breaks are skipped and trailing bits allowed.
        Some("byte") => match base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
        )
        .decode(s.replace(['\r', '\n'], ""))
        {
            Err(base64::DecodeError::InvalidByte(at, _)) => {
                Some(format!("illegal base64 data at input byte {at}"))
            }
            Err(_) => Some(format!(
                "illegal base64 data at input byte {}",
                s.len().saturating_sub(1)
            )),
            Ok(_) => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources;
    use serde_json::json;

    fn deployments() -> resources::Def {
        resources::lookup("apps", "v1", "deployments").expect("deployments")
    }

    fn with_unknowns() -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "bogus": 1,
            "metadata": {"name": "web", "labels": {"any": "label"}},
            "spec": {"replicas": 1, "replica": 2, "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                    {"name": "a", "image": "x", "imagePullPolicyy": "Always",
                     "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80, "hostport": 1}]}
                ]}}}
        })
    }

    #[test]
    fn unknown_fields_are_named_like_kube_apiserver_names_them() {
        let mut obj = with_unknowns();
        let warnings =
            validate(&deployments(), &mut obj, FieldValidation::Warn, None).expect("warn");
        assert_eq!(
            warnings,
            [
                "unknown field \"bogus\"",
                "unknown field \"spec.replica\"",
                "unknown field \"spec.template.spec.containers[0].imagePullPolicyy\"",
                "unknown field \"spec.template.spec.containers[0].ports[0].hostport\"",
            ]
        );
        // Dropped from the object; known fields (maps included) kept.
        assert!(obj.get("bogus").is_none());
        assert!(obj["spec"].get("replica").is_none());
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["metadata"]["labels"]["any"], "label");
        assert_eq!(
            obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "1"
        );
    }

    #[test]
    fn strict_refuses_and_ignore_drops_silently() {
        let mut obj = with_unknowns();
        let err =
            validate(&deployments(), &mut obj, FieldValidation::Strict, None).expect_err("strict");
        assert_eq!(err.code, 400);
        assert!(err.message.starts_with(
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"bogus\", "
        ), "{}", err.message);
        let mut obj = with_unknowns();
        assert!(
            validate(&deployments(), &mut obj, FieldValidation::Ignore, None)
                .expect("ignore")
                .is_empty()
        );
        assert!(obj.get("bogus").is_none());
        let mut clean =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}});
        assert!(
            validate(&deployments(), &mut clean, FieldValidation::Strict, None)
                .expect("clean")
                .is_empty()
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_like_gos_decoder_does() {
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": "two"}});
        let err =
            validate(&deployments(), &mut obj, FieldValidation::Ignore, None).expect_err("type");
        assert_eq!(err.code, 400);
        assert_eq!(
            err.message,
            "Deployment in version \"v1\" cannot be handled as a Deployment: json: cannot unmarshal string into Go struct field DeploymentSpec.spec.replicas of type int32"
        );
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1.5}]}]}}}});
        let err =
            validate(&deployments(), &mut obj, FieldValidation::Warn, None).expect_err("type");
        assert!(err.message.ends_with("json: cannot unmarshal number 1.5 into Go struct field ContainerPort.spec.template.spec.containers.ports.containerPort of type int32"), "{}", err.message);
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replicas": 3_000_000_000_i64}});
        let err =
            validate(&deployments(), &mut obj, FieldValidation::Warn, None).expect_err("int32");
        assert!(
            err.message.ends_with("json: cannot unmarshal number 3000000000 into Go struct field DeploymentSpec.spec.replicas of type int32"),
            "{}",
            err.message
        );
        let mut obj = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"containers": {"name": "a"}}}}});
        let err =
            validate(&deployments(), &mut obj, FieldValidation::Warn, None).expect_err("type");
        assert!(
            err.message.ends_with("of type []v1.Container"),
            "{}",
            err.message
        );
        // Quantities and int-or-strings take numbers and strings; nulls are absent values.
        let mut ok = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x", "labels": null},
            "spec": {"strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {"spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": 0.5, "memory": "1Gi"}}}]}}}});
        assert!(validate(&deployments(), &mut ok, FieldValidation::Strict, None).is_ok());
        let secrets = resources::lookup("", "v1", "secrets").expect("secrets");
        let mut bad = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "no!"}});
        let err = validate(&secrets, &mut bad, FieldValidation::Warn, None).expect_err("base64");
        assert!(
            err.message.ends_with("illegal base64 data at input byte 2"),
            "{}",
            err.message
        );
        let mut wrapped = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "aGVs\nbG8=\n"}});
        assert!(validate(&secrets, &mut wrapped, FieldValidation::Strict, None).is_ok());
        // A bad value already stored does not block other changes.
        let stored = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "no!"}});
        let mut relabelled = stored.clone();
        relabelled["metadata"]["labels"] = json!({"a": "b"});
        assert!(validate(
            &secrets,
            &mut relabelled,
            FieldValidation::Strict,
            Some(&stored)
        )
        .is_ok());
        // A revision's data is any JSON (RawExtension).
        let revisions = resources::lookup("apps", "v1", "controllerrevisions").expect("revs");
        let mut any = json!({"apiVersion": "apps/v1", "kind": "ControllerRevision", "metadata": {"name": "r"}, "revision": 1, "data": 7});
        assert!(validate(&revisions, &mut any, FieldValidation::Strict, None).is_ok());
        let mut time = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "creationTimestamp": "yesterday"}});
        assert!(validate(&secrets, &mut time, FieldValidation::Warn, None).is_err());
    }

    #[test]
    fn unknown_fields_already_stored_are_dropped_without_a_word() {
        let before = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"replica": 2}});
        let mut obj = before.clone();
        obj["spec"]["paused"] = json!(true);
        let w = validate(
            &deployments(),
            &mut obj,
            FieldValidation::Strict,
            Some(&before),
        )
        .expect("not this write's field");
        assert!(w.is_empty());
        obj["spec"]["pausd"] = json!(true);
        assert!(validate(
            &deployments(),
            &mut obj,
            FieldValidation::Strict,
            Some(&before)
        )
        .is_err());
    }

    #[test]
    fn directives_parse_as_kube_apiserver_takes_them() {
        assert_eq!(FieldValidation::parse(None), Ok(FieldValidation::Warn));
        assert_eq!(
            FieldValidation::parse(Some("Strict")),
            Ok(FieldValidation::Strict)
        );
        assert_eq!(
            FieldValidation::parse(Some("Ignore")),
            Ok(FieldValidation::Ignore)
        );
        assert_eq!(
            FieldValidation::parse(Some("nope")).map_err(|e| e.code),
            Err(400)
        );
    }
}
