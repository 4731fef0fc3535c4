//! Controllers and scheduler with simulated nodes, driven by the real kubectl: rollouts,
//! history and undo, scaling, endpoints, default ServiceAccounts, scheduling reasons.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{describe_showing, get_json, ready_pods, s, wait_for, Server};
use crate::sim::{Sim, SimNode};

fn images(server: &Server) -> Vec<String> {
    let list = get_json(
        server,
        &[
            "get",
            "--raw",
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        ],
    );
    let mut v: Vec<String> = ready_pods(&list)
        .iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn deployment_rolls_out_keeps_availability_and_undoes() {
    let server = Server::start();
    let _sim = Sim::start(
        &server,
        vec![SimNode::new("sim-a"), SimNode::new("sim-b")],
        Duration::from_millis(400),
    );
    server.ok(
        "1.27",
        &[
            "create",
            "deployment",
            "web",
            "--image=busybox:v1",
            "--replicas=5",
            "--port=8080",
        ],
    );
    server.ok(
        "1.33",
        &[
            "patch",
            "deployment",
            "web",
            "-p",
            r#"{"spec":{"strategy":{"rollingUpdate":{"maxUnavailable":1,"maxSurge":1}}}}"#,
        ],
    );
    let out = server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    );
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(images(&server), vec!["busybox:v1"; 5]);

    // Every pod got a node from the scheduler, spread over both.
    let pods = get_json(&server, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let nodes: std::collections::HashSet<&str> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or(""))
        .collect();
    assert!(
        nodes.contains("sim-a") && nodes.contains("sim-b"),
        "{nodes:?}"
    );

    // Service endpoints follow the ready pods, with the named target port resolved.
    let svc = server.file(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n",
    );
    server.ok("1.33", &["apply", "-f", s(&svc)]);
    let ep = wait_for(20, "5 endpoint addresses", || {
        let ep = get_json(
            &server,
            &["get", "--raw", "/api/v1/namespaces/default/endpoints/web"],
        );
        (ep["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(5)).then_some(ep)
    });
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);
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
    assert_eq!(
        slices["items"][0]["endpoints"].as_array().map(Vec::len),
        Some(5)
    );

    // Roll to v2, sampling ready pods all along: never fewer than 4.
    let min_ready = Arc::new(AtomicI64::new(i64::MAX));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (min_ready, done) = (min_ready.clone(), done.clone());
        let kubeconfig = server.kubeconfig();
        let kubectl = crate::harness::kubectl_path("1.33");
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let out = std::process::Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "get",
                        "--raw",
                        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
                    ])
                    .output()
                    .expect("kubectl");
                if let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) {
                    min_ready.fetch_min(ready_pods(&list).len() as i64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    server.ok(
        "1.33",
        &[
            "annotate",
            "deployment",
            "web",
            "kubernetes.io/change-cause=to v2",
        ],
    );
    server.ok(
        "1.33",
        &["set", "image", "deployment/web", "busybox=busybox:v2"],
    );
    let out = server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert!(out.contains("successfully rolled out"), "{out}");
    let min = min_ready.load(Ordering::Relaxed);
    assert!(min >= 4, "only {min} pods were ready during the rollout");
    assert_eq!(images(&server), vec!["busybox:v2"; 5]);

    // History and undo.
    let history = server.ok("1.33", &["rollout", "history", "deployment/web"]);
    assert!(
        history.contains("1 ") && history.contains("2 ") && history.contains("to v2"),
        "{history}"
    );
    let rs = get_json(&server, &["get", "rs", "-l", "app=web", "-o", "json"]);
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(2), "{rs}");
    server.ok("1.33", &["rollout", "undo", "deployment/web"]);
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    assert_eq!(images(&server), vec!["busybox:v1"; 5]);
    let d = get_json(&server, &["get", "deployment", "web", "-o", "json"]);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );

    // Scale to zero and back.
    server.ok("1.33", &["scale", "deployment/web", "--replicas=0"]);
    wait_for(30, "no pods", || images(&server).is_empty().then_some(()));
    server.ok("1.33", &["scale", "deployment/web", "--replicas=3"]);
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=60s"],
    );
    assert_eq!(images(&server).len(), 3);
    let ep = wait_for(20, "3 endpoint addresses", || {
        let ep = get_json(
            &server,
            &["get", "--raw", "/api/v1/namespaces/default/endpoints/web"],
        );
        (ep["subsets"][0]["addresses"].as_array().map(Vec::len) == Some(3)).then_some(ep)
    });
    assert!(ep["subsets"][0].get("notReadyAddresses").is_none());

    // Deleting the Service removes its Endpoints.
    server.ok("1.33", &["delete", "service", "web"]);
    wait_for(20, "endpoints gone", || {
        let out = server.kubectl("1.33", &["get", "endpoints", "web"]);
        (!out.status.success()).then_some(())
    });
}

#[test]
fn scheduler_reasons_taints_and_default_service_accounts() {
    let server = Server::start();
    let mut tainted = SimNode::new("sim-tainted");
    tainted
        .taints
        .push(("dedicated".into(), "db".into(), "NoSchedule".into()));
    tainted.labels.push(("disk".into(), "ssd".into()));
    let _sim = Sim::start(
        &server,
        vec![SimNode::new("sim-plain"), tainted],
        Duration::from_millis(100),
    );
    server.ok("1.27", &["create", "namespace", "team"]);
    wait_for(20, "default ServiceAccount", || {
        server
            .kubectl("1.33", &["-n", "team", "get", "serviceaccount", "default"])
            .status
            .success()
            .then_some(())
    });
    wait_for(20, "nodes", || {
        let n = get_json(&server, &["get", "nodes", "-o", "json"]);
        (n["items"].as_array().map(Vec::len) == Some(2)).then_some(())
    });

    let pod = |name: &str, extra: &str| {
        server.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: c\n    image: busybox\n{extra}"),
        )
    };
    // Wants the ssd node but does not tolerate its taint; and too much cpu.
    let f = pod("picky", "  nodeSelector:\n    disk: ssd\n");
    server.ok("1.33", &["create", "-f", s(&f)]);
    let f = pod(
        "huge",
        "    resources:\n      requests:\n        cpu: \"64\"\n",
    );
    server.ok("1.33", &["create", "-f", s(&f)]);
    let f = pod(
        "tolerant",
        "  nodeSelector:\n    disk: ssd\n  tolerations:\n  - key: dedicated\n    operator: Equal\n    value: db\n    effect: NoSchedule\n",
    );
    server.ok("1.33", &["create", "-f", s(&f)]);

    let message = |name: &str| {
        let p = get_json(&server, &["get", "pod", name, "-o", "json"]);
        p["status"]["conditions"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                    .cloned()
            })
            .and_then(|c| c["message"].as_str().map(String::from))
    };
    let m = wait_for(20, "picky unschedulable", || message("picky"));
    assert!(
        m.starts_with("0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: db}."),
        "{m}"
    );
    let m = wait_for(20, "huge unschedulable", || message("huge"));
    assert!(
        m.starts_with("0/2 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {dedicated: db}."),
        "{m}"
    );
    let node = wait_for(20, "tolerant bound", || {
        let p = get_json(&server, &["get", "pod", "tolerant", "-o", "json"]);
        p["spec"]["nodeName"].as_str().map(String::from)
    });
    assert_eq!(node, "sim-tainted");
    let describe = server.ok("1.33", &["describe", "pod", "picky"]);
    assert!(
        describe.contains("PodScheduled") && describe.contains("False"),
        "{describe}"
    );

    // Removing the taint lets the picky pod in.
    server.ok(
        "1.33",
        &["taint", "node", "sim-tainted", "dedicated=db:NoSchedule-"],
    );
    let node = wait_for(30, "picky bound", || {
        let p = get_json(&server, &["get", "pod", "picky", "-o", "json"]);
        p["spec"]["nodeName"].as_str().map(String::from)
    });
    assert_eq!(node, "sim-tainted");
}

#[test]
fn garbage_collection_in_all_three_propagation_modes() {
    // No nodes needed: ReplicaSets create their pods whether or not they can run.
    let server = Server::start();
    let count = |kind: &str, app: &str| {
        let list = get_json(
            &server,
            &["get", kind, "-l", &format!("app={app}"), "-o", "json"],
        );
        list["items"].as_array().map(Vec::len).unwrap_or(0)
    };
    for app in ["gc-bg", "gc-fg", "gc-or"] {
        server.ok(
            "1.27",
            &[
                "create",
                "deployment",
                app,
                "--image=busybox",
                "--replicas=2",
            ],
        );
    }
    for app in ["gc-bg", "gc-fg", "gc-or"] {
        wait_for(30, "pods of every deployment", || {
            (count("pods", app) == 2 && count("rs", app) == 1).then_some(())
        });
    }

    // Background (kubectl's default): the owner goes at once, dependents follow.
    server.ok("1.33", &["delete", "deployment", "gc-bg"]);
    wait_for(30, "background collection", || {
        (count("rs", "gc-bg") == 0 && count("pods", "gc-bg") == 0).then_some(())
    });

    // Foreground: the owner is gone only after its dependents are.
    server.ok(
        "1.33",
        &[
            "delete",
            "deployment",
            "gc-fg",
            "--cascade=foreground",
            "--timeout=60s",
        ],
    );
    assert_eq!(count("rs", "gc-fg"), 0);
    assert_eq!(count("pods", "gc-fg"), 0);

    // Orphan: dependents stay, without the reference to their deleted owner.
    server.ok(
        "1.33",
        &["delete", "deployment", "gc-or", "--cascade=orphan"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let rs = get_json(&server, &["get", "rs", "-l", "app=gc-or", "-o", "json"]);
    assert_eq!(rs["items"].as_array().map(Vec::len), Some(1), "{rs}");
    assert!(
        rs["items"][0]["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "{rs}"
    );
    assert_eq!(count("pods", "gc-or"), 2);
    let err = server.fails("1.33", &["get", "deployment", "gc-or"]);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}

#[test]
fn a_silent_node_goes_unreachable_and_its_pods_move() {
    let server = Server::start_with(&[
        "--node-monitor-grace-period",
        "8",
        "--default-unreachable-toleration-seconds",
        "2",
    ]);
    let _stays = Sim::start(
        &server,
        vec![SimNode::new("sim-stays")],
        Duration::from_millis(100),
    );
    let leaves = Sim::start(
        &server,
        vec![SimNode::new("sim-leaves")],
        Duration::from_millis(100),
    );
    server.ok(
        "1.27",
        &[
            "create",
            "deployment",
            "app",
            "--image=busybox",
            "--replicas=4",
        ],
    );
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    );
    let on = |node: &str| {
        let list = get_json(
            &server,
            &[
                "get",
                "pods",
                "-l",
                "app=app",
                "--field-selector",
                &format!("spec.nodeName={node}"),
                "-o",
                "json",
            ],
        );
        // Evicted pods on an unreachable node stay Terminating until their node comes
        // back (as on Kubernetes): count the ones not being deleted.
        list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        on("sim-leaves") > 0,
        "the scheduler spreads pods over both nodes"
    );

    drop(leaves);
    let node = wait_for(40, "the silent node to be tainted unreachable", || {
        let n = get_json(&server, &["get", "node", "sim-leaves", "-o", "json"]);
        n["spec"]["taints"]
            .as_array()
            .is_some_and(|t| {
                t.iter()
                    .any(|t| t["key"] == "node.kubernetes.io/unreachable")
            })
            .then_some(n)
    });
    let ready = node["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned())
        .expect("Ready condition");
    assert_eq!(ready["status"], "Unknown", "{ready}");
    assert_eq!(ready["reason"], "NodeStatusUnknown");
    wait_for(40, "pods evicted and replaced on the live node", || {
        (on("sim-leaves") == 0 && on("sim-stays") == 4).then_some(())
    });
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/app", "--timeout=60s"],
    );

    // What the node lifecycle and taint eviction controllers did, as Events.
    describe_showing(
        &server,
        &["node", "sim-leaves"],
        "NodeNotReady",
        &[
            "Normal  RegisteredNode",
            "node-controller  Node sim-leaves event: Registered Node sim-leaves in Controller",
            "Normal  NodeNotReady",
            "node-controller  Node sim-leaves status is now: NodeNotReady",
        ],
    );
    let evictions = get_json(
        &server,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=TaintManagerEviction",
            "-o",
            "json",
        ],
    );
    let evictions = evictions["items"].as_array().cloned().unwrap_or_default();
    assert!(!evictions.is_empty(), "no TaintManagerEviction events");
    for e in &evictions {
        let pod = e["involvedObject"]["name"].as_str().unwrap_or_default();
        assert!(pod.starts_with("app-"), "{e}");
        assert_eq!(e["involvedObject"]["kind"], "Pod", "{e}");
        assert_eq!(
            e["message"],
            format!("Marking for deletion Pod default/{pod}"),
            "{e}"
        );
        assert_eq!(e["source"]["component"], "taint-eviction-controller", "{e}");
        assert_eq!(e["type"], "Normal", "{e}");
    }
}
