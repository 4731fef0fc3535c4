//! Table rows of Events, in either API version, with the columns kube-apiserver's event
//! printer gives them (what `kubectl get events` and `kubectl get events.events.k8s.io`
//! show).

use serde_json::{json, Value};

use super::resources::ResourceDef;
use super::table::{int, s, since, Column};

/// Events: what `kubectl get events` prints (LAST SEEN, TYPE, REASON, OBJECT, MESSAGE).
pub const COLUMNS: &[Column] = &[
    ("Last Seen", "string", 0),
    ("Type", "string", 0),
    ("Reason", "string", 0),
    ("Object", "string", 0),
    ("Subobject", "string", 1),
    ("Source", "string", 1),
    ("Message", "string", 0),
    ("First Seen", "string", 1),
    ("Count", "integer", 1),
    ("Name", "string", 1),
];

/// The cells of an Event in the core/v1 form, as kube-apiserver's event printer fills
/// them (the same for both versions: it prints the stored form). Events of the newer
/// API have an eventTime and maybe a series instead of timestamps and a count.
fn core_cells(o: &Value) -> Vec<Value> {
    let set = |p: &str| o.pointer(p).is_some_and(|t| !t.is_null());
    let first = if set("/firstTimestamp") {
        since(o, "/firstTimestamp")
    } else {
        since(o, "/eventTime")
    };
    let mut last = if set("/lastTimestamp") {
        since(o, "/lastTimestamp")
    } else {
        first.clone()
    };
    let mut count = int(o, "/count");
    if set("/series") {
        last = since(o, "/series/lastObservedTime");
        count = int(o, "/series/count");
    } else if count == 0 {
        // A singleton Event of the newer API has no count.
        count = 1;
    }
    let kind = s(o, "/involvedObject/kind").to_ascii_lowercase();
    let object = match s(o, "/involvedObject/name") {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let or = |a: &'static str, b: &'static str| match s(o, a) {
        "" => s(o, b),
        x => x,
    };
    let source = match (
        or("/source/component", "/reportingComponent"),
        or("/source/host", "/reportingInstance"),
    ) {
        (c, "") => c.to_string(),
        (c, h) => format!("{c}, {h}"),
    };
    vec![
        json!(last),
        json!(s(o, "/type")),
        json!(s(o, "/reason")),
        json!(object),
        json!(s(o, "/involvedObject/fieldPath")),
        json!(source),
        json!(s(o, "/message").trim()),
        json!(first),
        json!(count),
        json!(s(o, "/metadata/name")),
    ]
}

/// The cells of an Event of `def`'s version.
pub fn cells(def: &ResourceDef, o: &Value) -> Vec<Value> {
    let mut core = o.clone();
    super::event_versions::to_storage(def, &mut core);
    core_cells(&core)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn rows_of_both_versions_print_as_kube_apiserver_prints_them() {
        let v1 = lookup("events.k8s.io", "v1", "events").unwrap();
        let core = lookup("", "v1", "events").unwrap();
        let recent = chrono::Utc::now() - chrono::Duration::seconds(90);
        let t = |d: chrono::DateTime<chrono::Utc>| {
            d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        };
        let new_style = serde_json::json!({
            "metadata": {"name": "e"},
            "eventTime": t(recent - chrono::Duration::seconds(3600)),
            "series": {"count": 4, "lastObservedTime": t(recent)},
            "regarding": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"},
            "reason": "BackOff", "note": " restarting ", "type": "Warning",
            "reportingController": "kubelet", "reportingInstance": "n1",
        });
        let row = cells(&v1, &new_style);
        assert_eq!(
            row,
            [
                json!("90s"),
                json!("Warning"),
                json!("BackOff"),
                json!("pod/p"),
                json!("spec.containers{c}"),
                json!("kubelet, n1"),
                json!("restarting"),
                json!("61m"),
                json!(4),
                json!("e"),
            ]
        );
        // A core Event without a count or times: one occurrence, times unknown; an
        // involved object without a name prints its kind.
        let bare = serde_json::json!({"metadata": {"name": "b"}, "involvedObject": {"kind": "Node"},
            "source": {"component": "c"}});
        let row = cells(&core, &bare);
        assert_eq!(row[0], "<unknown>");
        assert_eq!(row[3], "node");
        assert_eq!(row[5], "c");
        assert_eq!(row[8], 1);
    }
}
