//! CustomResourceDefinitions with the real kubectl (1.27 and 1.33) and kube-rs: a
//! namespaced kind with status and scale subresources and printer columns, and a
//! cluster-scoped one.

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};

use crate::harness::{free_port, get_json, s, spawn_lines, wait_for, Server};

const CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wd]
    categories: [all]
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale:
        specReplicasPath: .spec.replicas
        statusReplicasPath: .status.replicas
    additionalPrinterColumns:
    - name: Size
      type: string
      jsonPath: .spec.size
    - name: Replicas
      type: integer
      jsonPath: .spec.replicas
    - name: Ready
      type: string
      jsonPath: .status.conditions[?(@.type=="Ready")].status
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: string
                enum: [small, large]
              replicas:
                type: integer
                minimum: 0
                default: 1
              extra:
                type: object
                x-kubernetes-preserve-unknown-fields: true
          status:
            type: object
            properties:
              replicas:
                type: integer
              conditions:
                type: array
                items:
                  type: object
                  properties:
                    type:
                      type: string
                    status:
                      type: string
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Cluster
  names:
    plural: gadgets
    kind: Gadget
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              color:
                type: string
"#;

const WIDGET: &str = r#"
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
spec:
  size: small
  extra:
    anything: [1, 2]
"#;

const GADGET: &str = r#"
apiVersion: example.com/v1
kind: Gadget
metadata:
  name: g1
spec:
  color: red
"#;

/// Waits (with kubectl) until the definitions are established.
pub fn established(server: &Server, v: &str, crds: &[&str]) {
    let mut args = vec!["wait", "--for", "condition=established", "--timeout=30s"];
    args.extend(crds);
    server.ok(v, &args);
}

fn round_trip(server: &Server, v: &str) {
    let crds = server.file("crds.yaml", CRDS);
    server.ok(v, &["apply", "-f", s(&crds)]);
    established(
        server,
        v,
        &["crd/widgets.example.com", "crd/gadgets.example.com"],
    );
    let resources = server.ok(v, &["api-resources", "--api-group=example.com"]);
    assert!(
        resources.contains("widgets") && resources.contains("wd") && resources.contains("Widget"),
        "{resources}"
    );
    assert!(resources.contains("gadgets"), "{resources}");

    // The schema is published: kubectl explain reads it from /openapi/v3.
    let explained = server.ok(v, &["explain", "widget.spec"]);
    assert!(
        explained.contains("Widget")
            && explained.contains("size")
            && explained.contains("replicas"),
        "{explained}"
    );
    let widget = server.file("widget.yaml", WIDGET);
    server.ok(v, &["apply", "-f", s(&widget)]);
    // Defaults applied, unknown fields kept where the schema says so.
    let w = get_json(server, &["get", "widget", "w1", "-o", "json"]);
    assert_eq!(w["spec"]["replicas"], 1, "{w}");
    assert_eq!(w["spec"]["extra"]["anything"], serde_json::json!([1, 2]));
    // Every name kubectl resolves, and the printer columns.
    for name in ["widgets", "widget", "wd", "Widget", "widgets.example.com"] {
        let out = server.ok(v, &["get", name]);
        assert!(out.contains("w1"), "{name}: {out}");
    }
    let table = server.ok(v, &["get", "wd"]);
    let header = table.lines().next().unwrap_or("");
    assert!(
        header.contains("NAME")
            && header.contains("SIZE")
            && header.contains("REPLICAS")
            && header.contains("AGE"),
        "{table}"
    );
    assert!(table.contains("small"), "{table}");
    let all = server.ok(v, &["get", "all"]);
    assert!(all.contains("widget.example.com/w1"), "{all}");

    // Unknown fields refused (kubectl validates on the server, Strict).
    let bad = server.file(
        "bad.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w2\nspec:\n  size: small\n  colour: blue\n",
    );
    let err = server.fails(v, &["apply", "-f", s(&bad)]);
    assert!(err.contains("unknown field \"spec.colour\""), "{err}");
    // Schema violations: 422 with field paths.
    let invalid = server.file(
        "invalid.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w3\nspec:\n  size: huge\n  replicas: -2\n",
    );
    let err = server.fails(v, &["apply", "-f", s(&invalid)]);
    assert!(
        err.contains("spec.size: Unsupported value: \"huge\"") && err.contains("spec.replicas"),
        "{err}"
    );

    // Patches: merge and JSON; strategic merge refused.
    let patch = |kind: &str, body: &str| {
        server.kubectl(
            v,
            &[
                "patch",
                "widget",
                "w1",
                &format!("--type={kind}"),
                "-p",
                body,
            ],
        )
    };
    let patched = |kind: &str, body: &str| {
        let out = patch(kind, body);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    patched("merge", r#"{"spec":{"size":"large"}}"#);
    patched(
        "json",
        r#"[{"op":"replace","path":"/spec/replicas","value":2}]"#,
    );
    let out = patch("strategic", r#"{"spec":{"size":"small"}}"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("UnsupportedMediaType")
            || err.contains("unknown format"),
        "{err}"
    );
    // Status is its own subresource: the main resource does not change it.
    patched("merge", r#"{"status":{"replicas":9}}"#);
    let w = get_json(server, &["get", "widget", "w1", "-o", "json"]);
    assert!(w["status"]["replicas"].is_null(), "{w}");
    // … the status subresource does, and the printer columns show it.
    server.ok(
        v,
        &[
            "patch",
            "widget",
            "w1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":2,"conditions":[{"type":"Issuing","status":"False"},{"type":"Ready","status":"True"}]}}"#,
        ],
    );
    let table = server.ok(v, &["get", "widget", "w1"]);
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row.get(1..4), Some(&["large", "2", "True"][..]), "{table}");
    assert_eq!(w["spec"]["size"], "large");
    assert_eq!(w["metadata"]["generation"], 3, "{w}");
    // Scale.
    server.ok(v, &["scale", "widget", "w1", "--replicas=5"]);
    let w = get_json(server, &["get", "widget", "w1", "-o", "json"]);
    assert_eq!(w["spec"]["replicas"], 5, "{w}");
    // Server-side apply records its manager.
    // kubectl patch owns spec.size now: a conflict, then taken over.
    let err = server.fails(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=ssa-test",
            "-f",
            s(&widget),
        ],
    );
    assert!(err.contains("conflict with \"kubectl-patch\""), "{err}");
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=ssa-test",
            "-f",
            s(&widget),
        ],
    );
    let w = get_json(
        server,
        &["get", "widget", "w1", "-o", "json", "--show-managed-fields"],
    );
    let managers: Vec<&str> = w["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"ssa-test"), "{w}");

    // The cluster-scoped kind.
    let gadget = server.file("gadget.yaml", GADGET);
    server.ok(v, &["apply", "-f", s(&gadget)]);
    let g = get_json(server, &["get", "gadget", "g1", "-o", "json"]);
    assert_eq!(g["spec"]["color"], "red");
    assert!(g["metadata"].get("namespace").is_none(), "{g}");
    server.ok(v, &["label", "gadget", "g1", "tier=gold"]);
    let listed = server.ok(v, &["get", "gadgets", "-l", "tier=gold", "-o", "name"]);
    assert_eq!(listed.trim(), "gadget.example.com/g1");
    server.ok(v, &["delete", "gadget", "g1"]);

    // Deleting a definition removes its objects and stops serving them.
    server.ok(v, &["delete", "-f", s(&crds)]);
    let err = server.fails(v, &["get", "widgets"]);
    assert!(
        err.contains("doesn't have a resource type") || err.contains("the server"),
        "{err}"
    );
    server.ok(v, &["apply", "-f", s(&crds)]);
    established(server, v, &["crd/widgets.example.com"]);
    let out = server.ok(v, &["get", "widgets", "-A", "-o", "name"]);
    assert!(out.trim().is_empty(), "old objects came back: {out}");
    server.ok(v, &["delete", "-f", s(&crds)]);
}

#[test]
fn crd_round_trip_kubectl_1_27() {
    let server = Server::start();
    round_trip(&server, "1.27");
}

#[test]
fn crd_round_trip_kubectl_1_33() {
    let server = Server::start();
    round_trip(&server, "1.33");
}

#[test]
fn invalid_definitions_are_refused_with_field_paths() {
    let server = Server::start();
    let bad = server.file(
        "bad-crd.yaml",
        r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: things.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: stuff, kind: Thing}
  versions:
  - {name: v1, served: true, storage: false, schema: {openAPIV3Schema: {type: object, properties: {spec: {properties: {a: {type: string}}}}}}}
"#,
    );
    let err = server.fails("1.33", &["apply", "-f", s(&bad)]);
    for want in [
        "metadata.name: Invalid value: \"things.example.com\": must be spec.names.plural+\".\"+spec.group",
        "must have exactly one version marked as storage version",
        "spec.versions[0].schema.openAPIV3Schema.properties[spec].type: Required value",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_dynamic_objects() {
    let server = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let crds = server.file("crds.yaml", CRDS);
    let s2 = tokio::task::spawn_blocking(move || {
        server.ok("1.33", &["apply", "-f", s(&crds)]);
        server
    })
    .await
    .expect("apply");
    let kubeconfig = Kubeconfig::read_from(s2.kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    let client = Client::try_from(config).expect("client");
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let (ar, _caps) = kube::discovery::pinned_kind(&client, &gvk)
        .await
        .expect("discovered");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "from-kube-rs"},
        "spec": {"size": "large"},
    }))
    .expect("object");
    let created = api
        .create(&PostParams::default(), &obj)
        .await
        .expect("create");
    assert_eq!(created.data["spec"]["replicas"], 1);
    let listed = api.list(&ListParams::default()).await.expect("list");
    assert!(listed.iter().any(|o| o.name_any() == "from-kube-rs"));
    let ar2 = ApiResource::from_gvk_with_plural(&gvk, "widgets");
    let api2: Api<DynamicObject> = Api::all_with(client, &ar2);
    let everywhere =
        tokio::time::timeout(Duration::from_secs(20), api2.list(&ListParams::default()))
            .await
            .expect("in time")
            .expect("list all");
    assert_eq!(everywhere.items.len(), 1);
}

const MULTI: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: sprockets.example.org
spec:
  group: example.org
  scope: Namespaced
  names:
    plural: sprockets
    kind: Sprocket
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"#;

#[test]
fn custom_resources_list_select_watch_and_go_with_their_namespace() {
    let mut server = Server::start();
    let v = "1.33";
    let crd = server.file("multi.yaml", MULTI);
    server.ok(v, &["apply", "-f", s(&crd)]);
    established(&server, v, &["crd/sprockets.example.org"]);
    // Both versions are discovered; v1 is preferred.
    let group = get_json(&server, &["get", "--raw", "/apis/example.org"]);
    assert_eq!(group["preferredVersion"]["version"], "v1", "{group}");
    assert_eq!(
        group["versions"].as_array().map(Vec::len),
        Some(2),
        "{group}"
    );
    server.ok(v, &["create", "namespace", "gears"]);
    let mut cmd = server.kubectl_cmd(v);
    cmd.args(["get", "sprockets", "-n", "gears", "-w", "-o", "name"]);
    let (watch, rx) = spawn_lines(cmd);
    for i in 0..4 {
        let obj = format!(
            "apiVersion: example.org/v1\nkind: Sprocket\nmetadata:\n  name: s{i}\n  namespace: gears\n  labels:\n    parity: {}\nspec:\n  teeth: {i}\n",
            if i % 2 == 0 { "even" } else { "odd" }
        );
        let f = server.file(&format!("s{i}.yaml"), &obj);
        server.ok(v, &["create", "-f", s(&f)]);
    }
    let mut seen = Vec::new();
    while seen.len() < 4 {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("watch saw only {seen:?}"),
        }
    }
    drop(watch);
    assert!(
        seen.contains(&"sprocket.example.org/s3".to_string()),
        "{seen:?}"
    );
    // Read in the other version: only apiVersion differs.
    let old = get_json(
        &server,
        &[
            "get",
            "--raw",
            "/apis/example.org/v1beta1/namespaces/gears/sprockets/s1",
        ],
    );
    assert_eq!(old["apiVersion"], "example.org/v1beta1");
    assert_eq!(old["spec"]["teeth"], 1);
    // Selectors and pages.
    let odd = server.ok(
        v,
        &[
            "get",
            "sprockets",
            "-n",
            "gears",
            "-l",
            "parity=odd",
            "-o",
            "name",
        ],
    );
    assert_eq!(odd.lines().count(), 2, "{odd}");
    let named = server.ok(
        v,
        &[
            "get",
            "sprockets",
            "-A",
            "--field-selector",
            "metadata.name=s2",
            "-o",
            "name",
        ],
    );
    assert_eq!(named.trim(), "sprocket.example.org/s2");
    let page = get_json(
        &server,
        &[
            "get",
            "--raw",
            "/apis/example.org/v1/namespaces/gears/sprockets?limit=3",
        ],
    );
    assert_eq!(page["items"].as_array().map(Vec::len), Some(3));
    let token = page["metadata"]["continue"]
        .as_str()
        .expect("continue")
        .to_string();
    let rest = get_json(
        &server,
        &[
            "get",
            "--raw",
            &format!("/apis/example.org/v1/namespaces/gears/sprockets?limit=3&continue={token}"),
        ],
    );
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(1));
    let chunked = server.ok(
        v,
        &[
            "get",
            "sprockets",
            "-n",
            "gears",
            "--chunk-size=1",
            "-o",
            "name",
        ],
    );
    assert_eq!(chunked.lines().count(), 4, "{chunked}");
    // deletecollection with a selector.
    server.ok(
        v,
        &["delete", "sprockets", "-n", "gears", "-l", "parity=even"],
    );
    let left = server.ok(v, &["get", "sprockets", "-n", "gears", "-o", "name"]);
    assert_eq!(left.lines().count(), 2, "{left}");
    // Served again right after a restart.
    server.restart();
    let again = server.ok(v, &["get", "sprockets", "-n", "gears", "-o", "name"]);
    assert_eq!(again.lines().count(), 2, "{again}");
    // A deleted namespace takes its custom resources.
    server.ok(
        v,
        &[
            "delete",
            "namespace",
            "gears",
            "--wait=true",
            "--timeout=60s",
        ],
    );
    let after = server.ok(v, &["get", "sprockets", "-A", "-o", "name"]);
    assert!(after.trim().is_empty(), "{after}");
}

/// In a cluster every server serves custom resources, whichever server (leader or not)
/// stored the definition.
#[test]
fn every_server_of_a_cluster_serves_custom_resources() {
    let peer1 = free_port().to_string();
    let s1 = Server::start_with(&["--cluster-init", "--peer-port", &peer1]);
    let token = std::fs::read_to_string(s1.data_dir().join("server/token"))
        .expect("token file")
        .trim()
        .to_string();
    let url = format!("https://127.0.0.1:{}", s1.port);
    let peer2 = free_port().to_string();
    let s2 = Server::start_with(&["--server", &url, "--token", &token, "--peer-port", &peer2]);
    let v = "1.33";
    // Defined through the joined server, served by the first one.
    let crds = s2.file("crds.yaml", CRDS);
    s2.ok(v, &["apply", "-f", s(&crds)]);
    let widget = s1.file("widget.yaml", WIDGET);
    wait_for(20, "server 1 serves widgets", || {
        s1.kubectl(v, &["apply", "-f", s(&widget)])
            .status
            .success()
            .then_some(())
    });
    let out = s2.ok(v, &["get", "wd", "-o", "name"]);
    assert_eq!(out.trim(), "widget.example.com/w1");
    // Removed through one, gone from the other.
    s2.ok(v, &["delete", "crd", "widgets.example.com"]);
    wait_for(20, "server 1 stops serving widgets", || {
        (!s1.kubectl(v, &["get", "--raw", "/apis/example.com/v1/widgets"])
            .status
            .success())
        .then_some(())
    });
}
