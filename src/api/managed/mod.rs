//! Field management, as kube-apiserver keeps it: `metadata.managedFields` records which
//! manager (`fieldManager`, or the client's User-Agent) set which fields, by Apply
//! (server-side apply, [`apply`]) or by Update (every other write). Apply uses it to merge
//! and to report conflicts with other managers.

pub mod apply;
pub mod fieldset;

use serde_json::{json, Value};

use super::objects::meta;
use super::openapi::schema::Node;
use super::status::ApiError;
use fieldset::FieldSet;

/// The longest manager name kube-apiserver accepts (and cuts User-Agent names to).
pub const MAX_NAME_BYTES: usize = 128;

/// Who writes, and how: the identity of a `managedFields` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manager {
    /// The manager's name (`kubectl`, `kubectl-edit`, a controller's name…).
    pub name: String,
    /// `Apply` for server-side apply, else `Update`.
    pub apply: bool,
    /// The subresource written (`status`), if any.
    pub subresource: Option<String>,
}

impl Manager {
    /// The manager of a request: its `fieldManager` parameter, else the first part of
    /// its User-Agent (as kube-apiserver names them), at most 128 characters.
    pub fn of_request(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
        let name = match field_manager.filter(|m| !m.is_empty()) {
            Some(m) => m.to_string(),
            None => user_agent
                .and_then(|ua| ua.split('/').next())
                .filter(|ua| !ua.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        };
        name.chars().take(MAX_NAME_BYTES).collect()
    }

    /// Checks a write's `fieldManager` and `force` parameters as kube-apiserver's
    /// `ValidateCreateOptions`/`ValidateUpdateOptions`/`ValidatePatchOptions` do: at most
    /// 128 bytes of printable characters, required by apply, `force` only with apply.
    /// `options` names the kind in the 422 (`CreateOptions`, `UpdateOptions`,
    /// `PatchOptions`).
    pub fn check_options(
        options: &str,
        field_manager: Option<&str>,
        force: bool,
        apply: bool,
    ) -> Result<(), ApiError> {
        let mut causes = Vec::new();
        let manager = field_manager.unwrap_or("");
        if manager.len() > MAX_NAME_BYTES {
            causes.push((
                "fieldManager".to_string(),
                format!("Too long: may not be more than {MAX_NAME_BYTES} bytes"),
            ));
        }
        if let Some((i, c)) = manager
            .char_indices()
            .find(|(_, c)| c.is_control() || (c.is_whitespace() && *c != ' '))
        {
            causes.push((
                "fieldManager".to_string(),
                format!(
                    "Invalid value: {manager:?}: invalid character U+{:04X} (at position {i})",
                    c as u32
                ),
            ));
        }
        if apply && manager.is_empty() {
            causes.push((
                "fieldManager".to_string(),
                "Required value: is required for apply patch".to_string(),
            ));
        }
        if force && !apply {
            causes.push((
                "force".to_string(),
                "Forbidden: may not be specified for non-apply patch".to_string(),
            ));
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(options, "meta.k8s.io", "", causes))
        }
    }

    fn operation(&self) -> &'static str {
        if self.apply {
            "Apply"
        } else {
            "Update"
        }
    }

    fn matches(&self, entry: &Value) -> bool {
        entry.get("manager").and_then(Value::as_str) == Some(&self.name)
            && entry.get("operation").and_then(Value::as_str) == Some(self.operation())
            && entry.get("subresource").and_then(Value::as_str) == self.subresource.as_deref()
    }
}

/// One `managedFields` entry, read.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The entry as stored (manager, operation, apiVersion, time…).
    pub raw: Value,
    /// Its fields.
    pub fields: FieldSet,
}

impl Entry {
    /// The manager's name.
    pub fn manager(&self) -> &str {
        self.raw
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// The `managedFields` entries of `obj`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|es| {
            es.iter()
                .filter(|e| e.is_object())
                .map(|e| Entry {
                    raw: e.clone(),
                    fields: FieldSet::from_json(e.get("fieldsV1").unwrap_or(&Value::Null)),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes `entries` into `obj`, with `who`'s entry (created if needed) holding `fields`
/// stamped now.
pub fn store(obj: &mut Value, mut entries: Vec<Entry>, who: &Manager, fields: FieldSet) {
    let api_version = obj.get("apiVersion").cloned().unwrap_or(Value::Null);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut raw = json!({
        "manager": who.name,
        "operation": who.operation(),
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
    });
    if let Some(s) = &who.subresource {
        raw["subresource"] = json!(s);
    }
    match entries.iter_mut().find(|e| who.matches(&e.raw)) {
        Some(e) => {
            e.raw = raw;
            e.fields = fields;
        }
        None => entries.push(Entry { raw, fields }),
    }
    write(obj, entries);
}

/// Writes `entries` as `obj`'s `managedFields`; entries without fields are dropped.
pub fn write(obj: &mut Value, entries: Vec<Entry>) {
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|mut e| {
            e.raw["fieldsV1"] = e.fields.to_json();
            e.raw
        })
        .collect();
    if list.is_empty() {
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("managedFields");
        }
    } else {
        meta(obj).insert("managedFields".into(), Value::Array(list));
    }
}

/// The fields `who` may own through `obj`'s writes: status through the status
/// subresource only, everything else through the main resource only.
fn scoped(mut set: FieldSet, who: &Manager, has_status: bool) -> FieldSet {
    if !has_status {
        return set;
    }
    let status = set_under(&set, "f:status");
    if who.subresource.as_deref() == Some("status") {
        status
    } else {
        set.remove_all(&status);
        set
    }
}

/// The members of `set` under its top-level element `pe`.
fn set_under(set: &FieldSet, pe: &str) -> FieldSet {
    let mut out = FieldSet::default();
    for p in set.paths() {
        if p.first().map(String::as_str) == Some(pe) {
            out.insert(&p);
        }
    }
    out
}

/// Records a non-apply write of `new` over `old` (None: a create) by `who`: the fields it
/// changed become `who`'s, no longer anybody else's; fields it removed leave every set.
pub fn track_update(
    schema: Node<'_>,
    old: Option<&Value>,
    new: &mut Value,
    who: &Manager,
    has_status: bool,
) {
    let after = FieldSet::of(schema, new);
    let before = old.map(|o| FieldSet::of(schema, o)).unwrap_or_default();
    let mut changed = FieldSet::default();
    for p in after.paths() {
        let same = before.contains(&p)
            && old.and_then(|o| fieldset::value_at(o, &p)) == fieldset::value_at(new, &p);
        if !same {
            changed.insert(&p);
        }
    }
    let changed = scoped(changed, who, has_status);
    let mut removed = before;
    removed.remove_all(&after);
    // The entries come from the stored object: a client cannot rewrite them by an update.
    let mut list = old.map(entries).unwrap_or_default();
    let mut mine = FieldSet::default();
    for e in list.iter_mut() {
        e.fields.remove_all(&removed);
        if who.matches(&e.raw) {
            mine = e.fields.clone();
        } else {
            e.fields.remove_all(&changed);
        }
    }
    if changed.is_empty() {
        write(new, list);
        return;
    }
    mine.union(&changed);
    store(new, list, who, mine);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_options_are_checked_as_kube_apiserver_checks_them() {
        assert!(Manager::check_options("CreateOptions", Some("kubectl"), false, false).is_ok());
        assert!(Manager::check_options("PatchOptions", Some("kubectl"), true, true).is_ok());
        let long = "m".repeat(MAX_NAME_BYTES + 1);
        let err = Manager::check_options("CreateOptions", Some(&long), false, false)
            .expect_err("too long");
        assert_eq!(err.code, 422);
        assert_eq!(
            err.message,
            "CreateOptions.meta.k8s.io \"\" is invalid: fieldManager: Too long: may not be more than 128 bytes"
        );
        let err = Manager::check_options("PatchOptions", None, false, true).expect_err("apply");
        assert!(
            err.message
                .ends_with("fieldManager: Required value: is required for apply patch"),
            "{}",
            err.message
        );
        let err =
            Manager::check_options("PatchOptions", Some("k"), true, false).expect_err("force");
        assert!(
            err.message
                .ends_with("force: Forbidden: may not be specified for non-apply patch"),
            "{}",
            err.message
        );
        let err =
            Manager::check_options("UpdateOptions", Some("a\tb"), false, false).expect_err("tab");
        assert!(
            err.message.contains("invalid character U+0009"),
            "{}",
            err.message
        );
    }
}
