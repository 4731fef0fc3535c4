//! Field validation of written objects (`?fieldValidation=Ignore|Warn|Strict`), as
//! kube-apiserver does it: fields the kind's schema does not have are dropped — silently,
//! with a warning each (the default), or the write fails with 400 BadRequest (what kubectl
//! asks for since it validates on the server).

use serde_json::Value;

use super::openapi::schema::{Node, Schemas};
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

/// Applies `mode` to `obj`, an object of `def` about to be written: drops its unknown
/// fields and returns the warnings to send, or fails under Strict.
pub fn validate(
    def: &ResourceDef,
    obj: &mut Value,
    mode: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let Some(root) = Schemas::of_def(def) else {
        return Ok(Vec::new());
    };
    let mut unknown = Vec::new();
    let mut path = String::new();
    prune(
        root,
        obj,
        &mut path,
        &mut unknown,
        mode != FieldValidation::Strict,
    );
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    let messages: Vec<String> = unknown
        .iter()
        .map(|p| format!("unknown field {p:?}"))
        .collect();
    match mode {
        FieldValidation::Ignore => Ok(Vec::new()),
        FieldValidation::Warn => Ok(messages),
        FieldValidation::Strict => Err(ApiError::bad_request(format!(
            "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
            messages.join(", "),
            kind = def.kind,
            version = def.version,
        ))),
    }
}

/// Collects (and, with `drop`, removes) the fields of `v` its schema `node` lacks.
fn prune(node: Node<'_>, v: &mut Value, path: &mut String, out: &mut Vec<String>, drop: bool) {
    match v {
        Value::Object(map) => {
            let mut gone = Vec::new();
            for (key, child) in map.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match node.field(key) {
                    Some(n) => prune(n, child, path, out, drop),
                    None => {
                        out.push(path.clone());
                        gone.push(key.clone());
                    }
                }
                path.truncate(len);
            }
            if drop {
                for key in gone {
                    map.remove(&key);
                }
            }
        }
        Value::Array(items) => {
            let item = node.items();
            for (i, child) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                prune(item, child, path, out, drop);
                path.truncate(len);
            }
        }
        _ => {}
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
        let warnings = validate(&deployments(), &mut obj, FieldValidation::Warn).expect("warn");
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
        let err = validate(&deployments(), &mut obj, FieldValidation::Strict).expect_err("strict");
        assert_eq!(err.code, 400);
        assert!(err.message.starts_with(
            "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding error: unknown field \"bogus\", "
        ), "{}", err.message);
        let mut obj = with_unknowns();
        assert!(validate(&deployments(), &mut obj, FieldValidation::Ignore)
            .expect("ignore")
            .is_empty());
        assert!(obj.get("bogus").is_none());
        let mut clean =
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}});
        assert!(
            validate(&deployments(), &mut clean, FieldValidation::Strict)
                .expect("clean")
                .is_empty()
        );
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
