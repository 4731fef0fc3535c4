//! DaemonSets and StatefulSets with simulated nodes, driven by the real kubectl:
//! placement by taints and new nodes, rollouts, `kubectl rollout status/history/undo`,
//! ordinal creation and removal, claims from volumeClaimTemplates.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{get_json, s, spawn_lines, wait_for, Server};
use crate::sim::{Sim, SimNode};

/// Live pods with label `app=<app>`: name → (node, image).
fn pods_of(server: &Server, app: &str) -> BTreeMap<String, (String, String)> {
    let list = get_json(
        server,
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
    );
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                (
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ),
            )
        })
        .collect()
}

/// How many pods of a pod list are Ready and not being deleted.
fn ready_count(list: &Value) -> usize {
    crate::harness::ready_pods(list).len()
}

/// The cells of the row of `name` in `kubectl get <kind> <name>`.
fn row(server: &Server, kind: &str, name: &str) -> Vec<String> {
    let out = server.ok("1.33", &["get", kind, name]);
    out.lines()
        .find(|l| l.starts_with(name))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

const DAEMONSET: &str = "apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: agent
spec:
  selector:
    matchLabels:
      app: agent
  updateStrategy:
    rollingUpdate:
      maxUnavailable: 1
  template:
    metadata:
      labels:
        app: agent
    spec:
      containers:
      - name: c
        image: busybox:v1
";

#[test]
fn daemonset_one_pod_per_eligible_node_rolls_out_and_undoes() {
    let server = Server::start();
    let mut tainted = SimNode::new("sim-tainted");
    tainted
        .taints
        .push(("dedicated".into(), "db".into(), "NoSchedule".into()));
    let _sim = Sim::start(
        &server,
        vec![SimNode::new("sim-a"), SimNode::new("sim-b"), tainted],
        Duration::from_millis(300),
    );
    wait_for(20, "3 nodes", || {
        let n = get_json(&server, &["get", "nodes", "-o", "json"]);
        (n["items"].as_array().map(Vec::len) == Some(3)).then_some(())
    });
    let f = server.file("ds.yaml", DAEMONSET);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    let out = server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert!(
        out.contains("daemon set \"agent\" successfully rolled out"),
        "{out}"
    );
    let pods = pods_of(&server, "agent");
    let mut nodes: Vec<&str> = pods.values().map(|(n, _)| n.as_str()).collect();
    nodes.sort();
    assert_eq!(nodes, vec!["sim-a", "sim-b"], "{pods:?}");
    // NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE-SELECTOR AGE
    assert_eq!(
        row(&server, "ds", "agent")[1..7],
        ["2", "2", "2", "2", "2", "<none>"]
    );
    let ds = get_json(&server, &["get", "ds", "agent", "-o", "json"]);
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(ds["status"]["numberMisscheduled"], 0);
    // Daemon pods are placed by the scheduler through a node affinity on the name.
    let pod = get_json(&server, &["get", "pods", "-l", "app=agent", "-o", "json"]);
    let p0 = &pod["items"][0];
    assert_eq!(
        p0["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"][0]["values"][0],
        p0["spec"]["nodeName"]
    );
    let tolerations = p0["spec"]["tolerations"].to_string();
    assert!(
        tolerations.contains("node.kubernetes.io/unreachable")
            && tolerations.contains("node.kubernetes.io/unschedulable"),
        "{tolerations}"
    );

    // A new node gets its pod.
    let _more = Sim::start(
        &server,
        vec![SimNode::new("sim-c")],
        Duration::from_millis(300),
    );
    wait_for(30, "a pod on sim-c", || {
        pods_of(&server, "agent")
            .values()
            .any(|(n, _)| n == "sim-c")
            .then_some(())
    });
    server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=60s"]);
    assert_eq!(pods_of(&server, "agent").len(), 3);

    // An image change rolls out to every node; history shows both revisions.
    server.ok("1.33", &["set", "image", "ds/agent", "c=busybox:v2"]);
    let out = server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=90s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let pods = pods_of(&server, "agent");
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods.values().all(|(_, i)| i == "busybox:v2"), "{pods:?}");
    let history = server.ok("1.33", &["rollout", "history", "ds/agent"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, vec!["1", "2"], "{history}");
    let detail = server.ok("1.33", &["rollout", "history", "ds/agent", "--revision=1"]);
    assert!(detail.contains("busybox:v1"), "{detail}");
    let revs = server.ok("1.33", &["get", "controllerrevisions"]);
    assert!(revs.contains("daemonset.apps/agent"), "{revs}");

    // Undo goes back to v1 as revision 3.
    let out = server.ok("1.33", &["rollout", "undo", "ds/agent"]);
    assert!(out.contains("rolled back"), "{out}");
    server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=90s"]);
    wait_for(30, "v1 everywhere", || {
        let pods = pods_of(&server, "agent");
        (pods.len() == 3 && pods.values().all(|(_, i)| i == "busybox:v1")).then_some(())
    });
    let history = server.ok("1.33", &["rollout", "history", "ds/agent"]);
    assert!(
        history.contains("2 ") && history.contains("3 ") && !history.contains("\n1 "),
        "{history}"
    );

    // `rollout restart` changes the template: a fourth revision rolls out.
    server.ok("1.33", &["rollout", "restart", "ds/agent"]);
    server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=90s"]);
    let revs = get_json(&server, &["get", "controllerrevisions", "-o", "json"]);
    let mut numbers: Vec<i64> = revs["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["revision"].as_i64())
        .collect();
    numbers.sort();
    assert_eq!(numbers, vec![2, 3, 4], "{revs}");

    // With maxSurge 1 and maxUnavailable 0 a new pod starts beside each old one:
    // every node keeps a ready pod throughout the rollout.
    server.ok(
        "1.33",
        &[
            "patch",
            "ds/agent",
            "--type=merge",
            "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"maxSurge":1,"maxUnavailable":0}}}}"#,
        ],
    );
    let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (min_ready, done) = (min_ready.clone(), done.clone());
        let mut cmd = server.kubectl_cmd("1.33");
        cmd.args([
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dagent",
        ]);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let out = cmd.output().expect("kubectl");
                if let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) {
                    min_ready.fetch_min(ready_count(&list), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    server.ok("1.33", &["set", "image", "ds/agent", "c=busybox:v3"]);
    server.ok("1.33", &["rollout", "status", "ds/agent", "--timeout=90s"]);
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let min = min_ready.load(Ordering::Relaxed);
    assert!(
        min >= 3,
        "only {min} daemon pods were ready during the surge rollout"
    );
    wait_for(30, "v3 everywhere", || {
        let pods = pods_of(&server, "agent");
        (pods.len() == 3 && pods.values().all(|(_, i)| i == "busybox:v3")).then_some(())
    });

    // A taint the pods do not tolerate with NoExecute takes them off that node.
    server.ok("1.33", &["taint", "node", "sim-c", "evict=now:NoExecute"]);
    wait_for(30, "no pod on sim-c", || {
        (!pods_of(&server, "agent")
            .values()
            .any(|(n, _)| n == "sim-c"))
        .then_some(())
    });
    assert_eq!(row(&server, "ds", "agent")[1], "2");
}

const STATEFULSET: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  clusterIP: None
  selector:
    app: web
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: web
spec:
  serviceName: web
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: c
        image: busybox:v1
        volumeMounts:
        - name: data
          mountPath: /data
  volumeClaimTemplates:
  - metadata:
      name: data
    spec:
      accessModes: [ReadWriteOnce]
      resources:
        requests:
          storage: 1Gi
";

/// Watch lines `<EVENT> <pod>` received so far.
fn events(rx: &Receiver<String>, seen: &mut Vec<(String, String)>) {
    for line in rx.try_iter() {
        let mut it = line.split_whitespace();
        if let (Some(e), Some(n)) = (it.next(), it.next()) {
            seen.push((e.to_string(), n.to_string()));
        }
    }
}

/// The pods in the order of their first `event`.
fn order(seen: &[(String, String)], event: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (e, n) in seen {
        if e == event && !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

#[test]
fn statefulset_orders_pods_claims_updates_and_scales_down() {
    let server = Server::start();
    // Pods become Ready 1.2 s after they are bound: ordered creation spaces them out.
    let _sim = Sim::start(
        &server,
        vec![SimNode::new("sim-a"), SimNode::new("sim-b")],
        Duration::from_millis(1200),
    );
    let mut watch = server.kubectl_cmd("1.33");
    watch.args([
        "get",
        "pods",
        "-l",
        "app=web",
        "-w",
        "--request-timeout=0",
        "--output-watch-events",
        "-o",
        "jsonpath={.type} {.object.metadata.name}{\"\\n\"}",
    ]);
    let (_guard, rx) = spawn_lines(watch);
    let mut seen = Vec::new();
    let f = server.file("sts.yaml", STATEFULSET);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    let out = server.ok("1.33", &["rollout", "status", "sts/web", "--timeout=90s"]);
    assert!(out.contains("3 new pods have been updated"), "{out}");
    assert_eq!(row(&server, "sts", "web")[1], "3/3");

    // Created one at a time, in ordinal order, each after its predecessor was Ready.
    let list = get_json(&server, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let mut pods: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
    pods.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string());
    let names: Vec<&str> = pods
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, vec!["web-0", "web-1", "web-2"]);
    let created: Vec<String> = pods
        .iter()
        .map(|p| {
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(
        created[0] < created[1] && created[1] < created[2],
        "{created:?}"
    );
    wait_for(10, "watch events", || {
        events(&rx, &mut seen);
        (order(&seen, "ADDED").len() == 3).then_some(())
    });
    assert_eq!(order(&seen, "ADDED"), vec!["web-0", "web-1", "web-2"]);
    for (i, p) in pods.iter().enumerate() {
        let name = format!("web-{i}");
        assert_eq!(p["spec"]["hostname"], name.as_str());
        assert_eq!(p["spec"]["subdomain"], "web");
        assert_eq!(
            p["metadata"]["labels"]["statefulset.kubernetes.io/pod-name"],
            name.as_str()
        );
        assert_eq!(
            p["metadata"]["labels"]["apps.kubernetes.io/pod-index"],
            i.to_string()
        );
        let claim = p["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "data"))
            .map(|v| v["persistentVolumeClaim"]["claimName"].clone());
        assert_eq!(claim, Some(Value::from(format!("data-{name}"))));
    }
    let claims = |server: &Server| -> Vec<String> {
        let list = get_json(server, &["get", "pvc", "-l", "app=web", "-o", "json"]);
        let mut v: Vec<String> = list["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|c| c["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        claims(&server),
        vec!["data-web-0", "data-web-1", "data-web-2"]
    );

    // The headless Service names each pod: endpoints carry the pods' hostnames.
    wait_for(20, "endpoints with hostnames", || {
        let slices = get_json(
            &server,
            &[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
                "-o",
                "json",
            ],
        );
        let mut hosts: Vec<String> = slices["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["hostname"].as_str().map(String::from))
            .collect();
        hosts.sort();
        (hosts == vec!["web-0", "web-1", "web-2"]).then_some(())
    });

    // An update rolls from the highest ordinal down.
    server.ok("1.33", &["set", "image", "sts/web", "c=busybox:v2"]);
    let out = server.ok("1.33", &["rollout", "status", "sts/web", "--timeout=120s"]);
    assert!(out.contains("3 new pods have been updated"), "{out}");
    wait_for(10, "update deletions", || {
        events(&rx, &mut seen);
        (order(&seen, "DELETED").len() == 3).then_some(())
    });
    assert_eq!(order(&seen, "DELETED"), vec!["web-2", "web-1", "web-0"]);
    let pods = pods_of(&server, "web");
    assert!(pods.values().all(|(_, i)| i == "busybox:v2"), "{pods:?}");
    let sts = get_json(&server, &["get", "sts", "web", "-o", "json"]);
    assert_eq!(
        sts["status"]["currentRevision"], sts["status"]["updateRevision"],
        "{sts}"
    );
    assert_eq!(sts["status"]["updatedReplicas"], 3);
    let history = server.ok("1.33", &["rollout", "history", "sts/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 "),
        "{history}"
    );

    // Scaling down to 1 removes web-2, then web-1; the claims stay.
    seen.clear();
    server.ok("1.33", &["scale", "sts/web", "--replicas=1"]);
    wait_for(60, "one pod left", || {
        (pods_of(&server, "web").keys().collect::<Vec<_>>() == vec!["web-0"]).then_some(())
    });
    wait_for(10, "scale-down deletions", || {
        events(&rx, &mut seen);
        (order(&seen, "DELETED").len() == 2).then_some(())
    });
    assert_eq!(order(&seen, "DELETED"), vec!["web-2", "web-1"]);
    assert_eq!(
        claims(&server),
        vec!["data-web-0", "data-web-1", "data-web-2"]
    );
    server.ok("1.33", &["rollout", "status", "sts/web", "--timeout=60s"]);

    // With `whenScaled: Delete`, the claim of a pod scaled away goes with it.
    server.ok(
        "1.33",
        &[
            "patch",
            "sts/web",
            "--type=merge",
            "-p",
            r#"{"spec":{"persistentVolumeClaimRetentionPolicy":{"whenScaled":"Delete"}}}"#,
        ],
    );
    server.ok("1.33", &["scale", "sts/web", "--replicas=2"]);
    server.ok("1.33", &["rollout", "status", "sts/web", "--timeout=60s"]);
    server.ok("1.33", &["scale", "sts/web", "--replicas=1"]);
    wait_for(60, "data-web-1 deleted with web-1", || {
        (claims(&server) == vec!["data-web-0", "data-web-2"]).then_some(())
    });

    // Undo takes the remaining pod back to v1.
    server.ok("1.33", &["rollout", "undo", "sts/web"]);
    server.ok("1.33", &["rollout", "status", "sts/web", "--timeout=60s"]);
    wait_for(30, "web-0 at v1", || {
        let pods = pods_of(&server, "web");
        (pods.get("web-0").map(|(_, i)| i.as_str()) == Some("busybox:v1")).then_some(())
    });
}
