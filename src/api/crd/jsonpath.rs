//! The JSONPath of printer columns, in the subset CRDs use: fields (`.a.b`), indexes
//! (`[0]`), every item (`[*]`) and filters by a field's value
//! (`[?(@.type=="Ready")]`), with or without `{…}` around.

use serde_json::Value;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    /// Items whose field (a dotted path below `@`) equals the value.
    Filter(Vec<String>, String),
}

/// A parsed printer column path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

impl JsonPath {
    /// Parses `path`; None when it is outside the supported subset.
    pub fn parse(path: &str) -> Option<JsonPath> {
        let p = path.trim();
        let p = p
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(p);
        let mut rest = p.strip_prefix('$').unwrap_or(p);
        if !rest.starts_with('.') && !rest.starts_with('[') {
            return None;
        }
        let mut steps = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let name = &r[..end];
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_alphanumeric() || "-_/".contains(c))
                {
                    return None;
                }
                steps.push(Step::Field(name.to_string()));
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let end = r.find(']')?;
                let inner = r[..end].trim();
                steps.push(Self::bracket(inner)?);
                rest = &r[end + 1..];
            } else {
                return None;
            }
        }
        (!steps.is_empty()).then_some(JsonPath(steps))
    }

    fn bracket(inner: &str) -> Option<Step> {
        if inner == "*" {
            return Some(Step::All);
        }
        if let Ok(i) = inner.parse::<usize>() {
            return Some(Step::Index(i));
        }
        let cond = inner.strip_prefix("?(")?.strip_suffix(')')?;
        let (lhs, rhs) = cond.split_once("==")?;
        let field: Vec<String> = lhs
            .trim()
            .strip_prefix("@.")?
            .split('.')
            .map(String::from)
            .collect();
        let rhs = rhs.trim();
        let value = rhs
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| rhs.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))?;
        if field.iter().any(String::is_empty) {
            return None;
        }
        Some(Step::Filter(field, value.to_string()))
    }

    /// The JSON pointer of a path of fields only (`/spec/replicas`), for the `scale`
    /// subresource.
    pub fn pointer(&self) -> Option<String> {
        let mut out = String::new();
        for step in &self.0 {
            let Step::Field(name) = step else {
                return None;
            };
            out.push('/');
            out.push_str(&name.replace('~', "~0").replace('/', "~1"));
        }
        Some(out)
    }

    /// The value at this path in `obj`: the one match, several joined with `,` as
    /// kubectl prints them, or Null.
    pub fn eval(&self, obj: &Value) -> Value {
        let mut current: Vec<&Value> = vec![obj];
        for step in &self.0 {
            let mut next = Vec::new();
            for v in current {
                match step {
                    Step::Field(name) => next.extend(v.get(name.as_str())),
                    Step::Index(i) => next.extend(v.get(*i)),
                    Step::All => next.extend(v.as_array().into_iter().flatten()),
                    Step::Filter(field, want) => {
                        next.extend(v.as_array().into_iter().flatten().filter(|item| {
                            let mut at = Some(*item);
                            for f in field {
                                at = at.and_then(|x| x.get(f.as_str()));
                            }
                            match at {
                                Some(Value::String(s)) => s == want,
                                Some(other) => {
                                    serde_json::from_str::<Value>(want).is_ok_and(|w| *other == w)
                                }
                                None => false,
                            }
                        }))
                    }
                }
            }
            current = next;
        }
        match current.as_slice() {
            [] => Value::Null,
            [one] => (*one).clone(),
            many => Value::String(
                many.iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn printer_column_paths_evaluate_like_kubectl() {
        let obj = json!({"spec": {"replicas": 3, "ports": [{"port": 80}, {"port": 443}]},
            "status": {"conditions": [
                {"type": "Issuing", "status": "False"},
                {"type": "Ready", "status": "True", "message": "ok"}]}});
        let eval = |p: &str| JsonPath::parse(p).expect(p).eval(&obj);
        assert_eq!(eval(".spec.replicas"), json!(3));
        assert_eq!(eval("{.spec.ports[1].port}"), json!(443));
        assert_eq!(eval(".spec.ports[*].port"), json!("80,443"));
        assert_eq!(
            eval(r#".status.conditions[?(@.type=="Ready")].status"#),
            json!("True")
        );
        assert_eq!(
            eval(".status.conditions[?(@.type=='Ready')].message"),
            json!("ok")
        );
        assert_eq!(eval(".spec.missing"), Value::Null);
        assert_eq!(
            JsonPath::parse(".spec.replicas").and_then(|p| p.pointer()),
            Some("/spec/replicas".into())
        );
        assert_eq!(
            JsonPath::parse(".spec.ports[0]").and_then(|p| p.pointer()),
            None
        );
        for bad in ["spec", ".", ".a[", ".a[?(@.x>1)]", ".a b"] {
            assert!(JsonPath::parse(bad).is_none(), "{bad}");
        }
    }
}
