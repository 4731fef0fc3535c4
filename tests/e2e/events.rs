//! Events as `kubectl describe` and `kubectl get events` show them: recorded by the
//! scheduler, the controllers and a real node agent.

use crate::harness::{get_json, wait_for, Server};

#[test]
fn describe_shows_what_the_scheduler_controllers_and_kubelet_did() {
    let server = Server::start_node(22, &[]);
    server.wait_node_ready("node22");
    let deploy = server.file(
        "web.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: sh\n        image: localhost/busybox:1.35\n        imagePullPolicy: Never\n        command: [\"sleep\", \"3600\"]\n",
    );
    server.ok("1.33", &["apply", "-f", crate::harness::s(&deploy)]);
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    let pods = get_json(&server, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .expect("pod name")
        .to_string();

    // The pod's story, from three components, in describe's Events table.
    let described = wait_for(30, "the pod's events", || {
        let out = server.ok("1.33", &["describe", "pod", &pod]);
        (out.contains("Started") && out.contains("Scheduled")).then_some(out)
    });
    for want in [
        "Normal  Scheduled",
        &format!("default-scheduler  Successfully assigned default/{pod} to node22"),
        "Pulled",
        "Container image \"localhost/busybox:1.35\" already present on machine",
        "Created container: sh",
        "Started container sh",
        "kubelet",
    ] {
        assert!(
            described.contains(want),
            "missing {want:?} in:\n{described}"
        );
    }
    let rs = server.ok("1.33", &["describe", "replicaset", "-l", "app=web"]);
    assert!(
        rs.contains("SuccessfulCreate") && rs.contains(&format!("Created pod: {pod}")),
        "{rs}"
    );
    let d = server.ok("1.33", &["describe", "deployment", "web"]);
    assert!(
        d.contains("ScalingReplicaSet") && d.contains("Scaled up replica set web-"),
        "{d}"
    );

    // `get events` with kubectl's columns; deleting the pod adds Killing.
    let list = server.ok("1.27", &["get", "events"]);
    let header = list.lines().next().unwrap_or("");
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{list}");
    }
    assert!(list.contains(&format!("pod/{pod}")), "{list}");
    server.ok("1.33", &["delete", "pod", &pod, "--wait=false"]);
    wait_for(60, "a Killing event", || {
        let out = server.ok(
            "1.33",
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod},reason=Killing"),
            ],
        );
        out.contains("Stopping container sh").then_some(())
    });

    // A pod no node can take: a FailedScheduling warning.
    server.ok(
        "1.33",
        &[
            "run",
            "nowhere",
            "--image=localhost/busybox:1.35",
            "--overrides",
            r#"{"spec":{"nodeSelector":{"disk":"none"}}}"#,
        ],
    );
    let out = wait_for(30, "FailedScheduling", || {
        let out = server.ok("1.33", &["describe", "pod", "nowhere"]);
        out.contains("FailedScheduling").then_some(out)
    });
    assert!(out.contains("Warning  FailedScheduling"), "{out}");
    assert!(out.contains("0/1 nodes are available"), "{out}");
}
