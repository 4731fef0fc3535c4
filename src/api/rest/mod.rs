//! The verbs over stored objects: create, get, list, update, patch, delete,
//! deletecollection. Optimistic concurrency through the store's mod_revision compares.

use std::sync::Arc;

use pikube_raft::{Compare, Op, RangeRequest, Store, TxnRequest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::fields::FieldValidation;
use super::managed;
use super::objects::{self, from_stored, has_status, meta, meta_str};
use super::openapi::schema::Schemas;
use super::resources::{self, Def, ResourceDef};
use super::selectors::{FieldSelector, LabelSelector};
use super::services::{self, ServiceRanges};
use super::status::ApiError;

mod delete;
mod patch;
mod subresources;

pub use delete::{delete, delete_collection};
pub use patch::{apply, patch, PatchKind};
pub use subresources::{bind, get_scale, has_scale, update_scale};

/// Namespaces that can never be deleted.
const PROTECTED_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// Page size used when a list has no limit.
const SCAN_PAGE: usize = 500;

/// What a request addresses: a collection or one object of a resource.
#[derive(Clone, Debug)]
pub struct Target {
    /// The resource.
    pub def: Def,
    /// The namespace from the URL, for namespaced resources.
    pub namespace: Option<String>,
    /// The object name, for object requests.
    pub name: Option<String>,
    /// The subresource (`status`, …).
    pub subresource: Option<String>,
}

impl Target {
    fn key(&self, name: &str) -> String {
        self.def.storage_key(self.namespace.as_deref(), name)
    }

    /// The store prefix of the objects a list or watch of this target covers.
    pub fn collection_prefix(&self) -> String {
        match (&self.namespace, self.def.namespaced) {
            (Some(ns), true) => format!("{}{ns}/", self.def.storage_prefix()),
            _ => self.def.storage_prefix(),
        }
    }

    fn not_found(&self, name: &str) -> ApiError {
        ApiError::not_found(&self.def.plural, &self.def.group, name)
    }
}

/// What the write verbs need: the store, and the ranges Services get their addresses
/// from.
#[derive(Clone)]
pub struct Registry {
    /// The store objects live in.
    pub store: Store,
    /// ClusterIP and node port ranges.
    pub services: Arc<ServiceRanges>,
    /// Held from choosing reserved values to storing them, so the creates and updates
    /// this server runs at once do not pick the same free value and fail each other.
    pub allocating: Arc<tokio::sync::Mutex<()>>,
    /// The served resources (custom ones change with their definitions).
    pub catalog: resources::Catalog,
    /// Seconds new pods tolerate an unreachable node unless they say otherwise.
    pub unreachable_toleration_seconds: i64,
    /// What lists are served from.
    pub cache: super::cache::ListCache,
}

impl Registry {
    /// Whether objects of `def` hold values reserved under other keys.
    fn reserves(&self, def: &ResourceDef) -> bool {
        def.is("", "Service")
    }

    /// The allocation lock when objects of `def` reserve values, None otherwise.
    async fn allocation(&self, def: &ResourceDef) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if self.reserves(def) {
            Some(self.allocating.lock().await)
        } else {
            None
        }
    }

    /// Kind-specific defaults, checks and reservations of an object about to be
    /// stored over `old`.
    async fn prepare(
        &self,
        def: &ResourceDef,
        old: Option<&Value>,
        obj: &mut Value,
    ) -> Result<services::Reservations, ApiError> {
        if def.group == "batch" && def.custom.is_none() {
            super::batch::prepare(&def.kind, old, obj)?;
        }
        if super::crd::is_definitions(def) {
            super::crd::prepare(&self.catalog, old, obj)?;
        }
        if let Some(custom) = &def.custom {
            super::crd::check_values(def, custom, obj)?;
        }
        super::event_versions::validate(def, old, obj)?;
        if old.is_none() && def.kind == "Pod" && def.group.is_empty() {
            super::pod_admission::admit(&self.store, obj).await?;
            super::defaults::add_tolerations(
                obj,
                super::defaults::TOLERATION_SECONDS,
                self.unreachable_toleration_seconds,
            );
        }
        if old.is_none() && def.kind == "PersistentVolumeClaim" && def.group.is_empty() {
            super::storage_admission::admit(&self.store, obj).await?;
        }
        if old.is_none() && def.kind == "PersistentVolume" && def.group.is_empty() {
            super::storage_admission::admit_volume(obj);
        }
        if self.reserves(def) {
            return services::prepare(&self.store, &self.services, old, obj).await;
        }
        Ok(services::Reservations::default())
    }

    /// Frees what a removed object held.
    async fn removed(&self, def: &ResourceDef, obj: &Value) {
        if self.reserves(def) {
            let uid = meta_str(obj, "uid").unwrap_or("");
            services::release(&self.store, uid, &services::reservation_keys(obj)).await;
        }
    }
}

/// Options of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// labelSelector.
    pub labels: LabelSelector,
    /// fieldSelector.
    pub fields: FieldSelector,
    /// limit (0 = none).
    pub limit: usize,
    /// continue token.
    pub continue_token: Option<String>,
}

impl ListOptions {
    /// Whether an object passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }
}

#[derive(Serialize, Deserialize)]
struct ContinueToken {
    rv: i64,
    start: String,
}

fn encode_continue(rv: i64, start: &str) -> String {
    use base64::Engine;
    let raw = serde_json::to_vec(&ContinueToken {
        rv,
        start: start.to_string(),
    })
    .unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<ContinueToken, ApiError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| ApiError::bad_request("invalid continue token"))?;
    serde_json::from_slice(&raw).map_err(|_| ApiError::bad_request("invalid continue token"))
}

/// Refuses writes into a namespace that does not exist or is being deleted.
async fn check_namespace(store: &Store, target: &Target) -> Result<(), ApiError> {
    let (Some(ns), true) = (&target.namespace, target.def.namespaced) else {
        return Ok(());
    };
    let Some(nsdef) = resources::lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    match store.get(nsdef.storage_key(None, ns).as_bytes()).await? {
        None => Err(ApiError::not_found("namespaces", "", ns)),
        Some(kv) => {
            let obj = from_stored(&kv.value, kv.mod_revision)?;
            if obj.pointer("/metadata/deletionTimestamp").is_some()
                || obj.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating")
            {
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    &target.def.plural,
                    meta_str(&obj, "name").unwrap_or("")
                )));
            }
            Ok(())
        }
    }
}

/// Stores `obj` under `key` if the key is still at revision `rev`; the new revision, or
/// None when another write got in between.
async fn put_if_unchanged(
    store: &Store,
    def: &ResourceDef,
    key: &str,
    rev: i64,
    obj: &Value,
) -> Result<Option<i64>, ApiError> {
    let r = store
        .txn(TxnRequest {
            compare: vec![Compare::mod_revision_is(key.as_bytes().to_vec(), rev)],
            success: vec![Op::Put {
                key: key.as_bytes().to_vec(),
                value: objects::to_stored_as(def, obj)?,
                lease: 0,
            }],
            failure: vec![],
        })
        .await?;
    Ok(r.succeeded.then_some(r.revision))
}

/// Fills in server-set metadata of a new object and checks it.
fn prepare_new(target: &Target, obj: &mut Value) -> Result<String, ApiError> {
    objects::check_type(&target.def, obj)?;
    let def = &target.def;
    let m = meta(obj);
    let name = match m
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        Some(n) => n.to_string(),
        None => match m
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(prefix) => objects::generate_name(prefix),
            None => {
                return Err(ApiError::invalid(
                    &def.kind,
                    &def.group,
                    "",
                    vec![(
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ))
            }
        },
    };
    objects::validate_name(def, &name)?;
    super::workloads::prepare(def, None, obj)?;
    let m = meta(obj);
    if def.namespaced {
        let url_ns = target
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        match m.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != url_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {}
        }
        m.insert("namespace".into(), json!(url_ns));
    } else {
        m.remove("namespace");
    }
    m.insert("name".into(), json!(name));
    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    m.insert("creationTimestamp".into(), json!(objects::now_rfc3339()));
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    if obj.get("spec").is_some() {
        meta(obj).insert("generation".into(), json!(1));
    }
    if def.is("", "Namespace") {
        obj["status"] = json!({"phase": "Active"});
    }
    Ok(name)
}

/// How a write is carried out.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// Validate and answer without storing (`dryRun=All`).
    pub dry_run: bool,
    /// What to do with unknown fields; None for the server's own writes (not checked).
    pub fields: Option<FieldValidation>,
    /// The field manager recorded in `managedFields`; None for the server's own writes.
    pub manager: Option<String>,
    /// Server-side apply takes fields other managers own (`force=true`).
    pub force: bool,
}

impl WriteOptions {
    /// Checks `obj` by [`WriteOptions::fields`]: drops unknown fields, returns warnings.
    fn check_fields(
        &self,
        def: &ResourceDef,
        obj: &mut Value,
        before: Option<&Value>,
    ) -> Result<Vec<String>, ApiError> {
        match self.fields {
            Some(mode) => super::fields::validate(def, obj, mode, before),
            None => Ok(Vec::new()),
        }
    }

    /// Records in `new`'s `managedFields` what this write changed over `old`.
    fn track(&self, target: &Target, old: Option<&Value>, new: &mut Value) {
        if let Some(name) = &self.manager {
            let who = managed::Manager {
                name: name.clone(),
                apply: false,
                subresource: target.subresource.clone(),
            };
            let schema = Schemas::of(&target.def);
            managed::track_update(schema, old, new, &who, has_status(&target.def));
        }
    }

    /// The same options for a write whose fields were already checked and tracked.
    fn settled(&self) -> WriteOptions {
        WriteOptions {
            dry_run: self.dry_run,
            ..WriteOptions::default()
        }
    }
}

/// A written object, with the warnings to send its client.
#[derive(Debug)]
pub struct Written {
    /// The object as stored (or as it would be, on a dry run).
    pub object: Value,
    /// Warnings (dropped unknown fields).
    pub warnings: Vec<String>,
}

/// Creates an object.
pub async fn create(
    reg: &Registry,
    target: &Target,
    mut obj: Value,
    opts: WriteOptions,
) -> Result<Written, ApiError> {
    let dry_run = opts.dry_run;
    let store = &reg.store;
    let name = prepare_new(target, &mut obj)?;
    let ns_target = Target {
        namespace: meta_str(&obj, "namespace").map(String::from),
        ..target.clone()
    };
    check_namespace(store, &ns_target).await?;
    let key = ns_target.key(&name);
    let exists = || ApiError::already_exists(&target.def.plural, &target.def.group, &name);
    let warnings = opts.check_fields(&target.def, &mut obj, None)?;
    opts.track(target, None, &mut obj);
    let original = obj.clone();
    // A reservation taken by a concurrent create is retried with fresh values.
    for _ in 0..5 {
        let mut obj = original.clone();
        let _allocating = reg.allocation(&target.def).await;
        // An existing object is reported as such, before its values are checked.
        if reg.reserves(&target.def) && store.get(key.as_bytes()).await?.is_some() {
            return Err(exists());
        }
        let extra = reg.prepare(&target.def, None, &mut obj).await?;
        if dry_run {
            if store.get(key.as_bytes()).await?.is_some() {
                return Err(exists());
            }
            return Ok(Written {
                object: obj,
                warnings,
            });
        }
        let put = Op::Put {
            key: key.clone().into_bytes(),
            value: objects::to_stored_as(&target.def, &obj)?,
            lease: 0,
        };
        let r = store
            .txn(extra.txn(Compare::absent(key.clone()), put))
            .await?;
        if r.succeeded {
            meta(&mut obj).insert("resourceVersion".into(), json!(r.revision.to_string()));
            return Ok(Written {
                object: obj,
                warnings,
            });
        }
        if store.get(key.as_bytes()).await?.is_some() {
            return Err(exists());
        }
    }
    Err(ApiError::conflict(
        &target.def.plural,
        &target.def.group,
        &name,
    ))
}

/// Reads one object.
pub async fn get(store: &Store, target: &Target, name: &str) -> Result<Value, ApiError> {
    match store.get(target.key(name).as_bytes()).await? {
        Some(kv) => objects::read_stored(&target.def, &kv.value, kv.mod_revision),
        None => Err(target.not_found(name)),
    }
}

/// Lists objects (one page when `opts.limit` is set); returns the list object.
pub async fn list(
    reg: &Registry,
    target: &Target,
    opts: &ListOptions,
) -> Result<Listing, ApiError> {
    // The first page comes from the cache; later pages name the revision and key they
    // continue from, and the store reads them at that revision. Custom resources, whose
    // definitions change while serving, are read from the store.
    if opts.continue_token.is_none() && target.def.custom.is_none() {
        let prefix = target.collection_prefix();
        let listed = reg
            .cache
            .list(&target.def, &prefix, opts.limit, None, |o| opts.matches(o))
            .await?;
        if let Some(l) = listed {
            let mut metadata = json!({"resourceVersion": l.revision.to_string()});
            if let Some(k) = l.next_key {
                metadata["continue"] = json!(encode_continue(l.revision, &k));
            }
            return Ok(Listing {
                def: target.def.clone(),
                metadata,
                items: l.items,
            });
        }
    }
    let mut stored = list_stored(&reg.store, target, opts).await?;
    let items = match stored.get_mut("items").map(Value::take) {
        Some(Value::Array(items)) => items.into_iter().map(Arc::new).collect(),
        _ => Vec::new(),
    };
    Ok(Listing {
        def: target.def.clone(),
        metadata: stored
            .get_mut("metadata")
            .map(Value::take)
            .unwrap_or(json!({})),
        items,
    })
}

/// A list's objects, shared with the list cache rather than copied; serialises as the
/// resource's `…List`.
pub struct Listing {
    /// The listed resource.
    pub def: Def,
    /// The list's metadata (resourceVersion, continue).
    pub metadata: Value,
    /// The objects.
    pub items: Vec<Arc<Value>>,
}

impl Listing {
    /// The revision the list was read at.
    pub fn revision(&self) -> Result<i64, ApiError> {
        objects::parse_rv(
            self.metadata
                .get("resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("0"),
        )
    }
}

impl Serialize for Listing {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("kind", &self.def.list_kind())?;
        m.serialize_entry("apiVersion", &self.def.api_version())?;
        m.serialize_entry("metadata", &self.metadata)?;
        m.serialize_entry("items", &Items(&self.items))?;
        m.end()
    }
}

struct Items<'a>(&'a [Arc<Value>]);

impl Serialize for Items<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| v.as_ref()))
    }
}

/// [`list`] from the store.
pub async fn list_stored(
    store: &Store,
    target: &Target,
    opts: &ListOptions,
) -> Result<Value, ApiError> {
    let prefix = target.collection_prefix();
    let (mut rv, mut start) = match &opts.continue_token {
        Some(t) => {
            let t = decode_continue(t)?;
            if !t.start.starts_with(&prefix) {
                return Err(ApiError::bad_request(
                    "the continue token does not belong to this list",
                ));
            }
            (t.rv, t.start)
        }
        None => (0, prefix.clone()),
    };
    let end = pikube_raft::prefix_end(prefix.as_bytes());
    let mut items = Vec::new();
    let mut next_token = None;
    loop {
        let page = if opts.limit > 0 {
            (opts.limit - items.len()).max(1)
        } else {
            SCAN_PAGE
        };
        let req = RangeRequest {
            key: start.clone().into_bytes(),
            range_end: Some(end.clone()),
            limit: page,
            revision: rv,
            ..Default::default()
        };
        let resp = match store.range(req).await {
            Err(pikube_raft::Error::Compacted { .. }) if opts.continue_token.is_some() => {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ))
            }
            other => other?,
        };
        if rv == 0 {
            rv = resp.revision;
        }
        let last_key = resp.kvs.last().map(|kv| kv.key.clone());
        for kv in resp.kvs {
            let obj = objects::read_stored(&target.def, &kv.value, kv.mod_revision)?;
            if opts.matches(&obj) {
                items.push(obj);
            }
        }
        let Some(last) = last_key.filter(|_| resp.more) else {
            break;
        };
        start = format!("{}\0", String::from_utf8_lossy(&last));
        if opts.limit > 0 && items.len() >= opts.limit {
            next_token = Some(encode_continue(rv, &start));
            break;
        }
    }
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let Some(t) = next_token {
        metadata["continue"] = json!(t);
    }
    Ok(json!({
        "kind": target.def.list_kind(),
        "apiVersion": target.def.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
            m.remove("apiVersion");
            m.remove("kind");
        }
        v
    };
    strip(old) != strip(new)
}

/// Applies an already-merged new version of an object over `current` (read at
/// `current_rev`), keeping what clients cannot change. Removes the object when the last
/// finalizer of an object being deleted goes.
async fn write_update(
    reg: &Registry,
    target: &Target,
    name: &str,
    current: &Value,
    current_rev: i64,
    mut obj: Value,
    opts: WriteOptions,
) -> Result<Written, ApiError> {
    let store = &reg.store;
    let def = &target.def;
    let dry_run = opts.dry_run;
    objects::check_type(def, &mut obj)?;
    let warnings = opts.check_fields(def, &mut obj, Some(current))?;
    if meta_str(&obj, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta_str(&obj, "name").unwrap_or("")
        )));
    }
    if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty()) {
        if objects::parse_rv(rv)? != current_rev {
            return Err(ApiError::conflict(&def.plural, &def.group, name));
        }
    }
    let status_only = target.subresource.as_deref() == Some("status");
    if status_only {
        let mut merged = current.clone();
        merged["status"] = obj.get("status").cloned().unwrap_or(Value::Null);
        obj = merged;
    } else if has_status(def) {
        match current.get("status") {
            Some(s) => obj["status"] = s.clone(),
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    // Server-owned metadata is kept from the stored object.
    let keep = [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "generation",
    ];
    let cur_meta = current.get("metadata").cloned().unwrap_or(json!({}));
    {
        let m = meta(&mut obj);
        m.insert("name".into(), json!(name));
        for k in keep {
            match cur_meta.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
    }
    if !status_only {
        super::workloads::prepare(def, Some(current), &mut obj)?;
    }
    if !status_only && spec_changed(current, &obj) && obj.get("spec").is_some() {
        let g = cur_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        meta(&mut obj).insert("generation".into(), json!(g));
    }
    let _allocating = if status_only {
        None
    } else {
        reg.allocation(def).await
    };
    let mut extra = if status_only {
        services::Reservations::default()
    } else {
        reg.prepare(def, Some(current), &mut obj).await?
    };
    opts.track(target, Some(current), &mut obj);
    let key = target.key(name);
    // An object whose last finalizer goes is removed, unless it is a pod still within
    // its grace period: its agent removes it (with grace 0) once it has stopped.
    let finalizing = obj.pointer("/metadata/deletionTimestamp").is_some()
        && obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|f| f.is_empty())
            .unwrap_or(true)
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0;
    if dry_run {
        return Ok(Written {
            object: obj,
            warnings,
        });
    }
    let op = if finalizing {
        Op::Delete {
            key: key.clone().into_bytes(),
        }
    } else {
        Op::Put {
            key: key.clone().into_bytes(),
            value: objects::to_stored_as(def, &obj)?,
            lease: 0,
        }
    };
    let release = std::mem::take(&mut extra.release);
    // A removed object reserves nothing.
    let reserved = if finalizing {
        services::Reservations::default()
    } else {
        extra
    };
    let r = store
        .txn(reserved.txn(Compare::mod_revision_is(key, current_rev), op))
        .await?;
    if !r.succeeded {
        return Err(ApiError::conflict(&def.plural, &def.group, name));
    }
    if finalizing {
        reg.removed(def, current).await;
    } else if !release.is_empty() {
        services::release(store, meta_str(&obj, "uid").unwrap_or(""), &release).await;
    }
    meta(&mut obj).insert("resourceVersion".into(), json!(r.revision.to_string()));
    Ok(Written {
        object: obj,
        warnings,
    })
}

/// Writes `name` anew from its current state through `change`, which returns the new
/// object and whether it names the resourceVersion it was made from. Without one, a
/// concurrent write in between means `change` runs again on the newer object.
async fn rewrite(
    reg: &Registry,
    target: &Target,
    name: &str,
    opts: &WriteOptions,
    mut change: impl FnMut(&Value) -> Result<(Value, bool), ApiError>,
) -> Result<Written, ApiError> {
    for _ in 0..5 {
        let kv = reg
            .store
            .get(target.key(name).as_bytes())
            .await?
            .ok_or_else(|| target.not_found(name))?;
        let current = objects::read_stored(&target.def, &kv.value, kv.mod_revision)?;
        let (mut obj, explicit_rv) = change(&current)?;
        if !explicit_rv {
            meta(&mut obj).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        }
        let opts = opts.clone();
        match write_update(reg, target, name, &current, kv.mod_revision, obj, opts).await {
            Err(e) if e.reason == "Conflict" && !explicit_rv => continue,
            other => return other,
        }
    }
    Err(ApiError::conflict(
        &target.def.plural,
        &target.def.group,
        name,
    ))
}

/// Replaces an object (PUT), or its status with the `status` subresource.
pub async fn update(
    reg: &Registry,
    target: &Target,
    name: &str,
    obj: Value,
    opts: WriteOptions,
) -> Result<Written, ApiError> {
    let store = &reg.store;
    let kv = store
        .get(target.key(name).as_bytes())
        .await?
        .ok_or_else(|| target.not_found(name))?;
    let current = objects::read_stored(&target.def, &kv.value, kv.mod_revision)?;
    write_update(reg, target, name, &current, kv.mod_revision, obj, opts).await
}
