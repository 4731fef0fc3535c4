//! Events in two API versions. As in kube-apiserver, core/v1 `Event` and
//! events.k8s.io/v1 `Event` are one resource stored once (under the core events prefix,
//! in the core/v1 form): an Event written through either API is read, listed, watched,
//! patched and deleted through the other, converted field by field at the storage
//! boundary as Kubernetes' conversion does (`pkg/apis/events/v1/conversion.go`: the core
//! `involvedObject` is `regarding`, `message` is `note`, `source` is `deprecatedSource`,
//! `firstTimestamp`/`lastTimestamp`/`count` are `deprecated*`, `reportingComponent` is
//! `reportingController`; the other fields keep their names).
//!
//! Validation follows `pkg/apis/core/validation/events.go`: every Event passes the legacy
//! checks; a create or update through events.k8s.io/v1 also the strict ones (eventTime,
//! reportingController, reportingInstance, action, reason required; the deprecated
//! fields unset on create; most fields immutable on update).

use serde_json::{json, Map, Value};

use super::objects::is_dns1123_subdomain;
use super::resources::ResourceDef;
use super::status::ApiError;

/// The group of the newer Events API.
pub const GROUP: &str = "events.k8s.io";

/// Core/v1 field → events.k8s.io/v1 field, for the fields whose names differ.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

/// The field selectors events.k8s.io/v1 accepts (kube-apiserver's field label
/// conversion for the group; the core spellings are not among them), with where each
/// is in an events.k8s.io/v1 Event.
pub const FIELD_SELECTORS: &[(&str, &str)] = &[
    ("metadata.name", "/metadata/name"),
    ("metadata.namespace", "/metadata/namespace"),
    ("reason", "/reason"),
    ("type", "/type"),
    ("reportingController", "/reportingController"),
    ("regarding.kind", "/regarding/kind"),
    ("regarding.namespace", "/regarding/namespace"),
    ("regarding.name", "/regarding/name"),
    ("regarding.uid", "/regarding/uid"),
    ("regarding.apiVersion", "/regarding/apiVersion"),
    ("regarding.resourceVersion", "/regarding/resourceVersion"),
    ("regarding.fieldPath", "/regarding/fieldPath"),
];

/// Whether `def` is the events.k8s.io/v1 version of Events.
pub fn is_events_v1(def: &ResourceDef) -> bool {
    def.is(GROUP, "Event")
}

/// Whether `def` is Events in either version.
pub fn is_event(def: &ResourceDef) -> bool {
    def.is("", "Event") || is_events_v1(def)
}

/// Renames the keys of `map` by `pairs` (from → to, each key given `prefix`).
fn rename_keys(map: &mut Map<String, Value>, prefix: &str, pairs: &[(&str, &str)]) {
    let mut moved = Map::new();
    for (from, to) in pairs {
        if let Some(v) = map.remove(&format!("{prefix}{from}")) {
            moved.insert(format!("{prefix}{to}"), v);
        }
    }
    map.extend(moved);
}

/// Converts `obj` by `pairs` (from → to) to `api_version`: its top-level fields, and the
/// same fields in the field sets of its `managedFields`, so that field ownership holds
/// across versions (server-side apply through one API sees what managers of the other
/// own, as kube-apiserver's field manager converts managed fields between versions).
fn convert(obj: &mut Value, api_version: &str, pairs: &[(&str, &str)]) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    rename_keys(map, "", pairs);
    map.insert("apiVersion".into(), json!(api_version));
    let entries = map
        .get_mut("metadata")
        .and_then(|m| m.get_mut("managedFields"))
        .and_then(Value::as_array_mut);
    for entry in entries.into_iter().flatten() {
        let Some(entry) = entry.as_object_mut() else {
            continue;
        };
        if let Some(fields) = entry.get_mut("fieldsV1").and_then(Value::as_object_mut) {
            rename_keys(fields, "f:", pairs);
        }
        entry.insert("apiVersion".into(), json!(api_version));
    }
}

/// A stored (core/v1) Event as `def` serves it.
pub fn from_storage(def: &ResourceDef, obj: &mut Value) {
    if is_events_v1(def) {
        convert(obj, &def.api_version(), RENAMES);
    }
}

/// An Event of `def`'s version in the stored (core/v1) form.
pub fn to_storage(def: &ResourceDef, obj: &mut Value) {
    if is_events_v1(def) {
        let back: Vec<(&str, &str)> = RENAMES.iter().map(|(core, v1)| (*v1, *core)).collect();
        convert(obj, "v1", &back);
    }
}

/// A string field (empty when absent or not a string).
fn text<'a>(o: &'a Value, pointer: &str) -> &'a str {
    o.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Whether a field is set (present and not null).
fn set(o: &Value, pointer: &str) -> bool {
    o.pointer(pointer).is_some_and(|v| !v.is_null())
}

/// Whether `s` is a Kubernetes qualified name (`[prefix/]name`, as label keys).
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(|p| !p.is_empty() && is_dns1123_subdomain(p))
}

/// The checks every Event passes, whatever API wrote it (`legacyValidateEvent`), on the
/// core/v1 form.
fn legacy_errors(ev: &Value) -> Vec<(String, String)> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let ns = text(ev, "/metadata/namespace");
    let involved_ns = text(ev, "/involvedObject/namespace");
    let mismatch = || {
        (
            "involvedObject.namespace".to_string(),
            format!("Invalid value: {involved_ns:?}: does not match event.namespace"),
        )
    };
    if !set(ev, "/eventTime") {
        let agrees = if involved_ns.is_empty() {
            ns.is_empty() || ns == "default"
        } else {
            ns == involved_ns
        };
        if !agrees {
            errs.push(mismatch());
        }
    } else {
        if involved_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(mismatch());
        }
        let controller = text(ev, "/reportingComponent");
        if controller.is_empty() {
            errs.push(required("reportingController"));
        } else if !is_qualified_name(controller) {
            errs.push((
                "reportingController".into(),
                format!("Invalid value: {controller:?}: must be a qualified name (an optional DNS subdomain prefix and '/', then at most 63 alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character)"),
            ));
        }
        for (field, pointer, limit) in [
            ("reportingInstance", "/reportingInstance", 128),
            ("action", "/action", 128),
            ("reason", "/reason", 128),
        ] {
            let v = text(ev, pointer);
            if v.is_empty() {
                errs.push(required(field));
            } else if v.len() > limit {
                errs.push(too_long(field, limit));
            }
        }
        if text(ev, "/message").len() > 1024 {
            errs.push(too_long("message", 1024));
        }
    }
    if !ns.is_empty() && !is_dns1123_subdomain(ns) {
        errs.push((
            "namespace".into(),
            format!("Invalid value: {ns:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
    errs
}

fn required(field: &str) -> (String, String) {
    (field.to_string(), "Required value".to_string())
}

fn too_long(field: &str, limit: usize) -> (String, String) {
    (
        field.to_string(),
        format!("Invalid value: \"\": can have at most {limit} characters"),
    )
}

fn invalid(field: &str, why: &str) -> (String, String) {
    (field.to_string(), format!("Invalid value: \"\": {why}"))
}

/// `validateV1EventSeries`: a series counts at least 2 and has a last observed time.
fn series_errors(ev: &Value) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if set(ev, "/series") {
        if ev
            .pointer("/series/count")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            < 2
        {
            errs.push(invalid("series.count", "should be at least 2"));
        }
        if !set(ev, "/series/lastObservedTime") {
            errs.push(required("series.lastObservedTime"));
        }
    }
    errs
}

/// The strict checks of a create through events.k8s.io/v1 (`ValidateEventCreate`).
fn create_errors(ev: &Value) -> Vec<(String, String)> {
    let mut errs = series_errors(ev);
    if !set(ev, "/eventTime") {
        errs.push(required("eventTime"));
    }
    let kind = text(ev, "/type");
    if kind != "Normal" && kind != "Warning" {
        errs.push(invalid("type", &format!("has invalid value: {kind}")));
    }
    for (field, pointer) in [
        ("firstTimestamp", "/firstTimestamp"),
        ("lastTimestamp", "/lastTimestamp"),
    ] {
        if set(ev, pointer) {
            errs.push(invalid(field, "needs to be unset"));
        }
    }
    if ev.pointer("/count").and_then(Value::as_i64).unwrap_or(0) != 0 {
        errs.push(invalid("count", "needs to be unset"));
    }
    if !text(ev, "/source/component").is_empty() || !text(ev, "/source/host").is_empty() {
        errs.push(invalid("source", "needs to be unset"));
    }
    errs
}

/// The strict checks of an update through events.k8s.io/v1 (`ValidateEventUpdate`):
/// what happened is immutable; only the series (and metadata) may change.
fn update_errors(new: &Value, old: &Value) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if new.get("series") != old.get("series") {
        errs.extend(series_errors(new));
    }
    let absent = |v: Option<&Value>| v.filter(|x| !x.is_null()).cloned();
    for field in [
        "involvedObject",
        "reason",
        "message",
        "source",
        "firstTimestamp",
        "lastTimestamp",
        "count",
        "type",
        "eventTime",
        "action",
        "related",
        "reportingComponent",
        "reportingInstance",
    ] {
        if absent(new.get(field)) != absent(old.get(field)) {
            let shown = if field == "reportingComponent" {
                "reportingController"
            } else {
                field
            };
            errs.push((
                shown.to_string(),
                "Invalid value: field is immutable".to_string(),
            ));
        }
    }
    errs
}

/// Checks an Event about to be stored through `def` (over `old`, both in `def`'s
/// version); a 422 lists what is wrong, as kube-apiserver's validation does.
pub fn validate(def: &ResourceDef, old: Option<&Value>, obj: &Value) -> Result<(), ApiError> {
    if !is_event(def) {
        return Ok(());
    }
    let core = |v: &Value| {
        let mut c = v.clone();
        to_storage(def, &mut c);
        c
    };
    let new = core(obj);
    let mut errs = legacy_errors(&new);
    if is_events_v1(def) {
        match old {
            None => errs.extend(create_errors(&new)),
            Some(old) => errs.extend(update_errors(&new, &core(old))),
        }
    }
    if errs.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        &def.kind,
        &def.group,
        text(obj, "/metadata/name"),
        errs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    fn v1() -> std::sync::Arc<ResourceDef> {
        lookup(GROUP, "v1", "events").expect("events.k8s.io/v1 is served")
    }

    fn core() -> std::sync::Arc<ResourceDef> {
        lookup("", "v1", "events").expect("core events are served")
    }

    fn new_style() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "eventTime": "2026-01-02T03:04:05.000000Z",
            "reportingController": "example.com/ctl",
            "reportingInstance": "ctl-1",
            "action": "Reconcile",
            "reason": "Synced",
            "note": "all good",
            "type": "Normal",
            "regarding": {"kind": "Pod", "namespace": "default", "name": "p", "uid": "u1"},
            "related": {"kind": "Node", "name": "n1"},
            "series": {"count": 3, "lastObservedTime": "2026-01-02T03:05:05.000000Z"},
        })
    }

    #[test]
    fn conversion_renames_every_differing_field_both_ways() {
        let mut ev = new_style();
        ev["deprecatedSource"] = json!({"component": "c", "host": "h"});
        ev["deprecatedFirstTimestamp"] = json!("2026-01-01T00:00:00Z");
        ev["deprecatedLastTimestamp"] = json!("2026-01-01T00:01:00Z");
        ev["deprecatedCount"] = json!(4);
        let original = ev.clone();
        to_storage(&v1(), &mut ev);
        assert_eq!(ev["apiVersion"], "v1");
        assert_eq!(ev["message"], "all good");
        assert_eq!(ev["involvedObject"]["name"], "p");
        assert_eq!(ev["source"]["component"], "c");
        assert_eq!(ev["firstTimestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(ev["lastTimestamp"], "2026-01-01T00:01:00Z");
        assert_eq!(ev["count"], 4);
        assert_eq!(ev["reportingComponent"], "example.com/ctl");
        for same in [
            "eventTime",
            "reportingInstance",
            "action",
            "reason",
            "type",
            "related",
            "series",
        ] {
            assert_eq!(ev[same], original[same], "{same}");
        }
        for gone in [
            "note",
            "regarding",
            "deprecatedSource",
            "deprecatedCount",
            "reportingController",
        ] {
            assert!(ev.get(gone).is_none(), "{gone}");
        }
        // Managed fields name the fields of the version they are read in.
        ev["metadata"]["managedFields"] = json!([{"manager": "m", "apiVersion": "v1",
            "fieldsV1": {"f:message": {}, "f:reason": {}, "f:metadata": {"f:labels": {}}}}]);
        let mut as_v1 = ev.clone();
        from_storage(&v1(), &mut as_v1);
        let entry = &as_v1["metadata"]["managedFields"][0];
        assert_eq!(entry["apiVersion"], "events.k8s.io/v1");
        assert_eq!(
            entry["fieldsV1"],
            json!({"f:note": {}, "f:reason": {}, "f:metadata": {"f:labels": {}}})
        );
        to_storage(&v1(), &mut as_v1);
        assert_eq!(as_v1, ev);
        if let Some(m) = ev["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        // Core is the storage form: nothing changes for it.
        let mut stored = ev.clone();
        from_storage(&core(), &mut stored);
        assert_eq!(stored, ev);
        from_storage(&v1(), &mut ev);
        assert_eq!(ev, original);
    }

    fn causes(def: &ResourceDef, old: Option<&Value>, obj: &Value) -> Vec<String> {
        match validate(def, old, obj) {
            Ok(()) => Vec::new(),
            Err(e) => {
                assert_eq!(e.code, 422);
                e.details.expect("details")["causes"]
                    .as_array()
                    .expect("causes")
                    .iter()
                    .map(|c| c["field"].as_str().unwrap_or("").to_string())
                    .collect()
            }
        }
    }

    #[test]
    fn creates_through_v1_need_what_kube_apiserver_requires() {
        assert!(causes(&v1(), None, &new_style()).is_empty());
        let mut bare = json!({"metadata": {"name": "e", "namespace": "default"}, "regarding": {"kind": "Pod", "namespace": "default", "name": "p"}});
        assert_eq!(causes(&v1(), None, &bare), vec!["eventTime", "type"]);
        bare["eventTime"] = json!("2026-01-02T03:04:05.000000Z");
        bare["type"] = json!("Normal");
        assert_eq!(
            causes(&v1(), None, &bare),
            vec![
                "reportingController",
                "reportingInstance",
                "action",
                "reason"
            ]
        );
        let mut old_fields = new_style();
        old_fields["deprecatedCount"] = json!(2);
        old_fields["deprecatedSource"] = json!({"component": "x"});
        old_fields["series"] = json!({"count": 1});
        old_fields["reportingController"] = json!("not a name!");
        assert_eq!(
            causes(&v1(), None, &old_fields),
            vec![
                "reportingController",
                "series.count",
                "series.lastObservedTime",
                "count",
                "source"
            ]
        );
        let mut elsewhere = new_style();
        elsewhere["metadata"]["namespace"] = json!("other");
        elsewhere["regarding"]["namespace"] = json!("");
        assert_eq!(
            causes(&v1(), None, &elsewhere),
            vec!["involvedObject.namespace"]
        );
    }

    #[test]
    fn core_events_pass_legacy_checks_only() {
        let legacy = json!({
            "metadata": {"name": "n.1", "namespace": "default"},
            "involvedObject": {"kind": "Node", "name": "n"},
            "reason": "Ready", "message": "m", "count": 3, "source": {"component": "kubelet"},
        });
        assert!(causes(&core(), None, &legacy).is_empty());
        let mut wrong_ns = legacy.clone();
        wrong_ns["metadata"]["namespace"] = json!("kube-public");
        assert_eq!(
            causes(&core(), None, &wrong_ns),
            vec!["involvedObject.namespace"]
        );
        let mut core_new = legacy.clone();
        core_new["eventTime"] = json!("2026-01-02T03:04:05.000000Z");
        assert_eq!(
            causes(&core(), None, &core_new),
            vec!["reportingController", "reportingInstance", "action"]
        );
    }

    #[test]
    fn updates_through_v1_change_only_the_series() {
        let old = new_style();
        let mut bumped = old.clone();
        bumped["series"] = json!({"count": 4, "lastObservedTime": "2026-01-02T03:06:05.000000Z"});
        bumped["metadata"]["labels"] = json!({"a": "b"});
        assert!(causes(&v1(), Some(&old), &bumped).is_empty());
        let mut edited = old.clone();
        edited["note"] = json!("changed");
        edited["reportingController"] = json!("other");
        assert_eq!(
            causes(&v1(), Some(&old), &edited),
            vec!["message", "reportingController"]
        );
    }
}
