//! The API server as kubectl sees it.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{s, spawn_lines, wait_for, Server, KUBECTLS};

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// POSTs a file as it is to the configmaps of `default` and returns kubectl's error.
fn post_configmap(server: &Server, file: &std::path::Path) -> String {
    server.fails(
        "1.33",
        &[
            "create",
            "--raw",
            "/api/v1/namespaces/default/configmaps",
            "-f",
            s(file),
        ],
    )
}

fn configmap(name: &str, app: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    app: {app}\ndata:\n  k: v\n")
}

#[test]
fn object_lifecycle_with_each_kubectl_version() {
    let server = Server::start();
    for v in KUBECTLS {
        let name = format!("cm-{}", v.replace('.', "-"));
        let app = format!("app{}", v.replace('.', ""));
        let file = server.file(&format!("{name}.yaml"), &configmap(&name, &app));
        assert!(server
            .ok(v, &["create", "-f", s(&file)])
            .contains(&format!("configmap/{name} created")));
        let got = json(&server.ok(v, &["get", "configmap", &name, "-o", "json"]));
        assert_eq!(got["data"]["k"], "v");
        assert_eq!(got["metadata"]["namespace"], "default");
        assert!(got["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| u.len() == 36));
        let rv1: i64 = got["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();

        server.ok(v, &["label", "configmap", &name, "tier=front"]);
        server.ok(v, &["annotate", "configmap", &name, "note=hello"]);
        assert_eq!(
            server
                .ok(
                    v,
                    &[
                        "get",
                        "cm",
                        "-l",
                        &format!("app={app},tier=front"),
                        "-o",
                        "name"
                    ]
                )
                .trim(),
            format!("configmap/{name}")
        );
        assert_eq!(
            server
                .ok(
                    v,
                    &[
                        "get",
                        "cm",
                        "-l",
                        &format!("app={app},tier!=front"),
                        "-o",
                        "name"
                    ]
                )
                .trim(),
            ""
        );
        server.ok(
            v,
            &[
                "patch",
                "configmap",
                &name,
                "--type=json",
                "-p",
                r#"[{"op":"add","path":"/data/j","value":"1"}]"#,
            ],
        );
        server.ok(
            v,
            &[
                "patch",
                "configmap",
                &name,
                "--type=merge",
                "-p",
                r#"{"data":{"m":"2","k":null}}"#,
            ],
        );
        let got = json(&server.ok(v, &["get", "configmap", &name, "-o", "json"]));
        assert_eq!(got["data"], serde_json::json!({"j": "1", "m": "2"}));
        assert_eq!(got["metadata"]["annotations"]["note"], "hello");
        let rv2: i64 = got["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv2 > rv1, "every write advances resourceVersion");
        assert_eq!(
            server.ok(v, &["get", "configmap", &name, "-o", "jsonpath={.data.m}"]),
            "2"
        );

        assert!(server
            .ok(v, &["delete", "configmap", &name])
            .contains("deleted"));
        let err = server.fails(v, &["get", "configmap", &name]);
        assert!(
            err.contains(&format!(
                "Error from server (NotFound): configmaps \"{name}\" not found"
            )),
            "{err}"
        );
    }
}

#[test]
fn typed_creates_namespaces_and_their_contents() {
    let server = Server::start();
    // kubectl 1.27 sends JSON bodies for its typed create commands.
    let v = "1.27";
    let out = server.ok("1.33", &["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(out.contains(&format!("namespace/{ns}")), "{out}");
    }
    let svc = json(&server.ok(v, &["get", "service", "kubernetes", "-o", "json"]));
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");

    server.ok(v, &["create", "namespace", "demo"]);
    server.ok(
        v,
        &[
            "-n",
            "demo",
            "create",
            "configmap",
            "settings",
            "--from-literal=a=b",
        ],
    );
    server.ok(
        v,
        &[
            "-n",
            "demo",
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ],
    );
    server.ok(
        v,
        &[
            "-n",
            "demo",
            "create",
            "deployment",
            "web",
            "--image=localhost/busybox:latest",
            "--replicas=2",
        ],
    );
    let deploy = json(&server.ok(v, &["-n", "demo", "get", "deployment", "web", "-o", "json"]));
    assert_eq!(deploy["spec"]["replicas"], 2);
    assert_eq!(deploy["metadata"]["generation"], 1);
    server.ok(
        v,
        &["-n", "demo", "scale", "deployment", "web", "--replicas=3"],
    );
    let deploy = json(&server.ok(v, &["-n", "demo", "get", "deployment", "web", "-o", "json"]));
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(
        deploy["metadata"]["generation"], 2,
        "a spec change bumps generation"
    );
    server.ok(v, &["-n", "demo", "label", "deployment", "web", "x=y"]);
    let deploy = json(&server.ok(v, &["-n", "demo", "get", "deployment", "web", "-o", "json"]));
    assert_eq!(
        deploy["metadata"]["generation"], 2,
        "a metadata change does not"
    );
    // --current-replicas reads the Scale and writes it back with its resourceVersion.
    let err = server.fails(
        "1.33",
        &[
            "-n",
            "demo",
            "scale",
            "deployment",
            "web",
            "--current-replicas=2",
            "--replicas=4",
        ],
    );
    assert!(err.contains("Expected replicas to be 2, was 3"), "{err}");
    server.ok(
        "1.33",
        &[
            "-n",
            "demo",
            "scale",
            "deployment",
            "web",
            "--current-replicas=3",
            "--replicas=4",
        ],
    );
    let scale = json(&server.ok(
        "1.33",
        &[
            "get",
            "--raw",
            "/apis/apps/v1/namespaces/demo/deployments/web/scale",
        ],
    ));
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["selector"], "app=web");
    let secret = json(&server.ok(v, &["-n", "demo", "get", "secret", "creds", "-o", "json"]));
    assert_eq!(secret["data"]["password"], "czNjcmV0");

    // Deleting the namespace takes its contents with it.
    server.ok(v, &["delete", "namespace", "demo"]);
    server.fails(v, &["get", "namespace", "demo"]);
    assert_eq!(
        server
            .ok(
                v,
                &["get", "configmaps,secrets,deployments", "-A", "-o", "name"]
            )
            .lines()
            // Every namespace's root CA, published by a controller.
            .filter(|l| *l != "configmap/kube-root-ca.crt")
            .collect::<Vec<_>>(),
        Vec::<&str>::new()
    );
    let err = server.fails(
        v,
        &[
            "-n",
            "demo",
            "create",
            "configmap",
            "late",
            "--from-literal=a=b",
        ],
    );
    assert!(err.contains("namespaces \"demo\" not found"), "{err}");
    let err = server.fails(v, &["delete", "namespace", "kube-system"]);
    assert!(err.contains("Forbidden"), "{err}");
}

#[test]
fn stale_writes_conflict_and_state_survives_a_restart() {
    let mut server = Server::start();
    let v = "1.33";
    let file = server.file("c.yaml", &configmap("c", "x"));
    server.ok(v, &["create", "-f", s(&file)]);
    let current = server.ok(v, &["get", "configmap", "c", "-o", "json"]);
    let copy = server.file("c.json", &current);
    server.ok(v, &["replace", "-f", s(&copy)]);
    let err = server.fails(v, &["replace", "-f", s(&copy)]);
    assert!(
        err.contains("Conflict") && err.contains("the object has been modified"),
        "{err}"
    );
    let err = server.fails(v, &["create", "-f", s(&file)]);
    assert!(err.contains("AlreadyExists"), "{err}");

    let before = json(&server.ok(v, &["get", "configmap", "c", "-o", "json"]));
    server.restart();
    let after = json(&server.ok(v, &["get", "configmap", "c", "-o", "json"]));
    assert_eq!(
        before, after,
        "the object and its resourceVersion survive a restart"
    );
    // The certificates are reused: the old kubeconfig still works (checked by ok above),
    // and the bootstrap objects were not duplicated.
    assert_eq!(
        server
            .ok(v, &["get", "namespaces", "-o", "name"])
            .lines()
            .count(),
        4
    );
}

#[test]
fn watch_streams_every_change_in_order() {
    let server = Server::start();
    let v = "1.33";
    // The root CA publisher's ConfigMap is written first, so the watch sees only ours.
    wait_for(20, "kube-root-ca.crt in default", || {
        let out = server.kubectl(v, &["get", "configmap", "kube-root-ca.crt"]);
        out.status.success().then_some(())
    });
    // (kubectl get -o json rebuilds lists without their resourceVersion: ask raw.)
    let start = json(&server.ok(
        v,
        &["get", "--raw", "/api/v1/namespaces/default/configmaps"],
    ));
    let rv = start["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // A live `kubectl get -w` sees a change made after it started.
    let mut cmd = server.kubectl_cmd(v);
    cmd.args([
        "get",
        "configmaps",
        "-w",
        "--output-watch-events",
        "-o",
        "name",
    ]);
    let (live, rx) = spawn_lines(cmd);
    std::thread::sleep(Duration::from_millis(500));
    let file = server.file("w.yaml", &configmap("w", "x"));
    server.ok(v, &["create", "-f", s(&file)]);
    // (The list before the watch shows the root CA ConfigMap first.)
    let seen = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(15)).ok())
        .find(|l| !l.contains("configmap/kube-root-ca.crt"))
        .expect("kubectl get -w printed the new object");
    assert!(seen.contains("configmap/w"), "{seen}");
    drop(live);

    server.ok(v, &["label", "configmap", "w", "a=b"]);
    server.ok(v, &["delete", "configmap", "w"]);
    // Replaying from the listed resourceVersion gives every change, in order, then the
    // server ends the stream at the timeout.
    let url = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2"
    );
    let out = server.ok(v, &["get", "--raw", &url]);
    let events: Vec<Value> = out.lines().map(json).collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    let rvs: Vec<i64> = events
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
    // A label-filtered watch sees the object leave its selection as a deletion.
    let url = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2&labelSelector=a%3Db");
    let out = server.ok(v, &["get", "--raw", &url]);
    let types: Vec<String> = out
        .lines()
        .map(|l| json(l)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["ADDED", "DELETED"]);
}

#[test]
fn client_mistakes_get_kubernetes_status_errors() {
    let server = Server::start();
    let v = "1.33";
    let bad = server.file("bad.json", "{not json");
    let err = post_configmap(&server, &bad);
    assert!(err.contains("BadRequest"), "{err}");
    let wrong_kind = server.file(
        "wk.json",
        r#"{"apiVersion":"v1","kind":"Secret","metadata":{"name":"x"}}"#,
    );
    let err = post_configmap(&server, &wrong_kind);
    assert!(
        err.contains("BadRequest") && err.contains("does not match the expected kind"),
        "{err}"
    );
    let bad_name = server.file(
        "bn.json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Not_Valid"}}"#,
    );
    let err = post_configmap(&server, &bad_name);
    assert!(
        err.contains("Invalid") || err.contains("is invalid"),
        "{err}"
    );
    let err = server.fails(
        v,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/configmaps?labelSelector=a%20in%20b",
        ],
    );
    assert!(err.contains("BadRequest"), "{err}");
    let err = server.fails(
        v,
        &["get", "--raw", "/api/v1/pods?fieldSelector=spec.bogus%3D1"],
    );
    assert!(err.contains("field label not supported"), "{err}");
    let err = server.fails(v, &["get", "nosuchthings"]);
    assert!(err.contains("doesn't have a resource type"), "{err}");

    // Without a client certificate: 401 with a Status body, not a crash or a 500.
    let ca = server.data_dir().join("server/tls/ca.crt");
    let out = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--cacert", s(&ca)])
        .arg(format!(
            "https://127.0.0.1:{}/api/v1/namespaces",
            server.port
        ))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "401");
    assert_eq!(json(body)["reason"], "Unauthorized");
    // The server is still serving.
    server.ok(v, &["get", "--raw", "/healthz"]);
}

#[test]
fn human_output_uses_server_side_tables() {
    let server = Server::start();
    // Aggregated discovery: a cold kubectl needs /api and /apis, not one request per group.
    let fresh = server.file("fresh-cache", "");
    std::fs::remove_file(&fresh).unwrap();
    let out = server
        .kubectl_cmd("1.27")
        .args(["get", "namespaces", "-v=6", "--cache-dir", s(&fresh)])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let gets: Vec<&str> = log.lines().filter(|l| l.contains("GET https://")).collect();
    assert_eq!(gets.len(), 3, "{gets:#?}");
    assert!(!log.contains("/apis/apps/v1"), "{log}");
    let ns = server.ok("1.33", &["get", "namespaces"]);
    let header: Vec<&str> = ns.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "STATUS", "AGE"]);
    assert!(
        ns.lines()
            .any(|l| l.starts_with("kube-system") && l.contains("Active")),
        "{ns}"
    );
    let svc = server.ok("1.31", &["get", "service", "kubernetes", "-o", "wide"]);
    let header: Vec<&str> = svc.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    assert!(
        svc.contains("10.43.0.1") && svc.contains("443/TCP"),
        "{svc}"
    );
    server.ok(
        "1.27",
        &[
            "create",
            "deployment",
            "web",
            "--image=localhost/busybox:latest",
            "--replicas=2",
        ],
    );
    let deploy = server.ok("1.33", &["get", "deployments"]);
    let row: Vec<&str> = deploy.lines().nth(1).unwrap().split_whitespace().collect();
    // No nodes: pods may exist (UP-TO-DATE) but none is ready or available.
    assert_eq!(&row[..2], ["web", "0/2"]);
    assert_eq!(row[3], "0");
    let all = server.ok("1.33", &["get", "all"]);
    assert!(
        all.contains("service/kubernetes") && all.contains("deployment.apps/web"),
        "{all}"
    );
    // Watch events carry one-row tables too: `kubectl get -w` prints their cells.
    let mut cmd = server.kubectl_cmd("1.33");
    cmd.args(["get", "namespaces", "-w"]);
    let (live, rx) = spawn_lines(cmd);
    // Header and the four namespaces of the list come first.
    for _ in 0..5 {
        rx.recv_timeout(Duration::from_secs(15))
            .expect("listed namespaces");
    }
    server.ok("1.27", &["create", "namespace", "watched"]);
    let line = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the new namespace arrives as a watch event");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cells[..2], ["watched", "Active"], "{line}");
    drop(live);
}

#[test]
fn client_side_apply_creates_updates_and_prunes_fields() {
    let server = Server::start();
    for v in ["1.27", "1.33"] {
        let name = format!("web{}", v.replace('.', ""));
        let manifest = |image: &str, extra_env: bool| {
            let env = if extra_env {
                "\n        env:\n        - name: DEBUG\n          value: \"1\""
            } else {
                ""
            };
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\nspec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: main\n        image: {image}{env}\n"
            )
        };
        let file = server.file(
            &format!("{name}.yaml"),
            &manifest("localhost/busybox:v1", true),
        );
        assert!(server.ok(v, &["apply", "-f", s(&file)]).contains("created"));
        std::fs::write(&file, manifest("localhost/busybox:v2", false)).unwrap();
        assert!(server
            .ok(v, &["apply", "-f", s(&file)])
            .contains("configured"));
        let d = json(&server.ok(v, &["get", "deployment", &name, "-o", "json"]));
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 1);
        assert_eq!(c[0]["image"], "localhost/busybox:v2");
        assert!(
            c[0].get("env").is_none(),
            "a field removed from the manifest is removed from the object: {c}"
        );
        assert_eq!(d["metadata"]["generation"], 2);
        assert!(server
            .ok(v, &["apply", "-f", s(&file)])
            .contains("unchanged"));
        // kubectl patch with the default (strategic) type merges containers by name.
        server.ok(v, &["patch", "deployment", &name, "-p", r#"{"spec":{"template":{"spec":{"containers":[{"name":"side","image":"localhost/busybox:v1"}]}}}}"#]);
        let d = json(&server.ok(v, &["get", "deployment", &name, "-o", "json"]));
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
}

#[test]
fn compacted_resource_versions_are_gone_and_watchers_relist() {
    let server = Server::start_with(&["--etcd-compaction-interval", "1"]);
    let v = "1.33";
    let listed = json(&server.ok(
        v,
        &["get", "--raw", "/api/v1/namespaces/default/configmaps"],
    ));
    let old_rv: i64 = listed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let file = server.file("g.yaml", &configmap("g", "x"));
    server.ok(v, &["create", "-f", s(&file)]);
    server.ok(v, &["label", "configmap", "g", "n=1"]);
    // After two compaction intervals the history before the label is gone.
    std::thread::sleep(Duration::from_millis(2500));
    server.ok(v, &["label", "configmap", "g", "n=2", "--overwrite"]);
    std::thread::sleep(Duration::from_millis(2500));
    let url = format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_rv}&timeoutSeconds=2");
    let out = server.ok(v, &["get", "--raw", &url]);
    let events: Vec<Value> = out.lines().map(json).collect();
    assert_eq!(events.len(), 1, "{out}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
    // kubectl's reflector-based wait still works after the compaction.
    server.ok(
        v,
        &[
            "wait",
            "--for=jsonpath={.metadata.labels.n}=2",
            "configmap/g",
            "--timeout=20s",
        ],
    );
}

#[test]
fn bearer_tokens_from_a_token_file() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "s3cr3t-token,alice,1001,\"system:masters\"\n").unwrap();
    let server = Server::start_with(&["--token-auth-file", s(&tokens)]);
    let ca = server.data_dir().join("server/tls/ca.crt");
    let url = format!("https://127.0.0.1:{}", server.port);
    let with_token = |token: &str| {
        let out = std::process::Command::new(crate::harness::kubectl_path("1.33"))
            .args([
                "--kubeconfig",
                "/dev/null",
                "--server",
                &url,
                "--certificate-authority",
                s(&ca),
                "--token",
                token,
            ])
            .args(["get", "namespaces", "-o", "name"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = with_token("s3cr3t-token");
    assert!(ok, "{err}");
    assert!(out.contains("namespace/default"), "{out}");
    let (ok, _, err) = with_token("wrong-token");
    assert!(!ok);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
}

#[test]
fn a_malformed_token_file_stops_the_server_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "no-commas-here\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pikube"))
        .args([
            "server",
            "--config",
            "/dev/null",
            "--disable-agent",
            "--bind-address",
            "127.0.0.1",
            "--https-listen-port",
            "1",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--write-kubeconfig")
        .arg(dir.path().join("kc"))
        .arg("--token-auth-file")
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("pikube: error:") && last.contains("line 1"),
        "{err}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created before the configuration is checked"
    );
}
