//! Server-side apply with kubectl (`apply --server-side`): field ownership in
//! managedFields, conflicts with other managers, `--force-conflicts`, and fields that leave
//! the manifest leaving the object.

use crate::harness::{get_json, s, Server};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {team: a, tier: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox
";

#[test]
fn kubectl_server_side_apply_owns_merges_and_conflicts() {
    let server = Server::start();
    for v in ["1.27", "1.33"] {
        let file = server.file("web.yaml", DEPLOYMENT);
        let out = server.ok(v, &["apply", "--server-side", "-f", s(&file)]);
        assert!(
            out.contains("deployment.apps/web serverside-applied"),
            "{v}: {out}"
        );
        let d = get_json(
            &server,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "json",
                "--show-managed-fields",
            ],
        );
        let entries = d["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields");
        let mine = entries
            .iter()
            .find(|e| e["manager"] == "kubectl" && e["operation"] == "Apply")
            .unwrap_or_else(|| panic!("{v}: no Apply entry: {entries:?}"));
        assert_eq!(
            mine["fieldsV1"]["f:spec"]["f:replicas"],
            serde_json::json!({})
        );
        assert_eq!(mine["apiVersion"], "apps/v1");

        // Another writer takes replicas; applying another value conflicts, naming it.
        server.ok(v, &["scale", "deployment", "web", "--replicas=4"]);
        let three = server.file(
            "three.yaml",
            &DEPLOYMENT.replace("replicas: 2", "replicas: 3"),
        );
        let err = server.fails(v, &["apply", "--server-side", "-f", s(&three)]);
        assert!(
            err.contains("Apply failed with 1 conflict: conflict with \"kubectl")
                && err.contains(": .spec.replicas"),
            "{v}: {err}"
        );
        assert_eq!(
            get_json(&server, &["get", "deployment", "web", "-o", "json"])["spec"]["replicas"],
            4
        );
        server.ok(
            v,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                s(&three),
            ],
        );
        assert_eq!(
            get_json(&server, &["get", "deployment", "web", "-o", "json"])["spec"]["replicas"],
            3
        );

        // A label added by another command stays when the manifest drops one of its own,
        // which goes.
        server.ok(v, &["label", "deployment", "web", "extra=yes"]);
        let fewer = server.file(
            "fewer.yaml",
            &DEPLOYMENT
                .replace("{team: a, tier: web}", "{team: a}")
                .replace("replicas: 2", "replicas: 3"),
        );
        server.ok(v, &["apply", "--server-side", "-f", s(&fewer)]);
        let labels =
            &get_json(&server, &["get", "deployment", "web", "-o", "json"])["metadata"]["labels"];
        assert_eq!(
            labels,
            &serde_json::json!({"team": "a", "extra": "yes"}),
            "{v}"
        );

        // A second applier changing a field the first applied is told whose it is.
        let other = server.file(
            "other.yaml",
            &DEPLOYMENT
                .replace("image: busybox", "image: busybox:2")
                .replace("replicas: 2", "replicas: 3"),
        );
        let err = server.fails(
            v,
            &[
                "apply",
                "--server-side",
                "--field-manager=ci",
                "-f",
                s(&other),
            ],
        );
        assert!(
            err.contains(
                "conflict with \"kubectl\": .spec.template.spec.containers[name=\"web\"].image"
            ),
            "{v}: {err}"
        );
        server.ok(v, &["delete", "deployment", "web"]);
    }
}
