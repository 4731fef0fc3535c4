//! Patches: JSON, merge and strategic merge patch, and server-side apply.

use super::*;

/// The patch formats pikube applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902 JSON patch.
    Json,
    /// RFC 7386 JSON merge patch.
    Merge,
    /// Kubernetes strategic merge patch (built-in kinds).
    Strategic,
}

/// Patches an object, retrying when a concurrent write got in between.
pub async fn patch(
    reg: &Registry,
    target: &Target,
    name: &str,
    kind: PatchKind,
    body: &[u8],
    opts: WriteOptions,
) -> Result<Written, ApiError> {
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid patch body: {e}")))?;
    rewrite(reg, target, name, &opts, |current| {
        let mut doc = current.clone();
        match kind {
            PatchKind::Merge => json_patch::merge(&mut doc, &patch),
            PatchKind::Strategic => {
                let schema = crate::api::openapi::schema::Schemas::of(&target.def);
                doc = crate::api::strategic::strategic_merge(schema, &doc, &patch)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?;
            }
            PatchKind::Json => {
                let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                    .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
                json_patch::patch(&mut doc, &ops).map_err(|e| {
                    ApiError::invalid(
                        &target.def.kind,
                        &target.def.group,
                        name,
                        vec![("patch".into(), e.to_string())],
                    )
                })?;
            }
        }
        if !doc.is_object() {
            return Err(ApiError::invalid(
                &target.def.kind,
                &target.def.group,
                name,
                vec![(
                    "patch".into(),
                    "the patched object must be a JSON object".into(),
                )],
            ));
        }
        // A patch that names no resourceVersion is applied to whatever is current.
        let explicit_rv = match kind {
            PatchKind::Merge | PatchKind::Strategic => {
                patch.pointer("/metadata/resourceVersion").is_some()
            }
            PatchKind::Json => patch
                .as_array()
                .map(|ops| {
                    ops.iter().any(|op| {
                        op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
                    })
                })
                .unwrap_or(false),
        };
        Ok((doc, explicit_rv))
    })
    .await
}

/// Server-side apply of the configuration in `body` (YAML or JSON) to `name`, by the
/// manager in `opts`: creates the object when it does not exist.
pub async fn apply(
    reg: &Registry,
    target: &Target,
    name: &str,
    body: &[u8],
    opts: WriteOptions,
) -> Result<(Written, bool), ApiError> {
    let def = &target.def;
    let manager = opts.manager.clone().ok_or_else(|| {
        ApiError::bad_request(
            "fieldManager is required for apply requests (application/apply-patch+yaml)",
        )
    })?;
    let mut config: Value = serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice(body))
        .map_err(|e| ApiError::bad_request(format!("error decoding apply configuration: {e}")))?;
    objects::check_type(def, &mut config)?;
    if meta_str(&config, "name").is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta_str(&config, "name").unwrap_or("")
        )));
    }
    meta(&mut config).insert("name".into(), json!(name));
    if let Some(ns) = &target.namespace {
        meta(&mut config).insert("namespace".into(), json!(ns));
    }
    let warnings = opts.check_fields(def, &mut config, None)?;
    let explicit_rv = meta_str(&config, "resourceVersion").is_some();
    let who = managed::Manager {
        name: manager,
        apply: true,
        subresource: target.subresource.clone(),
    };
    let schema = Schemas::of(def);
    let conflicts = |c: Vec<managed::apply::Conflict>| managed::apply::conflict_error(&c);
    let exists = reg.store.get(target.key(name).as_bytes()).await?.is_some();
    if !exists && target.subresource.is_none() {
        let obj = managed::apply::apply(schema, None, &config, &who, opts.force, has_status(def))
            .map_err(conflicts)?;
        let collection = Target {
            name: None,
            ..target.clone()
        };
        match create(reg, &collection, obj, opts.settled()).await {
            // Created meanwhile: applied over below.
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(e),
            Ok(mut w) => {
                w.warnings.extend(warnings);
                return Ok((w, true));
            }
        }
    }
    let mut w = rewrite(reg, target, name, &opts.settled(), |current| {
        let obj = managed::apply::apply(
            schema,
            Some(current),
            &config,
            &who,
            opts.force,
            has_status(def),
        )
        .map_err(conflicts)?;
        Ok((obj, explicit_rv))
    })
    .await?;
    w.warnings.extend(warnings);
    Ok((w, false))
}
