//! events.k8s.io/v1 Events: another version of the core Events, one stored resource read
//! and written through either API, with the real kubectl and kube-rs's event recorder.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Resource;
use serde_json::Value;

use crate::harness::{get_json, s, spawn_lines, wait_for, Server};

/// An events.k8s.io/v1 Event about ConfigMap `cm` of `default`, as a controller reports it.
const NEW_STYLE: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: cm-synced
  namespace: default
eventTime: \"2026-01-02T03:04:05.123456Z\"
reportingController: example.com/syncer
reportingInstance: syncer-0
action: Sync
reason: Synced
note: copied the settings
type: Normal
regarding:
  apiVersion: v1
  kind: ConfigMap
  namespace: default
  name: cm
";

/// A core/v1 Event about the same ConfigMap, as older components write them.
const OLD_STYLE: &str = "apiVersion: v1
kind: Event
metadata:
  name: cm-old
  namespace: default
involvedObject:
  apiVersion: v1
  kind: ConfigMap
  namespace: default
  name: cm
reason: Loaded
message: read from disk
type: Warning
count: 3
firstTimestamp: \"2026-01-02T03:00:00Z\"
lastTimestamp: \"2026-01-02T03:10:00Z\"
source:
  component: loader
  host: node-a
reportingComponent: loader
reportingInstance: node-a
";

#[test]
fn events_k8s_io_v1_and_core_v1_are_one_stored_resource() {
    let server = Server::start();
    let v = "1.33";
    server.ok(v, &["create", "configmap", "cm", "--from-literal=k=v"]);

    // Created with kubectl apply through events.k8s.io/v1, read back through core/v1.
    let new_file = server.file("new.yaml", NEW_STYLE);
    let applied = server.ok(v, &["apply", "-f", s(&new_file)]);
    assert!(
        applied.contains("event.events.k8s.io/cm-synced created"),
        "{applied}"
    );
    let core = get_json(&server, &["get", "events", "cm-synced", "-o", "json"]);
    assert_eq!(core["apiVersion"], "v1");
    assert_eq!(core["message"], "copied the settings");
    assert_eq!(core["involvedObject"]["name"], "cm");
    assert_eq!(core["involvedObject"]["kind"], "ConfigMap");
    assert_eq!(core["reportingComponent"], "example.com/syncer");
    assert_eq!(core["reportingInstance"], "syncer-0");
    assert_eq!(core["action"], "Sync");
    assert_eq!(core["eventTime"], "2026-01-02T03:04:05.123456Z");
    for v1_name in ["note", "regarding", "reportingController"] {
        assert!(core.get(v1_name).is_none(), "{v1_name} in {core}");
    }
    // Re-applying a change goes through a patch of the v1 object.
    let relabelled = server.file(
        "new2.yaml",
        &NEW_STYLE.replace(
            "  namespace: default\neventTime",
            "  namespace: default\n  labels: {tier: x}\neventTime",
        ),
    );
    let out = server.ok(v, &["apply", "-f", s(&relabelled)]);
    assert!(out.contains("configured"), "{out}");
    let v1 = get_json(
        &server,
        &["get", "events.v1.events.k8s.io", "cm-synced", "-o", "json"],
    );
    assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
    assert_eq!(v1["metadata"]["labels"]["tier"], "x");
    assert_eq!(v1["note"], "copied the settings");
    // The same object: same uid and resourceVersion through both APIs.
    let core = get_json(&server, &["get", "events", "cm-synced", "-o", "json"]);
    assert_eq!(core["metadata"]["uid"], v1["metadata"]["uid"]);
    assert_eq!(
        core["metadata"]["resourceVersion"],
        v1["metadata"]["resourceVersion"]
    );

    // kubectl 1.27 (OpenAPI v2 for its patches) applies them too.
    let older = server.file(
        "older.yaml",
        &NEW_STYLE.replace("name: cm-synced", "name: cm-127"),
    );
    server.ok("1.27", &["apply", "-f", s(&older)]);
    let relabelled = server.file(
        "older2.yaml",
        &NEW_STYLE
            .replace("name: cm-synced", "name: cm-127")
            .replace(
                "  namespace: default\neventTime",
                "  namespace: default\n  labels: {tier: old}\neventTime",
            ),
    );
    server.ok("1.27", &["label", "events.events.k8s.io", "cm-127", "k=v"]);
    let out = server.ok("1.27", &["apply", "-f", s(&relabelled)]);
    assert!(
        out.contains("event.events.k8s.io/cm-127 configured"),
        "{out}"
    );
    let core = get_json(&server, &["get", "events", "cm-127", "-o", "json"]);
    assert_eq!(core["metadata"]["labels"]["tier"], "old");
    server.ok("1.27", &["delete", "events.events.k8s.io", "cm-127"]);

    // Created through core/v1, read through events.k8s.io/v1 with the deprecated fields.
    let old_file = server.file("old.yaml", OLD_STYLE);
    server.ok(v, &["create", "-f", s(&old_file)]);
    let v1 = get_json(
        &server,
        &["get", "events.events.k8s.io", "cm-old", "-o", "json"],
    );
    assert_eq!(v1["note"], "read from disk");
    assert_eq!(v1["regarding"]["name"], "cm");
    assert_eq!(v1["deprecatedCount"], 3);
    assert_eq!(v1["deprecatedSource"]["component"], "loader");
    assert_eq!(v1["deprecatedFirstTimestamp"], "2026-01-02T03:00:00Z");
    assert_eq!(v1["deprecatedLastTimestamp"], "2026-01-02T03:10:00Z");
    assert_eq!(v1["reportingController"], "loader");
    for core_name in ["message", "involvedObject", "source", "count"] {
        assert!(v1.get(core_name).is_none(), "{core_name} in {v1}");
    }

    // Field selectors by each API's names; the other API's names are refused.
    let select = |resource: &str, selector: &str| {
        let out = server.kubectl(
            v,
            &["get", resource, "--field-selector", selector, "-o", "name"],
        );
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    };
    assert_eq!(
        select(
            "events.events.k8s.io",
            "regarding.name=cm,regarding.kind=ConfigMap,reportingController=loader"
        ),
        (true, "event.events.k8s.io/cm-old".into(), String::new())
    );
    assert_eq!(
        select("events", "involvedObject.name=cm,type=Normal"),
        (true, "event/cm-synced".into(), String::new())
    );
    let (ok, _, refused) = select("events.events.k8s.io", "involvedObject.name=cm");
    assert!(
        !ok && refused.contains("field label not supported: involvedObject.name"),
        "{refused}"
    );

    // Field ownership holds across the versions: what a manager applied through
    // events.k8s.io/v1 conflicts with another manager's apply through core/v1.
    let ssa = server.file(
        "ssa.yaml",
        &NEW_STYLE.replace("name: cm-synced", "name: cm-ssa"),
    );
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=v1-writer",
            "-f",
            s(&ssa),
        ],
    );
    let core_apply = server.file(
        "ssa-core.yaml",
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: cm-ssa\n  namespace: default\nmessage: rewritten\n",
    );
    let conflict = server.fails(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=core-writer",
            "-f",
            s(&core_apply),
        ],
    );
    assert!(
        conflict.contains("conflict with \"v1-writer\"") && conflict.contains(".message"),
        "{conflict}"
    );
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=core-writer",
            "-f",
            s(&core_apply),
        ],
    );
    let v1 = get_json(
        &server,
        &["get", "events.events.k8s.io", "cm-ssa", "-o", "json"],
    );
    assert_eq!(v1["note"], "rewritten");
    server.ok(v, &["delete", "events", "cm-ssa"]);

    // Table output: kube-apiserver's event columns for both versions.
    let table = server.ok(v, &["get", "events.events.k8s.io", "-o", "wide"]);
    let header = table.lines().next().unwrap_or("");
    for col in [
        "LAST SEEN",
        "TYPE",
        "REASON",
        "OBJECT",
        "SUBOBJECT",
        "SOURCE",
        "MESSAGE",
        "FIRST SEEN",
        "COUNT",
        "NAME",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let synced = table
        .lines()
        .find(|l| l.contains("cm-synced"))
        .unwrap_or_else(|| panic!("{table}"));
    for cell in [
        "Normal",
        "Synced",
        "configmap/cm",
        "example.com/syncer, syncer-0",
        "copied the settings",
    ] {
        assert!(synced.contains(cell), "{cell:?} in {synced}");
    }
    let old = table
        .lines()
        .find(|l| l.contains("cm-old"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        old.contains("loader, node-a") && old.contains("Warning"),
        "{old}"
    );

    // A v1 Event without what events.k8s.io/v1 requires is refused with 422.
    let bare = server.file(
        "bare.json",
        r#"{"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "bare"}, "regarding": {"kind": "ConfigMap", "namespace": "default", "name": "cm"}, "note": "hi"}"#,
    );
    let err = server.fails(v, &["create", "-f", s(&bare)]);
    assert!(err.contains("is invalid"), "{err}");
    for want in ["eventTime: Required value", "type: Invalid value"] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    let verbose = server.kubectl(v, &["create", "-f", s(&bare), "-v=6"]);
    let log = String::from_utf8_lossy(&verbose.stderr);
    assert!(log.contains("422 Unprocessable Entity"), "{log}");
    let no_reporter = server.file(
        "noreporter.yaml",
        &NEW_STYLE
            .replace("name: cm-synced", "name: no-reporter")
            .replace("reportingController: example.com/syncer\n", "")
            .replace("reportingInstance: syncer-0\n", ""),
    );
    let err = server.fails(v, &["create", "-f", s(&no_reporter)]);
    for want in [
        "reportingController: Required value",
        "reportingInstance: Required value",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    // What happened is immutable through events.k8s.io/v1.
    let err = server.fails(
        v,
        &[
            "patch",
            "events.events.k8s.io",
            "cm-synced",
            "--type=merge",
            "-p",
            r#"{"note":"rewritten"}"#,
        ],
    );
    assert!(err.contains("field is immutable"), "{err}");

    // A watch through events.k8s.io/v1 sees a core/v1 create, converted.
    let mut cmd = server.kubectl_cmd(v);
    cmd.args([
        "get",
        "events.events.k8s.io",
        "-w",
        "--output-watch-events",
        "-o",
        "name",
    ]);
    let (live, rx) = spawn_lines(cmd);
    let listed: Value = serde_json::from_str(&server.ok(
        v,
        &[
            "get",
            "--raw",
            "/apis/events.k8s.io/v1/namespaces/default/events",
        ],
    ))
    .expect("list JSON");
    let rv = listed["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_string();
    std::thread::sleep(Duration::from_millis(500));
    let later = server.file(
        "later.yaml",
        &OLD_STYLE.replace("name: cm-old", "name: cm-later"),
    );
    server.ok(v, &["create", "-f", s(&later)]);
    let seen = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(15)).ok())
        .find(|l| l.contains("cm-later"))
        .expect("the v1 watch saw the core create");
    assert_eq!(seen.trim(), "event.events.k8s.io/cm-later");
    drop(live);
    let url = format!("/apis/events.k8s.io/v1/namespaces/default/events?watch=true&resourceVersion={rv}&timeoutSeconds=2");
    let replay = server.ok(v, &["get", "--raw", &url]);
    let first: Value =
        serde_json::from_str(replay.lines().next().unwrap_or("")).expect("watch event");
    assert_eq!(first["type"], "ADDED");
    assert_eq!(first["object"]["apiVersion"], "events.k8s.io/v1");
    assert_eq!(first["object"]["metadata"]["name"], "cm-later");
    assert_eq!(first["object"]["note"], "read from disk");

    // Patched and deleted through the other API.
    server.ok(v, &["label", "events", "cm-synced", "seen=yes"]);
    let v1 = get_json(
        &server,
        &["get", "events.events.k8s.io", "cm-synced", "-o", "json"],
    );
    assert_eq!(v1["metadata"]["labels"]["seen"], "yes");
    assert_eq!(v1["note"], "copied the settings");
    server.ok(v, &["delete", "events.events.k8s.io", "cm-old"]);
    server.ok(v, &["delete", "events", "cm-synced"]);
    let left = server.ok(v, &["get", "events", "-o", "name"]);
    assert_eq!(left.trim(), "event/cm-later", "{left}");

    // kubectl events reads the core API and shows events of both kinds.
    let again = server.file("again.yaml", NEW_STYLE);
    server.ok(v, &["create", "-f", s(&again)]);
    for k in ["1.27", "1.33"] {
        let out = server.ok(k, &["events", "--for", "configmap/cm"]);
        assert!(
            out.contains("copied the settings") && out.contains("read from disk"),
            "kubectl {k} events:\n{out}"
        );
    }
}

#[test]
fn events_k8s_io_v1_is_discovered_and_explained() {
    let server = Server::start();
    for v in ["1.27", "1.33"] {
        let resources = server.ok(v, &["api-resources", "--no-headers"]);
        let events: Vec<Vec<&str>> = resources
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|cols| cols.first() == Some(&"events"))
            .collect();
        assert_eq!(
            events,
            [
                vec!["events", "ev", "v1", "true", "Event"],
                vec!["events", "events.k8s.io/v1", "true", "Event"],
            ],
            "kubectl {v} api-resources:\n{resources}"
        );
        // (kubectl explain takes no group-qualified resource: `events.events.k8s.io` is
        // read as fields of core events by every kubectl; the group goes in a flag.)
        let explained = server.ok(v, &["explain", "events", "--api-version=events.k8s.io/v1"]);
        for want in [
            "events.k8s.io",
            "regarding",
            "note",
            "reportingController",
            "eventTime",
        ] {
            assert!(
                explained.contains(want),
                "kubectl {v}: {want:?} in {explained}"
            );
        }
        let field = server.ok(
            v,
            &["explain", "events.series", "--api-version=events.k8s.io/v1"],
        );
        assert!(field.contains("lastObservedTime"), "kubectl {v}: {field}");
    }
    // The plain discovery documents older clients read.
    let group = get_json(&server, &["get", "--raw", "/apis/events.k8s.io"]);
    assert_eq!(
        group["preferredVersion"]["groupVersion"],
        "events.k8s.io/v1"
    );
    let list = get_json(&server, &["get", "--raw", "/apis/events.k8s.io/v1"]);
    assert_eq!(list["resources"][0]["name"], "events");
    assert!(list["resources"][0].get("shortNames").is_none(), "{list}");
    let v3 = get_json(&server, &["get", "--raw", "/openapi/v3"]);
    assert!(v3["paths"].get("apis/events.k8s.io/v1").is_some(), "{v3}");
    let v2 = get_json(&server, &["get", "--raw", "/openapi/v2"]);
    assert!(
        v2["definitions"]
            .get("io.k8s.api.events.v1.Event")
            .is_some()
            && v2["paths"]
                .get("/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}")
                .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_recorder_publishes_events_kubectl_describe_shows() {
    let server = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let client = crate::kube_client::client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "recorded"},
        "data": {"k": "v"},
    }))
    .expect("configmap");
    let cm = cms
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
    let reporter = Reporter {
        controller: "example.com/recorder-test".into(),
        instance: Some("recorder-0".into()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let event = Event {
        type_: EventType::Warning,
        reason: "Drifted".into(),
        note: Some("the data changed outside the controller".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = cm.object_ref(&());
    recorder
        .publish(&event, &reference)
        .await
        .expect("first publish creates an events.k8s.io/v1 Event");
    // The same again: the recorder patches the Event's series.
    recorder
        .publish(&event, &reference)
        .await
        .expect("second publish patches its series");

    let described = tokio::task::spawn_blocking(move || {
        let out = wait_for(20, "the recorded event in describe", || {
            let out = server.ok("1.33", &["describe", "configmap", "recorded"]);
            out.contains("Drifted").then_some(out)
        });
        let core = get_json(
            &server,
            &[
                "get",
                "events",
                "--field-selector",
                "involvedObject.name=recorded",
                "-o",
                "json",
            ],
        );
        (out, core)
    })
    .await
    .expect("kubectl");
    let (out, core) = described;
    for want in [
        "Warning",
        "Drifted",
        "example.com/recorder-test",
        "the data changed outside the controller",
    ] {
        assert!(out.contains(want), "{want:?} in:\n{out}");
    }
    let items = core["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{core}");
    assert_eq!(items[0]["series"]["count"], 2);
    assert_eq!(items[0]["reportingComponent"], "example.com/recorder-test");
    assert_eq!(
        items[0]["involvedObject"]["uid"],
        cm.metadata.uid.clone().unwrap_or_default()
    );
}
