//! OpenAPI and field validation as kubectl uses them: `apply`, `create -f`, `edit` and
//! `explain` with kubectl's defaults (no `--validate=false`), v3 for kubectl 1.29+ and the
//! protobuf v2 document for 1.27 and 1.28.

use crate::harness::{get_json, s, Server};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: a
        image: busybox
        env:
        - {name: A, value: \"1\"}
        - {name: B, value: \"2\"}
        ports:
        - containerPort: 80
      - name: b
        image: busybox
";

#[test]
fn apply_validates_on_the_server_and_merges_by_the_published_keys() {
    let server = Server::start();
    for v in ["1.27", "1.28", "1.31", "1.33"] {
        let full = server.file("full.yaml", DEPLOYMENT);
        let out = server.ok(v, &["apply", "-f", s(&full)]);
        assert!(out.contains("deployment.apps/web created"), "{v}: {out}");
        let out = server.ok(v, &["apply", "-f", s(&full)]);
        assert!(out.contains("deployment.apps/web unchanged"), "{v}: {out}");

        // Dropping an env var and a container from the manifest removes them: the
        // patch kubectl computes knows containers and env merge by name.
        let less = DEPLOYMENT
            .replace("        - {name: B, value: \"2\"}\n", "")
            .replace("      - name: b\n        image: busybox\n", "");
        let less = server.file("less.yaml", &less);
        let out = server.ok(v, &["apply", "-f", s(&less)]);
        assert!(out.contains("deployment.apps/web configured"), "{v}: {out}");
        let d = get_json(&server, &["get", "deployment", "web", "-o", "json"]);
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers.as_array().map(Vec::len),
            Some(1),
            "{v}: {containers}"
        );
        assert_eq!(containers[0]["name"], "a", "{v}");
        assert_eq!(
            containers[0]["env"],
            serde_json::json!([{"name": "A", "value": "1"}]),
            "{v}"
        );
        assert_eq!(containers[0]["ports"][0]["containerPort"], 80, "{v}");

        // A misspelt field is refused, naming it, on create and on apply.
        let typo = server.file(
            "typo.yaml",
            &DEPLOYMENT
                .replace("name: web", "name: typo")
                .replace("  replicas: 1\n", "  replica: 1\n"),
        );
        let err = server.fails(v, &["apply", "-f", s(&typo)]);
        assert!(
            err.contains("strict decoding error: unknown field \"spec.replica\""),
            "{v}: {err}"
        );
        let typo_web = server.file(
            "typo-web.yaml",
            &DEPLOYMENT.replace(
                "        image: busybox\n        env:",
                "        imagee: busybox\n        env:",
            ),
        );
        let err = server.fails(v, &["apply", "-f", s(&typo_web)]);
        assert!(
            err.contains("unknown field \"spec.template.spec.containers[0].imagee\""),
            "{v}: {err}"
        );
        server.ok(v, &["delete", "deployment", "web"]);
    }
}

#[test]
fn unknown_fields_warn_or_vanish_as_asked() {
    let server = Server::start();
    let cm = server.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  colour: red\ndata:\n  k: v\n",
    );
    let out = server.kubectl("1.33", &["create", "-f", s(&cm), "--validate=warn"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Warning: unknown field \"metadata.colour\""),
        "{err}"
    );
    let stored = get_json(&server, &["get", "configmap", "c", "-o", "json"]);
    assert!(stored["metadata"].get("colour").is_none(), "{stored}");
    assert_eq!(stored["data"]["k"], "v");

    let out = server.kubectl("1.33", &["replace", "-f", s(&cm), "--validate=ignore"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Warning"));

    // A directive the server does not know is a client mistake.
    let raw = server.file(
        "raw.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"raw"}}"#,
    );
    let err = server.fails(
        "1.33",
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps?fieldValidation=Maybe",
            "-f",
            s(&raw),
        ],
    );
    assert!(err.contains("invalid fieldValidation"), "{err}");
}

#[test]
fn explain_and_edit_work_with_every_kubectl() {
    let server = Server::start();
    for v in ["1.27", "1.29", "1.33"] {
        let out = server.ok(v, &["explain", "deployment.spec.replicas"]);
        assert!(
            out.contains("replicas") && out.contains("<integer>"),
            "{v}: {out}"
        );
        assert!(out.contains("Number of desired pods"), "{v}: {out}");
        let out = server.ok(v, &["explain", "pods.spec.containers.ports"]);
        assert!(out.contains("containerPort"), "{v}: {out}");
    }

    server.ok(
        "1.33",
        &["create", "configmap", "edited", "--from-literal=k=v"],
    );
    let editor = server.file(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/^  k: v$/  k: changed/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod editor");
    for v in ["1.27", "1.33"] {
        let out = server
            .kubectl_cmd(v)
            .env("KUBE_EDITOR", &editor)
            .args(["edit", "configmap", "edited"])
            .output()
            .expect("kubectl edit");
        assert!(out.status.success(), "{v}: {out:?}");
        let cm = get_json(&server, &["get", "configmap", "edited", "-o", "json"]);
        assert_eq!(cm["data"]["k"], "changed", "{v}");
        server.ok(
            v,
            &[
                "patch",
                "configmap",
                "edited",
                "-p",
                "{\"data\":{\"k\":\"v\"}}",
            ],
        );
    }
}

#[test]
fn documents_are_listed_by_hash_and_cached_by_it() {
    let server = Server::start();
    let index = get_json(&server, &["get", "--raw", "/openapi/v3"]);
    let url = index["paths"]["apis/apps/v1"]["serverRelativeURL"]
        .as_str()
        .expect("apps/v1 document")
        .to_string();
    assert!(url.starts_with("/openapi/v3/apis/apps/v1?hash="), "{url}");
    let doc = get_json(&server, &["get", "--raw", &url]);
    let deployment = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
    assert_eq!(
        deployment["x-kubernetes-group-version-kind"][0]["kind"],
        "Deployment"
    );
    let containers =
        &doc["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    // The same document by path alone (uncached) and a missing group-version.
    assert_eq!(
        get_json(&server, &["get", "--raw", "/openapi/v3/apis/apps/v1"]),
        doc
    );
    let err = server.fails("1.33", &["get", "--raw", "/openapi/v3/apis/nothing/v1"]);
    assert!(err.contains("NotFound"), "{err}");
    // v2 in JSON for clients that ask for it.
    let v2 = get_json(&server, &["get", "--raw", "/openapi/v2"]);
    assert_eq!(v2["swagger"], "2.0");
    assert_eq!(
        v2["definitions"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"]["$ref"],
        "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
    );
}
