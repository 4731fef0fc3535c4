//! Deletion: finalizers and grace periods, propagation to dependents, namespaces with
//! their contents, deletecollection.

use super::*;

/// Deletes an object: at once, or by marking it when finalizers must run first.
/// A namespace takes its contents with it.
pub async fn delete(
    reg: &Registry,
    target: &Target,
    name: &str,
    opts: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let store = &reg.store;
    let def = &target.def;
    if def.is("", "Namespace") && PROTECTED_NAMESPACES.contains(&name) {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    for _ in 0..5 {
        let key = target.key(name);
        let kv = store
            .get(key.as_bytes())
            .await?
            .ok_or_else(|| target.not_found(name))?;
        let mut current = objects::read_stored(def, &kv.value, kv.mod_revision)?;
        if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str) {
            if meta_str(&current, "uid") != Some(uid) {
                return Err(ApiError::conflict(&def.plural, &def.group, name));
            }
        }
        if let Some(rv) = opts
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            if objects::parse_rv(rv)? != kv.mod_revision {
                return Err(ApiError::conflict(&def.plural, &def.group, name));
            }
        }
        if dry_run {
            return Ok(current);
        }
        // Foreground and orphan propagation go through the garbage collector, which
        // removes the finalizer once the dependents are handled.
        let policy = match opts.get("propagationPolicy").and_then(Value::as_str) {
            Some(p) => p,
            None if opts.get("orphanDependents") == Some(&json!(true)) => "Orphan",
            None => "Background",
        };
        let gc_finalizer = match policy {
            "Foreground" => Some("foregroundDeletion"),
            "Orphan" => Some("orphan"),
            "Background" => None,
            other => {
                return Err(ApiError::invalid(
                    "DeleteOptions",
                    "",
                    name,
                    vec![(
                        "propagationPolicy".into(),
                        format!("Unsupported value: \"{other}\": supported values: \"Background\", \"Foreground\", \"Orphan\""),
                    )],
                ))
            }
        };
        if let (Some(f), None) = (gc_finalizer, current.pointer("/metadata/deletionTimestamp")) {
            let list = meta(&mut current)
                .entry("finalizers")
                .or_insert_with(|| json!([]));
            if let Some(list) = list.as_array_mut() {
                if !list.iter().any(|x| x == f) {
                    list.push(json!(f));
                }
            }
        }
        let grace = pod_grace_seconds(def, &current, opts);
        if grace > 0 {
            let marked = current.pointer("/metadata/deletionTimestamp").is_some();
            let shorter = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .is_none_or(|g| grace < g);
            if marked && !shorter {
                return Ok(current);
            }
            let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
            meta(&mut current).insert(
                "deletionTimestamp".into(),
                json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
            meta(&mut current).insert("deletionGracePeriodSeconds".into(), json!(grace));
            let Some(rev) = put_if_unchanged(store, def, &key, kv.mod_revision, &current).await?
            else {
                continue;
            };
            meta(&mut current).insert("resourceVersion".into(), json!(rev.to_string()));
            return Ok(current);
        }
        let finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .map(|f| !f.is_empty());
        if finalizers == Some(true) {
            let graceful = current
                .pointer("/metadata/deletionGracePeriodSeconds")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                > 0;
            if current.pointer("/metadata/deletionTimestamp").is_none() || graceful {
                meta(&mut current)
                    .insert("deletionTimestamp".into(), json!(objects::now_rfc3339()));
                meta(&mut current).insert("deletionGracePeriodSeconds".into(), json!(0));
                let Some(rev) =
                    put_if_unchanged(store, def, &key, kv.mod_revision, &current).await?
                else {
                    continue;
                };
                meta(&mut current).insert("resourceVersion".into(), json!(rev.to_string()));
            }
            return Ok(current);
        }
        if def.is("", "Namespace") {
            delete_namespace_contents(reg, name).await?;
            services::repair(store).await?;
        }
        let mut success = vec![Op::Delete {
            key: key.clone().into_bytes(),
        }];
        if super::super::crd::is_definitions(def) {
            // A definition takes its custom resources with it.
            success.extend(definition_contents(&current));
        }
        let r = store
            .txn(TxnRequest {
                compare: vec![Compare::mod_revision_is(key, kv.mod_revision)],
                success,
                failure: vec![],
            })
            .await?;
        if r.succeeded {
            reg.removed(def, &current).await;
            meta(&mut current).insert("resourceVersion".into(), json!(r.revision.to_string()));
            return Ok(current);
        }
    }
    Err(ApiError::conflict(&def.plural, &def.group, name))
}

/// The grace period of a pod deletion, as kube-apiserver's pod strategy decides it: pods
/// that run on a node get `gracePeriodSeconds` (or the pod's
/// `terminationGracePeriodSeconds`, 30 by default) for their agent to stop them; pods not
/// bound to a node, or already finished, go at once (0). Not a pod: 0.
fn pod_grace_seconds(def: &ResourceDef, pod: &Value, opts: &Value) -> i64 {
    if !def.is("", "Pod") {
        return 0;
    }
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let finished = matches!(
        pod.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    if !bound || finished {
        return 0;
    }
    opts.get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

/// The removal of every key under `prefix`.
fn delete_prefix(prefix: String) -> Op {
    let end = pikube_raft::prefix_end(prefix.as_bytes());
    Op::DeleteRange {
        key: prefix.into_bytes(),
        range_end: end,
    }
}

/// The removal of every custom resource a CustomResourceDefinition defines (stored
/// under one prefix whatever their version).
fn definition_contents(crd: &Value) -> Option<Op> {
    let group = crd.pointer("/spec/group").and_then(Value::as_str)?;
    let plural = crd.pointer("/spec/names/plural").and_then(Value::as_str)?;
    (!group.is_empty() && !plural.is_empty())
        .then(|| delete_prefix(format!("/registry/{group}/{plural}/")))
}

/// Removes every namespaced object in namespace `ns`, custom resources included.
async fn delete_namespace_contents(reg: &Registry, ns: &str) -> Result<(), ApiError> {
    let mut prefixes: Vec<String> = Vec::new();
    for def in reg.catalog.all().iter().filter(|d| d.namespaced) {
        let prefix = format!("{}{ns}/", def.storage_prefix());
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix);
        }
    }
    for prefix in prefixes {
        reg.store
            .txn(TxnRequest {
                success: vec![delete_prefix(prefix)],
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Deletes every object of a collection that matches the selectors.
pub async fn delete_collection(
    reg: &Registry,
    target: &Target,
    opts: &ListOptions,
    body: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    let store = &reg.store;
    let listed = list(reg, target, opts).await?;
    let mut deleted = Vec::new();
    for item in listed.items.iter().map(|i| i.as_ref()) {
        let Some(name) = meta_str(item, "name") else {
            continue;
        };
        let t = Target {
            namespace: meta_str(item, "namespace").map(String::from),
            ..target.clone()
        };
        match delete(reg, &t, name, body, dry_run).await {
            Ok(obj) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": target.def.list_kind(),
        "apiVersion": target.def.api_version(),
        "metadata": {"resourceVersion": store.current_revision().to_string()},
        "items": deleted,
    }))
}
