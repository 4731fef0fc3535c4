//! The OpenAPI v3 document of one group-version: the operations of its resources (what
//! kubectl reads to decide on server-side field validation) and their schemas (what
//! `kubectl explain` shows and client-side apply computes its patches from).

use serde_json::{json, Map, Value};

use crate::api::objects;
use crate::api::resources::{self, ResourceDef};
use crate::api::rest;

use super::generated::{GROUP_VERSIONS, SCHEMAS};
use super::schema::Schemas;

/// The document at `path` below /openapi/v3 (`api/v1`, `apis/apps/v1`), if served.
pub fn build(path: &str) -> Option<String> {
    let (_, members) = GROUP_VERSIONS.iter().find(|(p, _)| *p == path)?;
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let mut paths = Map::new();
    for def in resources::served().filter(|d| d.group == group && d.version == version) {
        add_paths(&mut paths, def);
    }
    // The schemas are spliced in as generated: no parse of the large part per request.
    let mut schemas = String::with_capacity(members.len() * 1024);
    schemas.push('{');
    for (i, &m) in members.iter().enumerate() {
        let (name, text) = SCHEMAS.get(usize::from(m))?;
        if i > 0 {
            schemas.push(',');
        }
        schemas.push_str(&Value::from(*name).to_string());
        schemas.push(':');
        schemas.push_str(text);
    }
    schemas.push('}');
    let head = json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
    })
    .to_string();
    // `{"info":…,"openapi":…,"paths":…}` + `,"components":{"schemas":…}}`.
    let mut doc = head;
    doc.pop();
    doc.push_str(",\"components\":{\"schemas\":");
    doc.push_str(&schemas);
    doc.push_str("}}");
    Some(doc)
}

/// The paths (below /openapi/v3) of every document.
pub fn paths() -> impl Iterator<Item = &'static str> {
    GROUP_VERSIONS.iter().map(|(p, _)| *p)
}

/// `networking.k8s.io` + `v1` → `NetworkingV1`, core → `CoreV1`: operation id parts.
fn group_version_id(def: &ResourceDef) -> String {
    let group = if def.group.is_empty() {
        "core"
    } else {
        def.group.trim_end_matches(".k8s.io")
    };
    let mut out = String::new();
    for part in group.split('.').chain([def.version.as_str()]) {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out
}

fn query(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        query("dryRun", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed", "string"),
        query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown fields. Valid values are: - Ignore: drops unknown fields silently. - Warn: drops unknown fields and sends a warning for each (the default). - Strict: fails the request on unknown fields.", "string"),
    ]
}

fn list_params() -> Vec<Value> {
    [
        (
            "allowWatchBookmarks",
            "requests watch events of type BOOKMARK",
            "boolean",
        ),
        (
            "continue",
            "the continue token of the previous page",
            "string",
        ),
        (
            "fieldSelector",
            "a selector restricting the list by the objects' fields",
            "string",
        ),
        (
            "labelSelector",
            "a selector restricting the list by the objects' labels",
            "string",
        ),
        (
            "limit",
            "the maximum number of objects of one page",
            "integer",
        ),
        (
            "resourceVersion",
            "which version of the list to serve or to watch from",
            "string",
        ),
        ("timeoutSeconds", "how long a watch lasts", "integer"),
        ("watch", "watch for changes instead of listing", "boolean"),
    ]
    .iter()
    .map(|(n, d, t)| query(n, d, t))
    .collect()
}

/// A reference to the schema `name` of the same document.
pub(super) fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// One operation: `action` (kube's x-kubernetes-action) on objects of `gvk`.
struct Op<'a> {
    id: String,
    action: &'a str,
    description: String,
    params: Vec<Value>,
    body: Option<(&'a [&'a str], Value)>,
    response: Value,
    gvk: Value,
}

impl Op<'_> {
    fn to_json(&self) -> Value {
        let mut op = json!({
            "operationId": self.id,
            "description": self.description,
            "parameters": self.params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": self.response}}},
                "401": {"description": "Unauthorized"},
            },
            "x-kubernetes-action": self.action,
            "x-kubernetes-group-version-kind": self.gvk,
        });
        if let Some((types, schema)) = &self.body {
            let content: Map<String, Value> = types
                .iter()
                .map(|t| (t.to_string(), json!({"schema": schema})))
                .collect();
            op["requestBody"] = json!({"required": true, "content": content});
        }
        op
    }
}

const PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
];
/// Custom resources take no strategic merge patch, but server-side apply.
const CUSTOM_PATCH_TYPES: &[&str] = &[
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
];
const BODY_TYPES: &[&str] = &["application/json", "application/yaml"];

/// The schema name of objects of `def` in its document.
fn schema_name(def: &ResourceDef) -> Option<String> {
    match &def.custom {
        Some(_) => Some(super::custom::schema_name(def)),
        None => Schemas::builtin()
            .schema_name(&def.api_version(), &def.kind)
            .map(String::from),
    }
}

/// Adds the operations on `def`'s objects (and their subresources) to `paths`.
pub(super) fn add_paths(paths: &mut Map<String, Value>, def: &ResourceDef) {
    let prefix = if def.group.is_empty() {
        format!("/api/{}", def.version)
    } else {
        format!("/apis/{}/{}", def.group, def.version)
    };
    let gv_id = group_version_id(def);
    let scope = if def.namespaced { "Namespaced" } else { "" };
    let kind = def.kind.as_str();
    let Some(name) = schema_name(def) else {
        return;
    };
    let object = schema_ref(&name);
    let list = schema_ref(&format!("{name}List"));
    let gvk = json!({"group": def.group, "kind": kind, "version": def.version});
    let collection = if def.namespaced {
        format!("{prefix}/namespaces/{{namespace}}/{}", def.plural)
    } else {
        format!("{prefix}/{}", def.plural)
    };
    let mut path_params = vec![];
    if def.namespaced {
        path_params.push(json!({"name": "namespace", "in": "path", "required": true, "description": "object name and auth scope, such as for teams and projects", "schema": {"type": "string", "uniqueItems": true}}));
    }
    let op = |verb: &str, action: &'static str, suffix: &str, params: Vec<Value>| Op {
        id: format!("{verb}{gv_id}{scope}{kind}{suffix}"),
        action,
        description: format!("{action} {kind}{suffix}"),
        params,
        body: None,
        response: object.clone(),
        gvk: gvk.clone(),
    };

    if def.is_review() {
        let mut create = op("create", "post", "", write_params());
        create.body = Some((BODY_TYPES, object.clone()));
        paths.insert(
            format!("{prefix}/{}", def.plural),
            json!({"post": create.to_json()}),
        );
        return;
    }

    let mut list_op = op("list", "list", "", list_params());
    list_op.response = list.clone();
    let mut create = op("create", "post", "", write_params());
    create.body = Some((BODY_TYPES, object.clone()));
    let mut delete_all = op("deleteCollection", "deletecollection", "", list_params());
    delete_all.response = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Status");
    paths.insert(
        collection.clone(),
        json!({
            "get": list_op.to_json(),
            "post": create.to_json(),
            "delete": delete_all.to_json(),
            "parameters": path_params,
        }),
    );
    if def.namespaced {
        let mut all = op("list", "list", "ForAllNamespaces", list_params());
        all.id = format!("list{gv_id}{kind}ForAllNamespaces");
        all.response = list;
        paths.insert(
            format!("{prefix}/{}", def.plural),
            json!({"get": all.to_json()}),
        );
    }

    let mut item_params = path_params.clone();
    item_params.insert(0, json!({"name": "name", "in": "path", "required": true, "description": format!("name of the {kind}"), "schema": {"type": "string", "uniqueItems": true}}));
    let mut subresources = vec![("", None)];
    if objects::has_status(def) {
        subresources.push(("Status", Some("status")));
    }
    if rest::has_scale(def) {
        subresources.push(("Scale", Some("scale")));
    }
    for (suffix, sub) in subresources {
        let mut get = op("read", "get", suffix, vec![]);
        let mut put = op("replace", "put", suffix, write_params());
        let mut patch = op("patch", "patch", suffix, write_params());
        if sub == Some("scale") {
            let scale = schema_ref("io.k8s.api.autoscaling.v1.Scale");
            let scale_gvk = json!({"group": "autoscaling", "kind": "Scale", "version": "v1"});
            for o in [&mut get, &mut put, &mut patch] {
                o.response = scale.clone();
                o.gvk = scale_gvk.clone();
            }
        }
        put.body = Some((BODY_TYPES, put.response.clone()));
        let patch_types = if def.custom.is_some() {
            CUSTOM_PATCH_TYPES
        } else {
            PATCH_TYPES
        };
        patch.body = Some((patch_types, json!({"type": "object"})));
        let mut item = json!({
            "get": get.to_json(),
            "put": put.to_json(),
            "patch": patch.to_json(),
            "parameters": item_params,
        });
        if sub.is_none() {
            let mut delete = op("delete", "delete", "", vec![
                query("gracePeriodSeconds", "the duration in seconds before the object should be deleted", "integer"),
                query("propagationPolicy", "whether and how garbage collection will be performed: Orphan, Background or Foreground", "string"),
                query("dryRun", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed", "string"),
            ]);
            delete.response = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Status");
            item["delete"] = delete.to_json();
        }
        let path = match sub {
            Some(s) => format!("{collection}/{{name}}/{s}"),
            None => format!("{collection}/{{name}}"),
        };
        paths.insert(path, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_document_parses_and_references_only_its_own_schemas() {
        for path in paths() {
            let text = build(path).expect("document");
            let doc: Value = serde_json::from_str(&text).expect("valid JSON");
            let schemas = doc["components"]["schemas"].as_object().expect("schemas");
            let mut refs = Vec::new();
            collect_refs(&doc, &mut refs);
            for r in refs {
                let name = r.trim_start_matches("#/components/schemas/");
                assert!(
                    schemas.contains_key(name),
                    "{path}: {r} is not in the document"
                );
            }
            // kubectl looks for a PATCH operation of each kind that takes fieldValidation.
            for def in resources::builtin().iter().filter(|d| {
                path == if d.group.is_empty() {
                    format!("api/{}", d.version)
                } else {
                    format!("apis/{}/{}", d.group, d.version)
                }
            }) {
                let found = doc["paths"].as_object().expect("paths").values().any(|p| {
                    p["patch"]["x-kubernetes-group-version-kind"]["kind"] == def.kind
                        && p["patch"]["parameters"]
                            .as_array()
                            .is_some_and(|ps| ps.iter().any(|q| q["name"] == "fieldValidation"))
                });
                assert!(
                    found,
                    "{path}: no PATCH with fieldValidation for {}",
                    def.kind
                );
            }
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|x| collect_refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn operation_ids_follow_kube_apiserver() {
        let doc: Value =
            serde_json::from_str(&build("apis/networking.k8s.io/v1").expect("doc")).expect("json");
        let op = &doc["paths"]
            ["/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses/{name}"]["patch"];
        assert_eq!(op["operationId"], "patchNetworkingV1NamespacedIngress");
        let doc: Value = serde_json::from_str(&build("api/v1").expect("doc")).expect("json");
        assert_eq!(
            doc["paths"]["/api/v1/nodes/{name}/status"]["get"]["operationId"],
            "readCoreV1NodeStatus"
        );
    }
}
