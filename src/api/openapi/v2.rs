//! OpenAPI v2 (`/openapi/v2`), derived from the v3 documents: kubectl up to 1.28 reads
//! it — in gnostic's protobuf encoding — for `apply` on existing objects and `explain`.

use serde_json::{json, Map, Value};

use super::document;

/// The media type of the protobuf encoding (kubectl asks for it with `@v1.0`, which Go's
/// media type parser refuses in an answer; kube-apiserver answers with `.v1.0`).
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// Whether an Accept header asks for the protobuf encoding (either spelling).
pub fn wants_protobuf(accept: &str) -> bool {
    accept.contains("com.github.proto-openapi.spec.v2")
}

/// The whole v2 document (every group-version) in JSON.
pub fn json() -> Value {
    let mut paths = Map::new();
    let mut definitions = Map::new();
    for p in document::paths() {
        let Some(doc) = document::build(p).and_then(|d| serde_json::from_str::<Value>(&d).ok())
        else {
            continue;
        };
        if let Some(schemas) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (name, s) in schemas {
                definitions.insert(name.clone(), schema(s));
            }
        }
        if let Some(ps) = doc.get("paths").and_then(Value::as_object) {
            for (path, item) in ps {
                paths.insert(path.clone(), path_item(item));
            }
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "definitions": definitions,
    })
}

/// A v3 schema in v2 terms: references to `#/definitions/`, and a reference wrapped in
/// `allOf` (how v3 gives it a description) as a plain `$ref`.
fn schema(s: &Value) -> Value {
    match s {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        out.insert(
                            k.clone(),
                            json!(r.replace("#/components/schemas/", "#/definitions/")),
                        );
                    }
                    ("allOf", Value::Array(all))
                        if all.len() == 1 && all[0].get("$ref").is_some() =>
                    {
                        if let Value::Object(inner) = schema(&all[0]) {
                            out.extend(inner);
                        }
                    }
                    _ => {
                        out.insert(k.clone(), schema(v));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(schema).collect()),
        other => other.clone(),
    }
}

/// A v3 parameter (`schema.type`) as a v2 one (`type` beside it).
fn parameter(p: &Value) -> Value {
    let mut out = Map::new();
    for k in ["name", "in", "description", "required"] {
        if let Some(v) = p.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    if let Some(s) = p.get("schema").and_then(Value::as_object) {
        for (k, v) in s {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn operation(op: &Value) -> Value {
    let mut out = Map::new();
    for k in [
        "operationId",
        "description",
        "x-kubernetes-action",
        "x-kubernetes-group-version-kind",
    ] {
        if let Some(v) = op.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    let mut params: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .map(|ps| ps.iter().map(parameter).collect())
        .unwrap_or_default();
    if let Some(content) = op
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
    {
        out.insert("consumes".into(), json!(content.keys().collect::<Vec<_>>()));
        if let Some(s) = content.values().next().and_then(|c| c.get("schema")) {
            params
                .push(json!({"name": "body", "in": "body", "required": true, "schema": schema(s)}));
        }
    }
    out.insert("parameters".into(), Value::Array(params));
    out.insert("produces".into(), json!(["application/json"]));
    let mut responses = Map::new();
    if let Some(rs) = op.get("responses").and_then(Value::as_object) {
        for (code, r) in rs {
            let mut resp =
                json!({"description": r.get("description").cloned().unwrap_or(json!(""))});
            if let Some(s) = r.pointer("/content/application~1json/schema") {
                resp["schema"] = schema(s);
            }
            responses.insert(code.clone(), resp);
        }
    }
    out.insert("responses".into(), Value::Object(responses));
    Value::Object(out)
}

fn path_item(item: &Value) -> Value {
    let mut out = Map::new();
    if let Some(m) = item.as_object() {
        for (k, v) in m {
            if k == "parameters" {
                let ps: Vec<Value> = v
                    .as_array()
                    .map(|a| a.iter().map(parameter).collect())
                    .unwrap_or_default();
                out.insert(k.clone(), Value::Array(ps));
            } else {
                out.insert(k.clone(), operation(v));
            }
        }
    }
    Value::Object(out)
}

/// A protobuf message being written (proto3: default values are left out).
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.key(field, 2);
            self.varint(s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
        }
    }

    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }

    fn int64(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }

    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn message(&mut self, field: u32, write: impl FnOnce(&mut Pb)) {
        let mut sub = Pb::default();
        write(&mut sub);
        self.key(field, 2);
        self.varint(sub.0.len() as u64);
        self.0.extend_from_slice(&sub.0);
    }

    /// gnostic's `Any`: the value as YAML (JSON is YAML).
    fn any(&mut self, field: u32, v: &Value) {
        self.message(field, |a| a.string(2, &v.to_string()));
    }

    /// gnostic's `NamedAny` for each `x-` extension of `m`.
    fn extensions(&mut self, field: u32, m: &Map<String, Value>) {
        for (k, v) in m.iter().filter(|(k, _)| k.starts_with("x-")) {
            self.message(field, |n| {
                n.string(1, k);
                n.any(2, v);
            });
        }
    }
}

fn str_of<'a>(m: &'a Map<String, Value>, k: &str) -> &'a str {
    m.get(k).and_then(Value::as_str).unwrap_or("")
}

/// gnostic `openapi.v2.Schema`.
fn encode_schema(pb: &mut Pb, s: &Value) {
    let Some(m) = s.as_object() else {
        return;
    };
    pb.string(1, str_of(m, "$ref"));
    pb.string(2, str_of(m, "format"));
    pb.string(3, str_of(m, "title"));
    pb.string(4, str_of(m, "description"));
    if let Some(d) = m.get("default") {
        pb.any(5, d);
    }
    let num = |k: &str| m.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let int = |k: &str| m.get(k).and_then(Value::as_i64).unwrap_or(0);
    pb.double(7, num("maximum"));
    pb.double(9, num("minimum"));
    pb.int64(11, int("maxLength"));
    pb.int64(12, int("minLength"));
    pb.string(13, str_of(m, "pattern"));
    pb.int64(14, int("maxItems"));
    pb.int64(15, int("minItems"));
    pb.boolean(16, m.get("uniqueItems") == Some(&Value::Bool(true)));
    for r in m
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.string(19, r.as_str().unwrap_or(""));
    }
    for e in m
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.any(20, e);
    }
    match m.get("additionalProperties") {
        Some(Value::Bool(b)) => pb.message(21, |a| {
            a.key(2, 0);
            a.varint(u64::from(*b));
        }),
        Some(ap @ Value::Object(_)) => pb.message(21, |a| a.message(1, |s| encode_schema(s, ap))),
        _ => {}
    }
    if let Some(t) = m.get("type").and_then(Value::as_str) {
        pb.message(22, |ti| ti.string(1, t));
    }
    if let Some(items) = m.get("items") {
        pb.message(23, |ii| ii.message(1, |s| encode_schema(s, items)));
    }
    for a in m
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.message(24, |s| encode_schema(s, a));
    }
    if let Some(props) = m.get("properties").and_then(Value::as_object) {
        pb.message(25, |ps| {
            for (name, p) in props {
                ps.message(1, |ns| {
                    ns.string(1, name);
                    ns.message(2, |s| encode_schema(s, p));
                });
            }
        });
    }
    pb.boolean(27, m.get("readOnly") == Some(&Value::Bool(true)));
    pb.extensions(31, m);
}

/// gnostic `openapi.v2.ParametersItem`.
fn encode_parameter(pb: &mut Pb, p: &Value) {
    let Some(m) = p.as_object() else {
        return;
    };
    let required = m.get("required") == Some(&Value::Bool(true));
    let unique = m.get("uniqueItems") == Some(&Value::Bool(true));
    pb.message(1, |param| match str_of(m, "in") {
        "body" => param.message(1, |b| {
            b.string(1, str_of(m, "description"));
            b.string(2, str_of(m, "name"));
            b.string(3, "body");
            b.boolean(4, required);
            if let Some(s) = m.get("schema") {
                b.message(5, |x| encode_schema(x, s));
            }
        }),
        place => param.message(2, |nb| {
            // NonBodyParameter: 3 query, 4 path; their `type` and `uniqueItems` differ in number.
            let (which, ty, uniq) = if place == "path" {
                (4, 5, 19)
            } else {
                (3, 6, 20)
            };
            nb.message(which, |q| {
                q.boolean(1, required);
                q.string(2, place);
                q.string(3, str_of(m, "description"));
                q.string(4, str_of(m, "name"));
                q.string(ty, str_of(m, "type"));
                q.boolean(uniq, unique);
            });
        }),
    });
}

fn encode_operation(pb: &mut Pb, op: &Value) {
    let Some(m) = op.as_object() else {
        return;
    };
    pb.string(3, str_of(m, "description"));
    pb.string(5, str_of(m, "operationId"));
    for t in m
        .get("produces")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.string(6, t.as_str().unwrap_or(""));
    }
    for t in m
        .get("consumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.string(7, t.as_str().unwrap_or(""));
    }
    for p in m
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.message(8, |x| encode_parameter(x, p));
    }
    if let Some(rs) = m.get("responses").and_then(Value::as_object) {
        pb.message(9, |responses| {
            for (code, r) in rs {
                responses.message(1, |named| {
                    named.string(1, code);
                    named.message(2, |value| {
                        value.message(1, |resp| {
                            resp.string(
                                1,
                                r.get("description").and_then(Value::as_str).unwrap_or(""),
                            );
                            if let Some(s) = r.get("schema") {
                                resp.message(2, |item| item.message(1, |x| encode_schema(x, s)));
                            }
                        });
                    });
                });
            }
        });
    }
    pb.extensions(13, m);
}

/// The document from [`json`] in gnostic's `openapi.v2.Document` protobuf encoding.
pub fn protobuf(doc: &Value) -> Vec<u8> {
    let mut pb = Pb::default();
    pb.string(
        1,
        doc.get("swagger").and_then(Value::as_str).unwrap_or("2.0"),
    );
    pb.message(2, |info| {
        info.string(1, "Kubernetes");
        info.string(2, "v1.33.0");
    });
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        pb.message(8, |ps| {
            for (path, item) in paths {
                ps.message(2, |named| {
                    named.string(1, path);
                    named.message(2, |pi| {
                        for (field, verb) in [
                            (2, "get"),
                            (3, "put"),
                            (4, "post"),
                            (5, "delete"),
                            (8, "patch"),
                        ] {
                            if let Some(op) = item.get(verb) {
                                pi.message(field, |o| encode_operation(o, op));
                            }
                        }
                        for p in item
                            .get("parameters")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            pi.message(9, |x| encode_parameter(x, p));
                        }
                    });
                });
            }
        });
    }
    if let Some(defs) = doc.get("definitions").and_then(Value::as_object) {
        pb.message(9, |ds| {
            for (name, s) in defs {
                ds.message(1, |named| {
                    named.string(1, name);
                    named.message(2, |x| encode_schema(x, s));
                });
            }
        });
    }
    pb.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_become_v2_references() {
        let doc = json();
        let spec = &doc["definitions"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"];
        assert_eq!(
            spec["$ref"],
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(spec.get("allOf").is_none());
        assert!(spec["description"].as_str().is_some_and(|d| !d.is_empty()));
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"].as_array().is_some_and(|ps| ps
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["type"] == "string")));
        assert!(patch["parameters"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["in"] == "body")));
    }

    #[test]
    fn protobuf_varints_and_nesting() {
        let mut pb = Pb::default();
        pb.varint(300);
        assert_eq!(pb.0, [0xac, 0x02]);
        let mut pb = Pb::default();
        pb.message(2, |m| m.string(1, "ab"));
        assert_eq!(pb.0, [0x12, 4, 0x0a, 2, b'a', b'b']);
        let bytes = protobuf(&json());
        assert!(bytes.len() > 100_000);
        assert_eq!(&bytes[..5], &[0x0a, 3, b'2', b'.', b'0']);
    }
}
