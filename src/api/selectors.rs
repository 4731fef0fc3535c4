//! Label and field selectors as kubectl sends them (`-l`, `--field-selector`).

use serde_json::Value;

use super::resources::ResourceDef;
use super::status::ApiError;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; all requirements must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Requirement>);

fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_label_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 316
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        let bad = |part: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: invalid label selector {part:?}"
            ))
        };
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(open) = part.find('(') {
                let head = part[..open].trim();
                let body = part[open + 1..]
                    .strip_suffix(')')
                    .ok_or_else(|| bad(part))?;
                let values: Vec<String> = body
                    .split(',')
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty())
                    .collect();
                if let Some(k) = head.strip_suffix(" notin") {
                    Requirement::NotIn(k.trim().to_string(), values)
                } else if let Some(k) = head.strip_suffix(" in") {
                    Requirement::In(k.trim().to_string(), values)
                } else {
                    return Err(bad(part));
                }
            } else {
                Requirement::Exists(part.to_string())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::In(k, _)
                | Requirement::NotIn(k, _)
                | Requirement::Exists(k)
                | Requirement::NotExists(k) => k,
            };
            if !valid_label_part(key) {
                return Err(bad(part));
            }
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).map(|x| vs.iter().any(|v| v == x)).unwrap_or(false),
            Requirement::NotIn(k, vs) => get(k).map(|x| !vs.iter().any(|v| v == x)).unwrap_or(true),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed field selector over the fields pikube indexes: (JSON pointer of the field,
/// `=` rather than `!=`, value).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

const FIELDS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("spec.nodeName", "/spec/nodeName"),
    ("status.phase", "/status/phase"),
    ("spec.schedulerName", "/spec/schedulerName"),
    ("involvedObject.name", "/involvedObject/name"),
    ("involvedObject.namespace", "/involvedObject/namespace"),
    ("involvedObject.uid", "/involvedObject/uid"),
    ("involvedObject.kind", "/involvedObject/kind"),
    ("involvedObject.apiVersion", "/involvedObject/apiVersion"),
    (
        "involvedObject.resourceVersion",
        "/involvedObject/resourceVersion",
    ),
    ("involvedObject.fieldPath", "/involvedObject/fieldPath"),
    ("reason", "/reason"),
    ("reportingComponent", "/reportingComponent"),
    ("source", "/source/component"),
    ("type", "/type"),
    ("spec.unschedulable", "/spec/unschedulable"),
];

impl FieldSelector {
    /// Parses `a=b,c!=d` over the fields `def` supports (events.k8s.io Events have their
    /// own names); others are a 400, as kube-apiserver does.
    pub fn parse_for(def: &ResourceDef, s: &str) -> Result<Self, ApiError> {
        if super::event_versions::is_events_v1(def) {
            Self::parse_over(super::event_versions::FIELD_SELECTORS, s)
        } else {
            Self::parse(s)
        }
    }

    /// Parses `a=b,c!=d` over the supported fields; others are a 400, as kube-apiserver does.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Self::parse_over(FIELDS, s)
    }

    /// Parses over `fields` (field label, JSON pointer).
    fn parse_over(fields: &[(&str, &str)], s: &str) -> Result<Self, ApiError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, eq, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {part:?}"
                )));
            };
            let field = field.trim();
            let Some((_, pointer)) = fields.iter().find(|(f, _)| *f == field) else {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            };
            out.push((pointer.to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    /// Whether an object satisfies the selector.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(pointer, eq, want)| {
            let have = match obj.pointer(pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (have == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web,api)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app=web", true),
            ("app=web,tier=back", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&obj),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=p")
            .unwrap()
            .matches(&pod));
        assert!(
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed")
                .unwrap()
                .matches(&pod)
        );
        assert!(!FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=")
            .unwrap()
            .matches(&json!({"metadata": {}})));
        let err = FieldSelector::parse("spec.bogus=1").unwrap_err();
        assert_eq!(err.code, 400);
        // events.k8s.io names the involved object `regarding`; the core names are refused.
        let v1 = crate::api::resources::lookup("events.k8s.io", "v1", "events").unwrap();
        let ev = json!({"regarding": {"name": "p", "kind": "Pod"}, "reportingController": "c", "reason": "R"});
        let sel = FieldSelector::parse_for(
            &v1,
            "regarding.name=p,regarding.kind=Pod,reportingController=c,reason=R",
        )
        .unwrap();
        assert!(sel.matches(&ev));
        assert!(!FieldSelector::parse_for(&v1, "regarding.name=q")
            .unwrap()
            .matches(&ev));
        for core_only in ["involvedObject.name=p", "source=c", "reportingComponent=c"] {
            assert_eq!(
                FieldSelector::parse_for(&v1, core_only).unwrap_err().code,
                400
            );
        }
        let core = crate::api::resources::lookup("", "v1", "events").unwrap();
        assert!(FieldSelector::parse_for(&core, "involvedObject.name=p").is_ok());
        assert!(FieldSelector::parse_for(&core, "regarding.name=p").is_err());
    }
}
