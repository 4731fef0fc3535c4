//! The OpenAPI v3 documents of custom resources: one per group-version that established
//! CustomResourceDefinitions serve, with the operations (PATCH lists `fieldValidation`, so
//! kubectl validates on the server), each kind's schema from its definition, its list
//! kind, and the built-in schemas they refer to (ObjectMeta and what it uses, Status,
//! Scale). Built per request from the catalogue: definitions change while serving.

use serde_json::{json, Map, Value};

use super::document::{add_paths, schema_ref};
use super::generated::SCHEMAS;
use crate::api::resources::{Catalog, Def, ResourceDef};

/// kube-apiserver's name of a custom kind's schema: the reversed group, the version and
/// the kind (`com.example.v1.Widget`).
pub fn schema_name(def: &ResourceDef) -> String {
    let group: Vec<&str> = def.group.split('.').rev().collect();
    format!("{}.{}.{}", group.join("."), def.version, def.kind)
}

/// The paths (below /openapi/v3) of the custom group-versions served now.
pub fn paths(catalog: &Catalog) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in catalog.custom() {
        let p = format!("apis/{}/{}", d.group, d.version);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The built-in schemas custom resource documents refer to, with everything they refer
/// to in turn.
fn builtin_closure(mut wanted: Vec<String>) -> Map<String, Value> {
    let mut out = Map::new();
    while let Some(name) = wanted.pop() {
        if out.contains_key(&name) {
            continue;
        }
        let Some((_, text)) = SCHEMAS.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let Ok(schema) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        collect_refs(&schema, &mut wanted);
        out.insert(name, schema);
    }
    out
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(r) = m
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
            {
                out.push(r.to_string());
            }
            m.values().for_each(|x| collect_refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// The schemas of one custom kind: the object's and its list's.
fn kind_schemas(def: &Def, schemas: &mut Map<String, Value>) {
    let Some(custom) = &def.custom else {
        return;
    };
    let name = schema_name(def);
    let gvk = |kind: String| json!([{"group": def.group, "version": def.version, "kind": kind}]);
    let mut object = custom.schema.clone();
    object["x-kubernetes-group-version-kind"] = gvk(def.kind.clone());
    schemas.insert(name.clone(), object);
    schemas.insert(
        format!("{name}List"),
        json!({
            "description": format!("{} is a list of {}", def.list_kind(), def.kind),
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "items": {"type": "array", "items": schema_ref(&name)},
                "metadata": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"),
            },
            "x-kubernetes-group-version-kind": gvk(def.list_kind()),
        }),
    );
}

/// The document of the custom group-version at `path` (`apis/<group>/<version>`).
pub fn build(catalog: &Catalog, path: &str) -> Option<String> {
    let defs: Vec<Def> = catalog
        .custom()
        .into_iter()
        .filter(|d| format!("apis/{}/{}", d.group, d.version) == path)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = builtin_closure(
        [
            "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta",
            "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
            "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
            "io.k8s.api.autoscaling.v1.Scale",
        ]
        .map(String::from)
        .to_vec(),
    );
    for def in &defs {
        add_paths(&mut paths, def);
        kind_schemas(def, &mut schemas);
    }
    Some(
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
            "paths": paths,
            "components": {"schemas": schemas},
        })
        .to_string(),
    )
}
