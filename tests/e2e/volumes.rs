//! PersistentVolumes with the real containerd agent: the default `local-path` class, a
//! claim that waits for its first pod, data that outlives the pod, the volume and its
//! directory going with the claim (once no pod uses it), StatefulSet claims from
//! volumeClaimTemplates, hand-made hostPath volumes bound to matching claims, the
//! scheduler's volume reasons, and a pod that waits on the node for its claim.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::agent::apply;
use crate::harness::{get_json, wait_for, Server};

fn claim(server: &Server, name: &str) -> Value {
    get_json(server, &["get", "pvc", name, "-o", "json"])
}

fn wait_bound(server: &Server, name: &str) -> Value {
    wait_for(90, &format!("claim {name} to be Bound"), || {
        let c = claim(server, name);
        (c["status"]["phase"] == "Bound").then_some(c)
    })
}

fn wait_ready(server: &Server, pod: &str) {
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            "--timeout=90s",
        ],
    );
}

fn host_path(pv: &Value) -> PathBuf {
    PathBuf::from(pv["spec"]["hostPath"]["path"].as_str().expect("hostPath"))
}

/// A busybox pod running `script` with claim `claim` at /data, stopping at once on TERM.
fn pod_yaml(name: &str, claim: &str, read_only: bool, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sh", "-c", "{script}; trap 'exit 0' TERM; sleep 3600 & wait"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}, readOnly: {read_only}}}
"#
    )
}

/// A ReadWriteOnce claim `name` of `size`; `extra`: more lines of its spec.
fn claim_yaml(name: &str, size: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n  resources: {{requests: {{storage: {size}}}}}\n{extra}"
    )
}

fn logs(server: &Server, pod: &str) -> String {
    server.ok("1.33", &["logs", pod])
}

#[test]
fn local_path_claims_wait_for_a_pod_keep_data_and_go_with_the_claim() {
    let server = Server::start_node(25, &[]);
    server.wait_node_ready("node25");
    let classes = server.ok("1.33", &["get", "storageclass"]);
    assert!(
        classes
            .lines()
            .any(|l| l.starts_with("local-path (default)")
                && l.contains("rancher.io/local-path")
                && l.contains("Delete")
                && l.contains("WaitForFirstConsumer")),
        "{classes}"
    );
    apply(&server, "claim", &claim_yaml("data", "64Mi", ""));
    let c = claim(&server, "data");
    assert_eq!(
        c["spec"]["storageClassName"], "local-path",
        "default class: {c}"
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let c = claim(&server, "data");
    assert_eq!(
        c["status"]["phase"], "Pending",
        "waits for its first pod: {c}"
    );
    assert!(c["spec"].get("volumeName").is_none(), "{c}");
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=data",
        ],
    );
    assert!(events.contains("WaitForFirstConsumer"), "{events}");

    // Start-up time of a pod on a new local-path claim (provisioning and binding
    // included) against one with an emptyDir, measured in the same run.
    let mut plain = std::time::Duration::ZERO;
    for name in ["warm-up", "plain"] {
        let started = std::time::Instant::now();
        apply(
            &server,
            name,
            &pod_yaml(name, "unused", false, "true").replace(
                "persistentVolumeClaim: {claimName: unused, readOnly: false}",
                "emptyDir: {}",
            ),
        );
        wait_ready(&server, name);
        plain = started.elapsed();
    }
    let started = std::time::Instant::now();
    apply(
        &server,
        "writer",
        &pod_yaml("writer", "data", false, "echo persisted > /data/file"),
    );
    wait_ready(&server, "writer");
    eprintln!(
        "pod start: emptyDir {:.2}s, new local-path claim {:.2}s",
        plain.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    let c = wait_bound(&server, "data");
    let uid = c["metadata"]["uid"].as_str().expect("uid");
    let pv_name = format!("pvc-{uid}");
    assert_eq!(c["spec"]["volumeName"], pv_name.as_str(), "{c}");
    assert_eq!(
        c["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"],
        "yes"
    );
    assert_eq!(
        c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        "node25"
    );
    let pv = get_json(&server, &["get", "pv", &pv_name, "-o", "json"]);
    assert_eq!(pv["status"]["phase"], "Bound", "{pv}");
    assert_eq!(pv["spec"]["claimRef"]["uid"], uid);
    let dir = host_path(&pv);
    assert_eq!(
        dir,
        server
            .data_dir()
            .join("storage")
            .join(format!("{pv_name}_default_data")),
        "k3s's layout under the node's data dir"
    );
    let file = dir.join("file");
    wait_for(30, "the pod's file on the node", || {
        (std::fs::read_to_string(&file).ok()? == "persisted\n").then_some(())
    });
    let table = server.ok("1.27", &["get", "pv,pvc"]);
    let rows: Vec<&str> = table.lines().filter(|l| l.contains("Bound")).collect();
    assert_eq!(rows.len(), 2, "the volume and the claim are Bound: {table}");
    assert!(
        rows.iter()
            .any(|l| l.contains("default/data") && l.contains("RWO") && l.contains("Delete")),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|l| l.starts_with("persistentvolumeclaim/data")
                && l.contains(&pv_name)
                && l.contains("64Mi")),
        "{table}"
    );

    // The data outlives the pod: a new pod on the claim reads it, read-only.
    server.ok("1.33", &["delete", "pod", "writer", "--wait=true"]);
    apply(
        &server,
        "reader",
        &pod_yaml(
            "reader",
            "data",
            true,
            "cat /data/file; touch /data/other 2>/dev/null && echo writable || echo read-only",
        ),
    );
    wait_ready(&server, "reader");
    let out = wait_for(30, "the reader's output", || {
        let l = logs(&server, "reader");
        l.contains("read-only").then_some(l)
    });
    assert!(out.contains("persisted"), "{out}");
    assert!(!dir.join("other").exists());

    // A claim deleted while a pod uses it stays (pvc-protection) until the pod is gone;
    // then the volume and its directory go.
    server.ok("1.33", &["delete", "pvc", "data", "--wait=false"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let c = claim(&server, "data");
    assert!(c["metadata"]["deletionTimestamp"].is_string(), "{c}");
    assert_eq!(
        c["metadata"]["finalizers"][0],
        "kubernetes.io/pvc-protection"
    );
    assert!(
        dir.join("file").exists(),
        "the data stays while the pod runs"
    );
    server.ok("1.33", &["delete", "pod", "reader", "--wait=true"]);
    wait_for(60, "the volume to go", || {
        let out = server.kubectl("1.33", &["get", "pv", &pv_name]);
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
            .then_some(())
    });
    assert!(!dir.exists(), "{} is removed", dir.display());
}

/// Waits until the claim's pod is unschedulable and returns the scheduler's message.
fn unschedulable(server: &Server, pod: &str) -> String {
    wait_for(60, &format!("{pod} to be unschedulable"), || {
        let p = get_json(server, &["get", "pod", pod, "-o", "json"]);
        p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
            .and_then(|c| c["message"].as_str().map(String::from))
    })
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[test]
fn pre_made_volumes_and_statefulset_claims_bind() {
    let server = Server::start_node(26, &[]);
    server.wait_node_ready("node26");
    let manual = server.data_dir().join("manual");
    // Hand-made volumes of class "manual" (no StorageClass object: bound at once).
    let volumes: Vec<String> = [("tiny", "16Mi"), ("fits", "128Mi"), ("huge", "10Gi")]
        .iter()
        .map(|(name, size)| {
            format!(
                r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {name}, labels: {{kind: hand-made}}}}
spec:
  capacity: {{storage: {size}}}
  accessModes: [ReadWriteOnce]
  storageClassName: manual
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: {dir}/{name}, type: DirectoryOrCreate}}
"#,
                dir = manual.display()
            )
        })
        .collect();
    apply(&server, "volumes", &volumes.join("---\n"));
    wait_for(30, "the volumes to be Available", || {
        let l = get_json(&server, &["get", "pv", "-o", "json"]);
        let items = l["items"].as_array()?.clone();
        (items.len() == 3 && items.iter().all(|v| v["status"]["phase"] == "Available"))
            .then_some(())
    });
    // A pod whose claim does not exist is not scheduled.
    apply(
        &server,
        "orphan",
        &pod_yaml("orphan", "nope", false, "true"),
    );
    let msg = unschedulable(&server, "orphan");
    assert!(
        msg.starts_with("0/1 nodes are available: persistentvolumeclaim \"nope\" not found."),
        "{msg}"
    );
    // A claim of a class without provisioner that no volume fits stays unbound: its pod
    // is not scheduled. A claim bound to a volume of another node: no node fits.
    apply(
        &server,
        "big",
        &claim_yaml("big", "100Gi", "  storageClassName: manual\n"),
    );
    apply(
        &server,
        "waiting",
        &pod_yaml("waiting", "big", false, "true"),
    );
    let msg = unschedulable(&server, "waiting");
    assert!(
        msg.starts_with(
            "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
        ),
        "{msg}"
    );
    apply(
        &server,
        "far",
        &format!(
            "{}---\n{}",
            claim_yaml("far", "1Mi", "  storageClassName: far\n"),
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {name: far}
spec:
  capacity: {storage: 1Mi}
  accessModes: [ReadWriteOnce]
  storageClassName: far
  local: {path: /nonexistent}
  nodeAffinity: {required: {nodeSelectorTerms: [{matchExpressions: [
    {key: kubernetes.io/hostname, operator: In, values: [another-node]}]}]}}
"#
        ),
    );
    wait_bound(&server, "far");
    apply(
        &server,
        "stranded",
        &pod_yaml("stranded", "far", false, "true"),
    );
    let msg = unschedulable(&server, "stranded");
    assert!(
        msg.starts_with("0/1 nodes are available: 1 node(s) had volume node affinity conflict."),
        "{msg}"
    );
    // A pod placed on the node directly, on a claim no volume serves yet, waits in
    // ContainerCreating with the kubelet's message and a FailedMount Event; it starts once
    // a volume for the claim appears.
    apply(
        &server,
        "later",
        &claim_yaml("later", "8Mi", "  storageClassName: late\n"),
    );
    apply(
        &server,
        "patient",
        &pod_yaml("patient", "later", false, "true").replace(
            "spec:\n  terminationGracePeriodSeconds",
            "spec:\n  nodeName: node26\n  terminationGracePeriodSeconds",
        ),
    );
    let waiting = wait_for(60, "the pod to wait for its claim", || {
        let p = get_json(&server, &["get", "pod", "patient", "-o", "json"]);
        let w = p["status"]["containerStatuses"][0]["state"]["waiting"].clone();
        (w["reason"] == "ContainerCreating").then_some(w)
    });
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("PVC default/later has non-bound phase (\"Pending\")")),
        "{waiting}"
    );
    let events = server.ok(
        "1.33",
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=patient",
        ],
    );
    assert!(events.contains("FailedMount"), "{events}");
    apply(
        &server,
        "late",
        &format!(
            r#"
apiVersion: v1
kind: PersistentVolume
metadata: {{name: late}}
spec:
  capacity: {{storage: 8Mi}}
  accessModes: [ReadWriteOnce]
  storageClassName: late
  hostPath: {{path: {}/late, type: DirectoryOrCreate}}
"#,
            manual.display()
        ),
    );
    wait_ready(&server, "patient");
    let hand_made = "  storageClassName: manual\n  selector: {matchLabels: {kind: hand-made}}\n";
    apply(&server, "claim", &claim_yaml("claim", "100Mi", hand_made));
    let c = wait_bound(&server, "claim");
    assert_eq!(
        c["spec"]["volumeName"], "fits",
        "the smallest fitting volume: {c}"
    );
    assert_eq!(c["status"]["capacity"]["storage"], "128Mi");
    let pv = get_json(&server, &["get", "pv", "fits", "-o", "json"]);
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"],
        "yes"
    );
    assert_eq!(pv["spec"]["claimRef"]["name"], "claim");
    wait_for(30, "the volume to be Bound", || {
        let pv = get_json(&server, &["get", "pv", "fits", "-o", "json"]);
        (pv["status"]["phase"] == "Bound").then_some(())
    });
    apply(
        &server,
        "user",
        &pod_yaml("user", "claim", false, "echo hand-made > /data/f"),
    );
    wait_ready(&server, "user");
    wait_for(30, "the pod's file in the hand-made volume", || {
        (read(&manual.join("fits/f"))? == "hand-made\n").then_some(())
    });
    // Retain: the volume is Released when its claim goes, its data kept.
    server.ok("1.33", &["delete", "pod", "user", "--wait=true"]);
    server.ok("1.33", &["delete", "pvc", "claim"]);
    wait_for(30, "the volume to be Released", || {
        let pv = get_json(&server, &["get", "pv", "fits", "-o", "json"]);
        (pv["status"]["phase"] == "Released").then_some(())
    });
    assert!(manual.join("fits/f").exists());

    // A StatefulSet's claims from volumeClaimTemplates get local-path volumes.
    apply(
        &server,
        "web",
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: c
        image: localhost/busybox:1.35
        command: ["sh", "-c", "hostname > /data/id; trap 'exit 0' TERM; sleep 3600 & wait"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 32Mi}}
"#,
    );
    for i in 0..2 {
        let pod = format!("web-{i}");
        wait_for(120, &format!("{pod} to exist"), || {
            server
                .kubectl("1.33", &["get", "pod", &pod])
                .status
                .success()
                .then_some(())
        });
        wait_ready(&server, &pod);
        let c = wait_bound(&server, &format!("data-web-{i}"));
        assert_eq!(c["spec"]["storageClassName"], "local-path", "{c}");
        let pv_name = c["spec"]["volumeName"]
            .as_str()
            .expect("volume")
            .to_string();
        let pv = get_json(&server, &["get", "pv", &pv_name, "-o", "json"]);
        let id = host_path(&pv).join("id");
        wait_for(30, &format!("{pod}'s file on the node"), || {
            (read(&id)?.trim() == pod).then_some(())
        });
    }
}

#[test]
fn disable_local_storage_leaves_out_the_class_and_claims_keep_no_class() {
    let server = Server::start_with(&["--disable", "local-storage"]);
    let out = server.kubectl("1.33", &["get", "storageclass"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No resources found"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    apply(&server, "claim", &claim_yaml("data", "1Mi", ""));
    let c = claim(&server, "data");
    assert!(c["spec"].get("storageClassName").is_none(), "{c}");
    assert_eq!(c["status"]["phase"], "Pending");
    assert_eq!(
        c["metadata"]["finalizers"],
        serde_json::json!(["kubernetes.io/pvc-protection"])
    );
}
