//! Tests of the protobuf decoder. Bodies are encoded by `protoc --encode` from the same
//! vendored schemas (an encoder independent of the decoder), from protobuf text format.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("proto dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            proto_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(
                path.strip_prefix(proto_root())
                    .expect("under root")
                    .to_path_buf(),
            );
        }
    }
}

fn proto_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

/// `text` (protobuf text format) encoded as `message` by protoc.
fn encode(message: &str, text: &str) -> Vec<u8> {
    let mut files = Vec::new();
    proto_files(&proto_root().join("k8s.io"), &mut files);
    let protoc = std::env::var("PROTOC").unwrap_or_else(|_| "protoc".into());
    let mut child = Command::new(protoc)
        .current_dir(proto_root())
        .arg(format!("--encode={message}"))
        .arg("--proto_path=.")
        .args(&files)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("protoc runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write text");
    let out = child.wait_with_output().expect("protoc output");
    assert!(
        out.status.success(),
        "protoc --encode={message}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Bytes as a protobuf text-format string literal.
fn text_bytes(b: &[u8]) -> String {
    b.iter().map(|c| format!("\\{c:03o}")).collect()
}

/// A request body: the magic and a runtime.Unknown envelope around `raw`.
fn envelope(api_version: &str, kind: &str, raw: &[u8], extra: &str) -> Vec<u8> {
    let text = format!(
        "typeMeta {{ apiVersion: {api_version:?} kind: {kind:?} }} raw: \"{}\" {extra}",
        text_bytes(raw)
    );
    let mut body = MAGIC.to_vec();
    body.extend(encode("k8s.io.apimachinery.pkg.runtime.Unknown", &text));
    body
}

/// A body for `kind` in `api_version`, the object given in text format.
fn body(api_version: &str, kind: &str, text: &str) -> Vec<u8> {
    let message = format!("{}.{kind}", package_of(api_version));
    envelope(api_version, kind, &encode(&message, text), "")
}

#[test]
fn deployment_with_the_special_types() {
    let obj = decode(&body(
        "apps/v1",
        "Deployment",
        r#"
        metadata {
          name: "web" generateName: "" namespace: "default" generation: 0 uid: ""
          labels { key: "app" value: "web" }
          creationTimestamp { seconds: 1700000000 nanos: 0 }
        }
        spec {
          replicas: 2
          selector { matchLabels { key: "app" value: "web" } }
          template {
            metadata { labels { key: "app" value: "web" } creationTimestamp {} }
            spec {
              containers {
                name: "nginx" image: "nginx:1.27" workingDir: ""
                ports { containerPort: 80 hostPort: 0 protocol: "TCP" }
                ports { containerPort: 443 name: "https" }
                resources { limits { key: "cpu" value { string: "500m" } } }
                livenessProbe {
                  handler { httpGet { path: "/healthz" port { type: 0 intVal: 8080 } } }
                  periodSeconds: 0
                }
                args: "-g" args: "daemon off;"
              }
              volumes {
                name: "cfg"
                volumeSource { configMap { localObjectReference { name: "web-config" } } }
              }
              terminationGracePeriodSeconds: 0
            }
          }
          strategy {
            type: "RollingUpdate"
            rollingUpdate { maxSurge { type: 1 strVal: "25%" } maxUnavailable { intVal: 1 } }
          }
          minReadySeconds: 0
        }
        "#,
    ))
    .unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app": "web"},
                "creationTimestamp": "2023-11-14T22:13:20Z",
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}, "creationTimestamp": null},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx:1.27",
                            "ports": [
                                {"containerPort": 80, "protocol": "TCP"},
                                {"containerPort": 443, "name": "https"},
                            ],
                            "resources": {"limits": {"cpu": "500m"}},
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": 8080},
                            },
                            "args": ["-g", "daemon off;"],
                        }],
                        "volumes": [{"name": "cfg", "configMap": {"name": "web-config"}}],
                        "terminationGracePeriodSeconds": 0,
                    },
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1},
                },
            },
        })
    );
}

#[test]
fn pointer_zeros_are_kept() {
    // replicas is a pointer in Go: an explicit 0 is not "unset" (which defaults to 1).
    let obj = decode(&body(
        "apps/v1",
        "Deployment",
        r#"metadata { name: "zero" } spec { replicas: 0 paused: false }"#,
    ))
    .unwrap();
    assert_eq!(obj["spec"], json!({"replicas": 0}));
    // Every group version carries meta/v1's DeleteOptions.
    let options = encode(
        &format!("{META}.DeleteOptions"),
        r#"gracePeriodSeconds: 0 propagationPolicy: "Foreground" dryRun: "All""#,
    );
    let obj = decode(&envelope("v1", "DeleteOptions", &options, "")).unwrap();
    assert_eq!(
        obj,
        json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
               "propagationPolicy": "Foreground", "dryRun": ["All"]})
    );
}

#[test]
fn secret_bytes_are_base64_and_maps_keep_empty_values() {
    let obj = decode(&body(
        "v1",
        "Secret",
        r#"
        metadata { name: "s" }
        data { key: "password" value: "s3cr\000t" }
        data { key: "empty" }
        stringData { key: "plain" value: "text" }
        type: "Opaque"
        "#,
    ))
    .unwrap();
    assert_eq!(
        obj,
        json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"password": "czNjcgB0", "empty": ""},
            "stringData": {"plain": "text"},
            "type": "Opaque",
        })
    );
}

#[test]
fn times_raw_extensions_and_renamed_fields() {
    let raw = br#"{"spec":{"template":{"spec":{"containers":[{"name":"a"}]}}}}"#;
    let obj = decode(&body(
        "apps/v1",
        "ControllerRevision",
        &format!(
            r#"metadata {{ name: "r1" }} data {{ raw: "{}" }} revision: 3"#,
            text_bytes(raw)
        ),
    ))
    .unwrap();
    assert_eq!(
        obj["data"],
        json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}]}}}})
    );
    assert_eq!(obj["revision"], 3);

    let obj = decode(&body(
        "v1",
        "Event",
        r#"
        metadata { name: "e" }
        involvedObject { kind: "Pod" name: "p" }
        firstTimestamp { seconds: 1700000000 }
        eventTime { seconds: 1700000000 nanos: 123456789 }
        count: 0
        "#,
    ))
    .unwrap();
    assert_eq!(obj["firstTimestamp"], "2023-11-14T22:13:20Z");
    assert_eq!(obj["eventTime"], "2023-11-14T22:13:20.123456Z");
    assert!(obj.get("count").is_none() && obj.get("lastTimestamp").is_none());

    // events.k8s.io/v1, as client-go's event broadcaster sends it in protobuf.
    let obj = decode(&body(
        "events.k8s.io/v1",
        "Event",
        r#"
        metadata { name: "e" namespace: "default" }
        regarding { kind: "Pod" name: "p" }
        eventTime { seconds: 1700000000 nanos: 5000 }
        series { count: 2 lastObservedTime { seconds: 1700000001 } }
        reportingController: "kubelet" reportingInstance: "n1" action: "Pulling"
        reason: "Pulling" note: "pulling image" type: "Normal"
        "#,
    ))
    .unwrap();
    assert_eq!(obj["apiVersion"], "events.k8s.io/v1");
    assert_eq!(obj["regarding"]["name"], "p");
    assert_eq!(obj["eventTime"], "2023-11-14T22:13:20.000005Z");
    assert_eq!(obj["series"]["count"], 2);
    assert_eq!(obj["note"], "pulling image");

    let obj = decode(&body(
        "networking.k8s.io/v1",
        "IngressClass",
        r#"metadata { name: "c" } spec { controller: "x/y" parameters { aPIGroup: "k8s.example.com" kind: "P" name: "p" } }"#,
    ))
    .unwrap();
    assert_eq!(
        obj["spec"]["parameters"],
        json!({"apiGroup": "k8s.example.com", "kind": "P", "name": "p"})
    );

    let fields = br#"{"f:data":{".":{},"f:a":{}}}"#;
    let obj = decode(&body(
        "v1",
        "ConfigMap",
        &format!(
            r#"metadata {{ name: "c" managedFields {{ manager: "kubectl" operation: "Apply" fieldsType: "FieldsV1" fieldsV1 {{ Raw: "{}" }} time {{ seconds: 1 }} }} }} data {{ key: "a" value: "1" }}"#,
            text_bytes(fields)
        ),
    ))
    .unwrap();
    assert_eq!(
        obj["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {".": {}, "f:a": {}}})
    );
    assert_eq!(
        obj["metadata"]["managedFields"][0]["time"],
        "1970-01-01T00:00:01Z"
    );
}

#[test]
fn nested_lists_and_rbac_group_names() {
    let obj = decode(&body(
        "rbac.authorization.k8s.io/v1",
        "Role",
        r#"
        metadata { name: "reader" }
        rules { verbs: "get" verbs: "list" apiGroups: "" resources: "pods" }
        rules { verbs: "*" apiGroups: "apps" resources: "deployments" resources: "replicasets" }
        "#,
    ))
    .unwrap();
    assert_eq!(
        obj["rules"],
        json!([
            {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["*"], "apiGroups": ["apps"], "resources": ["deployments", "replicasets"]},
        ])
    );
}

#[test]
fn bad_bodies_are_client_errors() {
    let ok = body("v1", "ConfigMap", r#"metadata { name: "c" }"#);
    assert_eq!(decode(b"{}").unwrap_err().code, 400);
    assert_eq!(decode(&ok[..ok.len() - 3]).unwrap_err().code, 400);
    let e = decode(&body("v1", "Pod", r#"metadata { name: "p" }"#).replace_kind("v1", "Nope"))
        .unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("Nope"), "{}", e.message);
    let gz = envelope("v1", "ConfigMap", b"", r#"contentEncoding: "gzip""#);
    assert_eq!(decode(&gz).unwrap_err().code, 415);
    let yaml = envelope(
        "v1",
        "ConfigMap",
        b"a: 1",
        r#"contentType: "application/yaml""#,
    );
    assert_eq!(decode(&yaml).unwrap_err().code, 415);
    let json_inside = envelope(
        "v1",
        "ConfigMap",
        br#"{"metadata":{"name":"j"}}"#,
        r#"contentType: "application/json""#,
    );
    assert_eq!(decode(&json_inside).unwrap()["metadata"]["name"], "j");
    // Random corruption of a real body never panics and is always the client's fault.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let real = body(
        "apps/v1",
        "Deployment",
        r#"metadata { name: "w" labels { key: "a" value: "b" } } spec { replicas: 1 template { spec { containers { name: "c" image: "i" } } } }"#,
    );
    for _ in 0..3000 {
        let mut b = real.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(MAGIC.len()..b.len());
            b[i] = rng.gen();
        }
        b.truncate(rng.gen_range(MAGIC.len()..=b.len()));
        if let Err(e) = decode(&b) {
            assert!(e.code == 400 || e.code == 415, "{e:?}");
        }
    }
}

/// Replaces the kind in an envelope (re-encoding it), for an unregistered kind.
trait ReplaceKind {
    fn replace_kind(&self, api_version: &str, kind: &str) -> Vec<u8>;
}

impl ReplaceKind for Vec<u8> {
    fn replace_kind(&self, api_version: &str, kind: &str) -> Vec<u8> {
        let raw = Fields(&self[MAGIC.len()..])
            .find_map(|f| match f {
                Ok((2, Wire::Len(b))) => Some(b.to_vec()),
                _ => None,
            })
            .expect("raw");
        envelope(api_version, kind, &raw, "")
    }
}

#[test]
fn go_durations() {
    for (nanos, want) in [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (250_000_000, "250ms"),
        (1_000_000_000, "1s"),
        (90_500_000_000, "1m30.5s"),
        (3_600_000_000_000, "1h0m0s"),
        (-5_000_000_000, "-5s"),
    ] {
        assert_eq!(go_duration(nanos), want);
    }
}

#[test]
fn json_facts_name_real_fields() {
    let schema = SCHEMA.as_ref().expect("schemas load");
    for line in JSON_FACTS.lines() {
        let path = line.split_whitespace().nth(1).expect("a field path");
        let (message, field) = path.rsplit_once('.').expect("message.field");
        let def = schema
            .messages
            .get(message)
            .unwrap_or_else(|| panic!("{line}: no message {message}"));
        let known = def.fields.values().any(|f| {
            f.omit_zero && line.starts_with("omitzero")
                || f.inline && line.starts_with("inline")
                || line.starts_with("rename") && line.ends_with(&format!(" {}", f.json))
        });
        assert!(known, "{line}: no field {field} with that rule");
    }
}
