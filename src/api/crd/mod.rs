//! CustomResourceDefinitions (apiextensions.k8s.io/v1): what a definition makes the
//! server serve. `definition.rs` checks definitions and sets their status (names
//! accepted, established); `values.rs` checks custom resources against their schema and
//! applies its defaults; [`follow`] keeps an API server's [`Catalog`] current from a
//! watch of the definitions, so every server of a cluster serves them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pikube_raft::{EventKind, Store, WatchRequest};
use serde_json::{json, Value};

use super::objects::from_stored;
use super::openapi::schema::Schemas;
use super::resources::{self, Catalog, Def, ResourceDef};
use super::rest::{self, ListOptions, Target};
use super::status::ApiError;

mod definition;
mod jsonpath;
pub mod printer;
mod values;

pub use definition::prepare;
pub use jsonpath::JsonPath;
pub use values::check as check_values;

/// The group of CustomResourceDefinitions.
pub const GROUP: &str = "apiextensions.k8s.io";

/// The `scale` subresource of a custom resource: where its replica counts are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScalePaths {
    /// JSON pointer of the desired count (`specReplicasPath`).
    pub spec_replicas: String,
    /// JSON pointer of the observed count (`statusReplicasPath`).
    pub status_replicas: String,
    /// JSON pointer of the label selector string (`labelSelectorPath`).
    pub label_selector: Option<String>,
}

/// One `additionalPrinterColumns` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `date`, …).
    pub type_: String,
    /// Where the value is (`jsonPath`).
    pub path: JsonPath,
    /// 0: always shown; more: with `-o wide`.
    pub priority: i64,
}

/// What a definition says of one served version of its resource.
#[derive(Debug)]
pub struct CustomVersion {
    /// The name of the definition (`<plural>.<group>`).
    pub crd: String,
    /// The schema, completed with `apiVersion`, `kind` and `metadata`, as published.
    pub schema: Value,
    /// The same with closed objects, as field validation and field management walk it.
    pub schemas: Schemas,
    /// Whether the `status` subresource is on.
    pub status: bool,
    /// The `scale` subresource, when on.
    pub scale: Option<ScalePaths>,
    /// Printer columns (`kubectl get`).
    pub columns: Vec<PrinterColumn>,
}

/// `.spec.replicas` → `/spec/replicas`; None for anything but simple field paths.
pub fn json_path_pointer(path: &str) -> Option<String> {
    JsonPath::parse(path)?.pointer()
}

/// The completed schema of a version: the definition's `openAPIV3Schema` with
/// `apiVersion`, `kind` and `metadata` (ObjectMeta) as kube-apiserver publishes it.
fn complete_schema(mut schema: Value) -> Value {
    if !schema.is_object() {
        schema = json!({"type": "object"});
    }
    let props = schema
        .as_object_mut()
        .map(|m| m.entry("properties").or_insert_with(|| json!({})));
    if let Some(Value::Object(p)) = props {
        p.insert("apiVersion".into(), json!({"type": "string"}));
        p.insert("kind".into(), json!({"type": "string"}));
        p.insert(
            "metadata".into(),
            json!({"$ref": Schemas::object_meta_ref()}),
        );
    }
    schema
}

/// The served versions of an established definition, as catalogue entries; none for a
/// definition that is not established (or no longer parses).
pub fn served_defs(crd: &Value) -> Vec<Def> {
    if !definition::is_established(crd) {
        return Vec::new();
    }
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let spec = &crd["spec"];
    let names = &crd["status"]["acceptedNames"];
    let strings = |v: &Value| crate::api::objects::strings(Some(v));
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    let group = text(&spec["group"]);
    let kind = text(&names["kind"]);
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] != json!(true) {
            continue;
        }
        let version = text(&v["name"]);
        let schema = complete_schema(v["schema"]["openAPIV3Schema"].clone());
        // What pruning walks: objects that list no fields keep none.
        let mut closed = schema.clone();
        values::close_objects(&mut closed);
        let subs = &v["subresources"];
        let pointer = |p: &Value| p.as_str().and_then(json_path_pointer);
        let scale = subs.get("scale").and_then(|s| {
            Some(ScalePaths {
                spec_replicas: pointer(&s["specReplicasPath"])?,
                status_replicas: pointer(&s["statusReplicasPath"])?,
                label_selector: pointer(&s["labelSelectorPath"]),
            })
        });
        let columns = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                Some(PrinterColumn {
                    name: c["name"].as_str()?.to_string(),
                    type_: c["type"].as_str().unwrap_or("string").to_string(),
                    path: JsonPath::parse(c["jsonPath"].as_str()?)?,
                    priority: c["priority"].as_i64().unwrap_or(0),
                })
            })
            .collect();
        let api_version = format!("{group}/{version}");
        out.push(Arc::new(ResourceDef {
            group: group.clone(),
            version,
            kind: kind.clone(),
            plural: text(&names["plural"]),
            singular: text(&names["singular"]),
            namespaced: spec["scope"] == json!("Namespaced"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            custom: Some(Arc::new(CustomVersion {
                crd: name.to_string(),
                schemas: Schemas::custom(&api_version, &kind, closed),
                schema,
                status: subs.get("status").is_some(),
                scale,
                columns,
            })),
        }));
    }
    out
}

/// The catalogue entry of CustomResourceDefinitions themselves.
pub fn definitions() -> Option<Def> {
    resources::lookup(GROUP, "v1", "customresourcedefinitions")
}

/// Whether `def` is CustomResourceDefinitions.
pub fn is_definitions(def: &ResourceDef) -> bool {
    def.is(GROUP, "CustomResourceDefinition")
}

/// Brings `catalog` up to date with a definition just written (or removed, `None`), so
/// its resources are served as soon as the write is answered.
pub fn install(catalog: &Catalog, name: &str, crd: Option<&Value>) {
    catalog.set(name, crd.map(served_defs).unwrap_or_default());
}

/// Keeps `catalog` current from the store: lists the definitions, then follows a watch
/// of them; relists after a lost watch. Runs until the store shuts down.
pub async fn follow(store: Store, catalog: Catalog) {
    loop {
        if let Err(e) = sync(&store, &catalog).await {
            if store.is_shut_down() {
                return;
            }
            tracing::warn!(error = %e.message, "following CustomResourceDefinitions");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Serves what the stored definitions define; returns the revision they were read at.
pub async fn load(store: &Store, catalog: &Catalog) -> Result<i64, ApiError> {
    let def = definitions().ok_or_else(|| ApiError::internal("no CRD resource"))?;
    let target = Target {
        def,
        namespace: None,
        name: None,
        subresource: None,
    };
    let listed = rest::list_stored(store, &target, &ListOptions::default()).await?;
    let rv: i64 = listed
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let mut all = Vec::new();
    for crd in listed["items"].as_array().into_iter().flatten() {
        all.extend(served_defs(crd));
    }
    catalog.reset(all);
    Ok(rv)
}

/// One list-then-watch round of [`follow`].
async fn sync(store: &Store, catalog: &Catalog) -> Result<(), ApiError> {
    let rv = load(store, catalog).await?;
    let prefix = definitions()
        .ok_or_else(|| ApiError::internal("no CRD resource"))?
        .storage_prefix();
    let mut watcher = store
        .watch(WatchRequest::prefix(prefix.clone().into_bytes(), rv + 1))
        .await?;
    while let Some(ev) = watcher.next().await {
        let ev = ev?;
        let key = String::from_utf8_lossy(&ev.kv.key);
        let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
        match ev.kind {
            EventKind::Delete => install(catalog, &name, None),
            EventKind::Put => {
                let crd = from_stored(&ev.kv.value, ev.kv.mod_revision)?;
                install(catalog, &name, Some(&crd));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
