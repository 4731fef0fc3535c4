//! Generates the OpenAPI v3 schemas the API server publishes (`/openapi/v3`) and checks
//! objects against: k8s-openapi's JSON schemas of every served kind, completed with what
//! they lack — `x-kubernetes-group-version-kind` on each kind, the list kinds, and the
//! merge facts (`x-kubernetes-patch-strategy`, `-patch-merge-key`, `-list-type`,
//! `-list-map-keys`, `-map-type`) read from the `+` markers of the vendored `.proto` files.
//!
//! Output in OUT_DIR/openapi: one `components.schemas` object per group-version (with
//! descriptions, for the documents), `structure.json` (every schema once, without
//! descriptions, plus the kind → schema table, for validation and strategic merge) and
//! `generated.rs` (the table of group-versions and their files).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use k8s_openapi::api;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

/// One group-version: its kinds are added to `gen`, each as (kind, schema name).
struct GroupVersion {
    group: &'static str,
    version: &'static str,
    kinds: Vec<(&'static str, String)>,
    gen: SchemaGenerator,
}

impl GroupVersion {
    fn new(group: &'static str, version: &'static str) -> Self {
        let mut settings = SchemaSettings::openapi3();
        settings.definitions_path = "/components/schemas".into();
        GroupVersion {
            group,
            version,
            kinds: Vec::new(),
            gen: settings.into_generator(),
        }
    }

    /// Adds a served kind (it gets a GVK and a list kind).
    fn kind<T: JsonSchema>(mut self, kind: &'static str) -> Self {
        self.gen.subschema_for::<T>();
        self.kinds.push((kind, T::schema_name().into_owned()));
        self
    }

    /// Adds a schema the group's operations use without serving its kind here.
    fn uses<T: JsonSchema>(mut self) -> Self {
        self.gen.subschema_for::<T>();
        self
    }

    /// The URL path of its document below /openapi/v3.
    fn path(&self) -> String {
        if self.group.is_empty() {
            format!("api/{}", self.version)
        } else {
            format!("apis/{}/{}", self.group, self.version)
        }
    }
}

fn group_versions() -> Vec<GroupVersion> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let common = |gv: GroupVersion| gv.uses::<meta::Status>().uses::<meta::DeleteOptions>();
    vec![
        common(GroupVersion::new("", "v1"))
            .kind::<api::core::v1::Namespace>("Namespace")
            .kind::<api::core::v1::Pod>("Pod")
            .kind::<api::core::v1::Service>("Service")
            .kind::<api::core::v1::Endpoints>("Endpoints")
            .kind::<api::core::v1::Node>("Node")
            .kind::<api::core::v1::ConfigMap>("ConfigMap")
            .kind::<api::core::v1::Secret>("Secret")
            .kind::<api::core::v1::ServiceAccount>("ServiceAccount")
            .kind::<api::core::v1::Event>("Event")
            .kind::<api::core::v1::PersistentVolume>("PersistentVolume")
            .kind::<api::core::v1::PersistentVolumeClaim>("PersistentVolumeClaim")
            .kind::<api::core::v1::ResourceQuota>("ResourceQuota")
            .kind::<api::core::v1::LimitRange>("LimitRange")
            .kind::<api::core::v1::Binding>("Binding"),
        common(GroupVersion::new("apps", "v1"))
            .kind::<api::apps::v1::Deployment>("Deployment")
            .kind::<api::apps::v1::ReplicaSet>("ReplicaSet")
            .kind::<api::apps::v1::DaemonSet>("DaemonSet")
            .kind::<api::apps::v1::StatefulSet>("StatefulSet")
            .kind::<api::apps::v1::ControllerRevision>("ControllerRevision")
            .uses::<api::autoscaling::v1::Scale>(),
        common(GroupVersion::new("batch", "v1"))
            .kind::<api::batch::v1::Job>("Job")
            .kind::<api::batch::v1::CronJob>("CronJob"),
        common(GroupVersion::new("networking.k8s.io", "v1"))
            .kind::<api::networking::v1::Ingress>("Ingress")
            .kind::<api::networking::v1::IngressClass>("IngressClass")
            .kind::<api::networking::v1::NetworkPolicy>("NetworkPolicy"),
        common(GroupVersion::new("discovery.k8s.io", "v1"))
            .kind::<api::discovery::v1::EndpointSlice>("EndpointSlice"),
        common(GroupVersion::new("coordination.k8s.io", "v1"))
            .kind::<api::coordination::v1::Lease>("Lease"),
        common(GroupVersion::new("rbac.authorization.k8s.io", "v1"))
            .kind::<api::rbac::v1::Role>("Role")
            .kind::<api::rbac::v1::RoleBinding>("RoleBinding")
            .kind::<api::rbac::v1::ClusterRole>("ClusterRole")
            .kind::<api::rbac::v1::ClusterRoleBinding>("ClusterRoleBinding"),
        common(GroupVersion::new("storage.k8s.io", "v1"))
            .kind::<api::storage::v1::StorageClass>("StorageClass"),
        common(GroupVersion::new("events.k8s.io", "v1"))
            .kind::<api::events::v1::Event>("Event"),
        common(GroupVersion::new("policy", "v1"))
            .kind::<api::policy::v1::PodDisruptionBudget>("PodDisruptionBudget"),
        common(GroupVersion::new("autoscaling", "v2"))
            .kind::<api::autoscaling::v2::HorizontalPodAutoscaler>("HorizontalPodAutoscaler"),
        common(GroupVersion::new("apiextensions.k8s.io", "v1")).kind::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >("CustomResourceDefinition"),
        common(GroupVersion::new("authorization.k8s.io", "v1"))
            .kind::<api::authorization::v1::SelfSubjectAccessReview>("SelfSubjectAccessReview")
            .kind::<api::authorization::v1::SelfSubjectRulesReview>("SelfSubjectRulesReview"),
        common(GroupVersion::new("authentication.k8s.io", "v1"))
            .kind::<api::authentication::v1::SelfSubjectReview>("SelfSubjectReview")
            .kind::<api::authentication::v1::TokenReview>("TokenReview"),
    ]
}

/// The merge facts of one field, from its `+` markers.
#[derive(Default)]
struct Markers {
    patch_strategy: Option<String>,
    patch_merge_key: Option<String>,
    list_type: Option<String>,
    list_map_keys: Vec<String>,
    map_type: Option<String>,
    struct_type: Option<String>,
}

/// Markers of every field of every message: schema name → JSON field → markers; and the
/// inlined fields: schema name → schema names whose fields it takes over.
#[derive(Default)]
struct ProtoFacts {
    fields: BTreeMap<String, BTreeMap<String, Markers>>,
    inlined: BTreeMap<String, Vec<String>>,
    /// Messages marked `+structType=atomic`: owned and replaced as a whole.
    atomic: BTreeSet<String>,
}

/// `k8s.io.api.core.v1.Pod` → `io.k8s.api.core.v1.Pod`.
fn schema_name(proto_name: &str) -> String {
    let name = proto_name.trim_start_matches('.');
    match name.strip_prefix("k8s.io.") {
        Some(rest) => format!("io.k8s.{rest}"),
        None => name.to_string(),
    }
}

fn read_protos(dir: &Path, json_txt: &str, facts: &mut ProtoFacts) -> std::io::Result<()> {
    let mut renames = BTreeMap::new();
    let mut inline = BTreeSet::new();
    for line in json_txt.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["rename", field, json] => {
                renames.insert(field.to_string(), json.to_string());
            }
            ["inline", field] => {
                inline.insert(field.to_string());
            }
            _ => {}
        }
    }
    let mut files = Vec::new();
    super::protos(dir, &mut files)?;
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut package = String::new();
        let mut message: Option<String> = None;
        let mut markers = Markers::default();
        for line in text.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("package ") {
                package = p.trim_end_matches(';').to_string();
            } else if let Some(m) = line.strip_prefix("message ") {
                let name = m.trim_end_matches('{').trim();
                let full = format!("{package}.{name}");
                if std::mem::take(&mut markers).struct_type.as_deref() == Some("atomic") {
                    facts.atomic.insert(schema_name(&full));
                }
                message = Some(full);
            } else if let Some(c) = line.strip_prefix("// +") {
                let (k, v) = c.split_once('=').unwrap_or((c, ""));
                let v = v.trim().to_string();
                match k {
                    "patchStrategy" => markers.patch_strategy = Some(v),
                    "patchMergeKey" => markers.patch_merge_key = Some(v),
                    "listType" => markers.list_type = Some(v),
                    "listMapKey" => markers.list_map_keys.push(v),
                    "mapType" => markers.map_type = Some(v),
                    "structType" => markers.struct_type = Some(v),
                    _ => {}
                }
            } else if line.starts_with("//") || line.is_empty() {
            } else if line == "}" {
                message = None;
            } else if let (Some(msg), Some((decl, _))) = (&message, line.split_once('=')) {
                // `[optional|repeated] Type name` or `map<K, V> name`.
                let words: Vec<&str> = decl.split_whitespace().collect();
                let (Some(field), Some(ty)) = (words.last(), words.iter().rev().nth(1)) else {
                    continue;
                };
                let full = format!("{msg}.{field}");
                let json = renames.get(&full).cloned().unwrap_or(field.to_string());
                let owner = schema_name(msg);
                if inline.contains(&full) {
                    let ty = if ty.contains('.') {
                        schema_name(ty)
                    } else {
                        schema_name(&format!("{package}.{ty}"))
                    };
                    facts.inlined.entry(owner.clone()).or_default().push(ty);
                }
                let m = std::mem::take(&mut markers);
                if m.patch_strategy.is_some() || m.list_type.is_some() || m.map_type.is_some() {
                    facts.fields.entry(owner).or_default().insert(json, m);
                }
            }
        }
    }
    Ok(())
}

/// Adds the merge facts of `name`'s fields (and of the messages it inlines) to its schema.
fn add_markers(name: &str, schema: &mut Value, facts: &ProtoFacts) {
    if facts.atomic.contains(name) {
        if let Some(s) = schema.as_object_mut() {
            s.insert("x-kubernetes-map-type".into(), json!("atomic"));
        }
    }
    let mut owners = vec![name.to_string()];
    let mut i = 0;
    while i < owners.len() {
        if let Some(more) = facts.inlined.get(&owners[i]) {
            owners.extend(more.iter().cloned());
        }
        i += 1;
    }
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for owner in owners {
        let Some(fields) = facts.fields.get(&owner) else {
            continue;
        };
        for (field, m) in fields {
            let Some(p) = props.get_mut(field).and_then(Value::as_object_mut) else {
                continue;
            };
            if let Some(s) = &m.patch_strategy {
                p.insert("x-kubernetes-patch-strategy".into(), json!(s));
            }
            if let Some(k) = &m.patch_merge_key {
                p.insert("x-kubernetes-patch-merge-key".into(), json!(k));
            }
            if let Some(t) = &m.list_type {
                p.insert("x-kubernetes-list-type".into(), json!(t));
            }
            if !m.list_map_keys.is_empty() {
                p.insert("x-kubernetes-list-map-keys".into(), json!(m.list_map_keys));
            }
            if let Some(t) = &m.map_type {
                p.insert("x-kubernetes-map-type".into(), json!(t));
            }
        }
    }
}

fn gvk(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "kind": kind, "version": version}])
}

/// The schema of a list of `kind` objects, as kube-apiserver publishes it.
fn list_schema(group: &str, version: &str, kind: &str, item: &str) -> Value {
    json!({
        "description": format!("{kind}List is a list of {kind} objects."),
        "type": "object",
        "required": ["items"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."},
            "items": {
                "type": "array",
                "description": format!("List of {kind} objects."),
                "items": {"$ref": format!("#/components/schemas/{item}")},
            },
            "kind": {"type": "string", "description": "Kind is a string value representing the REST resource this object represents."},
            "metadata": {
                "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"}],
                "description": "Standard list metadata.",
            },
        },
        "x-kubernetes-group-version-kind": gvk(group, version, &format!("{kind}List")),
    })
}

/// The same schema without descriptions (validation needs only the structure); a
/// field named `description` (JSONSchemaProps has one) stays.
fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("description").is_some_and(Value::is_string) {
                m.remove("description");
            }
            for (k, child) in m.iter_mut() {
                if k == "properties" {
                    if let Value::Object(props) = child {
                        props.values_mut().for_each(strip_descriptions);
                    }
                } else {
                    strip_descriptions(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

pub fn generate(out_dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut facts = ProtoFacts::default();
    let json_txt = std::fs::read_to_string("proto/json.txt")?;
    read_protos(Path::new("proto/k8s.io"), &json_txt, &mut facts)?;
    let dir = out_dir.join("openapi");
    std::fs::create_dir_all(&dir)?;
    // Every schema once (documents share most of theirs), by name.
    let mut all: BTreeMap<String, Value> = BTreeMap::new();
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    let mut kinds = Map::new();
    for mut gv in group_versions() {
        // Every document has lists.
        gv.gen
            .subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
        let mut defs = gv.gen.take_definitions(true);
        for (name, schema) in defs.iter_mut() {
            add_markers(name, schema, &facts);
        }
        for (kind, name) in &gv.kinds {
            let list = list_schema(gv.group, gv.version, kind, name);
            defs.insert(format!("{name}List"), list);
            if let Some(s) = defs.get_mut(name).and_then(Value::as_object_mut) {
                s.insert(
                    "x-kubernetes-group-version-kind".into(),
                    gvk(gv.group, gv.version, kind),
                );
            }
            let api_version = if gv.group.is_empty() {
                gv.version.to_string()
            } else {
                format!("{}/{}", gv.group, gv.version)
            };
            kinds.insert(format!("{api_version}/{kind}"), json!(name));
        }
        members.push((gv.path(), defs.keys().cloned().collect()));
        all.extend(defs);
    }
    let index: BTreeMap<&String, usize> = all.keys().enumerate().map(|(i, k)| (k, i)).collect();
    let mut table = String::from(
        "/// Every published schema: (name, JSON).\n\
         pub static SCHEMAS: &[(&str, &str)] = &[\n",
    );
    let mut structure = Map::new();
    for (name, schema) in &all {
        table.push_str(&format!(
            "    ({name:?}, {:?}),\n",
            serde_json::to_string(schema)?
        ));
        let mut bare = schema.clone();
        strip_descriptions(&mut bare);
        structure.insert(name.clone(), bare);
    }
    table.push_str(
        "];\n\n/// Group-versions with a document: (URL path below /openapi/v3, its schemas).\n\
         pub static GROUP_VERSIONS: &[(&str, &[u16])] = &[\n",
    );
    for (path, names) in &members {
        let ids: Vec<String> = names.iter().map(|n| index[n].to_string()).collect();
        table.push_str(&format!("    ({path:?}, &[{}]),\n", ids.join(", ")));
    }
    table.push_str("];\n");
    let structure = json!({"schemas": structure, "kinds": kinds});
    std::fs::write(
        dir.join("structure.json"),
        serde_json::to_string(&structure)?,
    )?;
    std::fs::write(dir.join("generated.rs"), table)?;
    Ok(())
}
