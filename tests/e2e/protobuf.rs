//! kubectl 1.32+ typed commands, which send protobuf request bodies: the objects they
//! create are stored as the same JSON objects kubectl 1.27 (JSON bodies) would create.

use serde_json::Value;

use crate::harness::{get_json, Server};

/// The kubectl versions that send protobuf bodies.
const PROTOBUF_KUBECTLS: &[&str] = &["1.32", "1.33"];

fn get(server: &Server, ns: &str, what: &str) -> Value {
    get_json(server, &["-n", ns, "get", what, "-o", "json"])
}

/// Whether a creation timestamp is RFC 3339 and recent.
fn recent(ts: &Value) -> bool {
    ts.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_some_and(|t| (chrono::Utc::now() - t.to_utc()).num_seconds().abs() < 300)
}

/// The typed commands checked, with the object each creates.
const COMMANDS: &[(&str, &[&str])] = &[
    (
        "configmap/settings",
        &[
            "create",
            "configmap",
            "settings",
            "--from-literal=a=b",
            "--from-literal=empty=",
        ],
    ),
    (
        "secret/creds",
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ],
    ),
    (
        "deployment/web",
        &[
            "create",
            "deployment",
            "web",
            "--image=localhost/busybox:latest",
            "--replicas=2",
            "--port=8080",
        ],
    ),
    (
        "deployment/idle",
        &[
            "create",
            "deployment",
            "idle",
            "--image=localhost/busybox:latest",
            "--replicas=0",
        ],
    ),
    (
        "service/web-svc",
        &["create", "service", "clusterip", "web-svc", "--tcp=80:8080"],
    ),
    (
        "job/once",
        &[
            "create",
            "job",
            "once",
            "--image=localhost/busybox:latest",
            "--",
            "echo",
            "hi",
        ],
    ),
    (
        "pod/solo",
        &[
            "run",
            "solo",
            "--image=localhost/busybox:latest",
            "--labels=app=solo,tier=x",
            "--env=GREETING=hello",
            "--port=80",
            "--",
            "sleep",
            "3600",
        ],
    ),
    (
        "service/web-exposed",
        &[
            "expose",
            "deployment",
            "web",
            "--name=web-exposed",
            "--port=81",
            "--target-port=http-alt",
        ],
    ),
    (
        "serviceaccount/robot",
        &["create", "serviceaccount", "robot"],
    ),
    (
        "role/reader",
        &[
            "create",
            "role",
            "reader",
            "--verb=get,list",
            "--resource=pods,deployments.apps",
        ],
    ),
    (
        "rolebinding/reader-robot",
        &[
            "create",
            "rolebinding",
            "reader-robot",
            "--role=reader",
            "--serviceaccount=default:robot",
        ],
    ),
    (
        "poddisruptionbudget/web-pdb",
        &[
            "create",
            "poddisruptionbudget",
            "web-pdb",
            "--selector=app=web",
            "--min-available=50%",
        ],
    ),
    (
        "resourcequota/small",
        &["create", "quota", "small", "--hard=cpu=1500m,pods=10"],
    ),
    (
        "cronjob/nightly",
        &[
            "create",
            "cronjob",
            "nightly",
            "--image=localhost/busybox:latest",
            "--schedule=0 3 * * *",
        ],
    ),
    (
        "ingress/site",
        &[
            "create",
            "ingress",
            "site",
            "--rule=example.com/api*=web-svc:80",
        ],
    ),
];

/// An object without what differs between two creations of it: identity, times,
/// allocated addresses, status written by controllers.
fn normalized(mut obj: Value) -> Value {
    if let Some(meta) = obj["metadata"].as_object_mut() {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "namespace",
            "managedFields",
        ] {
            meta.remove(f);
        }
    }
    if let Some(spec) = obj["spec"].as_object_mut() {
        for f in ["clusterIP", "clusterIPs"] {
            spec.remove(f);
        }
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    drop_uid_labels(&mut obj);
    drop_token_volume_suffix(&mut obj);
    obj
}

/// Cuts the random suffix of a pod's `kube-api-access-<suffix>` volume (name and mounts).
fn drop_token_volume_suffix(v: &mut Value) {
    match v {
        Value::String(s) if s.starts_with("kube-api-access-") => *s = "kube-api-access-".into(),
        Value::Object(map) => map.values_mut().for_each(drop_token_volume_suffix),
        Value::Array(items) => items.iter_mut().for_each(drop_token_volume_suffix),
        _ => {}
    }
}

/// Removes the labels the Job controller derives from the Job's uid (in its labels, its
/// selector and its pod template), which differ between two otherwise equal Jobs.
fn drop_uid_labels(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("controller-uid");
            map.remove("batch.kubernetes.io/controller-uid");
            for child in map.values_mut() {
                drop_uid_labels(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(drop_uid_labels),
        _ => {}
    }
}

/// Creates the namespace and every object of [`COMMANDS`] in it with kubectl `v`;
/// asserts the body encoding kubectl used.
fn create_all(server: &Server, v: &str, ns: &str) {
    let out = server
        .kubectl_cmd(v)
        .args(["create", "namespace", ns, "--v=8"])
        .output()
        .expect("run kubectl");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create namespace failed: {log}");
    let sent_protobuf = log.contains("Content-Type: application/vnd.kubernetes.protobuf");
    assert_eq!(sent_protobuf, v != "1.27", "kubectl {v}: {log}");
    // The answer is JSON whatever the client offered to accept.
    assert!(log.contains("Content-Type: application/json"), "{log}");
    for (_, args) in COMMANDS {
        let mut all = vec!["-n", ns];
        all.extend_from_slice(args);
        server.ok(v, &all);
    }
}

#[test]
fn typed_creates_send_protobuf_and_store_the_same_objects() {
    let server = Server::start();
    create_all(&server, "1.27", "json-1-27");
    for v in PROTOBUF_KUBECTLS {
        let ns = format!("pb-{}", v.replace('.', "-"));
        let ns = ns.as_str();
        create_all(&server, v, ns);
        // What kubectl 1.27 stored through JSON bodies, the protobuf bodies store too.
        for (what, _) in COMMANDS {
            assert_eq!(
                normalized(get(&server, ns, what)),
                normalized(get(&server, "json-1-27", what)),
                "{what} created by kubectl {v}"
            );
        }
        let namespace = get_json(&server, &["get", "namespace", ns, "-o", "json"]);
        assert_eq!(namespace["metadata"]["name"], ns);
        assert!(recent(&namespace["metadata"]["creationTimestamp"]));
        assert_eq!(namespace["status"]["phase"], "Active");

        let cm = get(&server, ns, "configmap/settings");
        assert_eq!(cm["data"], serde_json::json!({"a": "b", "empty": ""}));
        assert!(recent(&cm["metadata"]["creationTimestamp"]));
        assert!(cm["metadata"].get("generateName").is_none(), "{cm}");

        let secret = get(&server, ns, "secret/creds");
        assert_eq!(secret["data"]["password"], "czNjcmV0");

        let deploy = get(&server, ns, "deployment/web");
        assert_eq!(deploy["spec"]["replicas"], 2);
        assert_eq!(deploy["metadata"]["labels"]["app"], "web");
        assert_eq!(deploy["spec"]["selector"]["matchLabels"]["app"], "web");
        let c = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "localhost/busybox:latest");
        assert_eq!(c["ports"][0]["containerPort"], 8080);
        assert_eq!(deploy["metadata"]["generation"], 1);
        assert!(recent(&deploy["metadata"]["creationTimestamp"]));

        // replicas is a pointer: an explicit 0 must not become the default 1.
        assert_eq!(get(&server, ns, "deployment/idle")["spec"]["replicas"], 0);

        let svc = get(&server, ns, "service/web-svc");
        assert_eq!(svc["spec"]["ports"][0]["port"], 80);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(svc["spec"]["selector"]["app"], "web-svc");
        assert!(svc["spec"]["clusterIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.43.")));

        let job = get(&server, ns, "job/once");
        let c = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"], serde_json::json!(["echo", "hi"]));
        assert_eq!(job["spec"]["template"]["spec"]["restartPolicy"], "Never");

        let pod = get(&server, ns, "pod/solo");
        assert_eq!(pod["metadata"]["labels"]["tier"], "x");
        let c = &pod["spec"]["containers"][0];
        assert_eq!(c["name"], "solo");
        assert_eq!(c["args"], serde_json::json!(["sleep", "3600"]));
        assert_eq!(
            c["env"][0],
            serde_json::json!({"name": "GREETING", "value": "hello"})
        );
        assert_eq!(c["ports"][0]["containerPort"], 80);

        let svc = get(&server, ns, "service/web-exposed");
        assert_eq!(svc["spec"]["ports"][0]["port"], 81);
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http-alt");
        assert_eq!(svc["spec"]["selector"]["app"], "web");

        assert_eq!(
            get(&server, ns, "serviceaccount/robot")["metadata"]["name"],
            "robot"
        );
        let role = get(&server, ns, "role/reader");
        assert_eq!(
            role["rules"][0]["verbs"],
            serde_json::json!(["get", "list"])
        );
        assert_eq!(role["rules"][0]["resources"], serde_json::json!(["pods"]));
        assert_eq!(role["rules"][1]["apiGroups"], serde_json::json!(["apps"]));
        let rb = get(&server, ns, "rolebinding/reader-robot");
        assert_eq!(rb["roleRef"]["name"], "reader");
        assert_eq!(rb["subjects"][0]["kind"], "ServiceAccount");

        let pdb = get(&server, ns, "poddisruptionbudget/web-pdb");
        assert_eq!(pdb["spec"]["minAvailable"], "50%");
        let quota = get(&server, ns, "resourcequota/small");
        assert_eq!(quota["spec"]["hard"]["cpu"], "1500m");
        assert_eq!(quota["spec"]["hard"]["pods"], "10");
        assert_eq!(
            get(&server, ns, "cronjob/nightly")["spec"]["schedule"],
            "0 3 * * *"
        );
        let ing = get(&server, ns, "ingress/site");
        let path = &ing["spec"]["rules"][0]["http"]["paths"][0];
        assert_eq!(ing["spec"]["rules"][0]["host"], "example.com");
        assert_eq!(path["pathType"], "Prefix");
        assert_eq!(path["backend"]["service"]["port"]["number"], 80);

        // Mistakes in protobuf-sent objects get the same 4xx answers as JSON ones.
        let err = server.fails(
            v,
            &[
                "-n",
                ns,
                "create",
                "configmap",
                "Bad_Name",
                "--from-literal=a=b",
            ],
        );
        assert!(err.contains("Invalid"), "{err}");
        let err = server.fails(v, &["-n", ns, "create", "serviceaccount", "robot"]);
        assert!(err.contains("\"robot\" already exists"), "{err}");
    }
}

#[test]
fn auth_can_i_and_whoami_answer_for_the_caller() {
    let server = Server::start();
    for v in ["1.27", "1.32", "1.33"] {
        // No authorization mode exists yet: every authenticated user may do everything,
        // and that is what the review says.
        assert_eq!(
            server.ok(v, &["auth", "can-i", "create", "pods"]).trim(),
            "yes"
        );
        assert_eq!(
            server
                .ok(
                    v,
                    &[
                        "auth",
                        "can-i",
                        "delete",
                        "deployments.apps",
                        "-n",
                        "kube-system"
                    ]
                )
                .trim(),
            "yes"
        );
        assert_eq!(
            server.ok(v, &["auth", "can-i", "get", "/healthz"]).trim(),
            "yes"
        );
        let list = server.ok(v, &["auth", "can-i", "--list", "-n", "default"]);
        assert!(
            list.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*.*", "[]", "[]", "[*]"]),
            "{list}"
        );
        if v == "1.27" {
            continue; // its whoami asks authentication.k8s.io/v1beta1, not served
        }
        let who: Value = serde_json::from_str(&server.ok(v, &["auth", "whoami", "-o", "json"]))
            .expect("whoami JSON");
        assert_eq!(who["kind"], "SelfSubjectReview");
        assert_eq!(who["status"]["userInfo"]["username"], "system:admin");
        assert_eq!(
            who["status"]["userInfo"]["groups"],
            serde_json::json!(["system:masters", "system:authenticated"])
        );
    }
    let resources = server.ok("1.33", &["api-resources", "--verbs=create", "-o", "name"]);
    assert!(
        resources.contains("selfsubjectaccessreviews.authorization.k8s.io"),
        "{resources}"
    );
}
