//! The node agent with real containerd, runc and CNI, driven by the real kubectl: pods
//! run, reach Running/Ready with their IP, get env and volumes, crash-loop with back-off,
//! finish by restart policy, show image and start errors, flip readiness with probes, run
//! preStop on a graceful delete, and survive an agent restart.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{get_json, wait_for, Server};

/// Pod `name` as JSON.
pub fn pod_json(server: &Server, name: &str) -> Value {
    get_json(server, &["get", "pod", name, "-o", "json"])
}

/// The status of the pod's first container.
pub fn container_status(pod: &Value) -> Value {
    pod["status"]["containerStatuses"][0].clone()
}

/// The status of the pod's condition `kind`.
pub fn condition(pod: &Value, kind: &str) -> Option<String> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(String::from))
}

/// Applies `yaml` (saved as `<name>.yaml`) with kubectl 1.33.
pub fn apply(server: &Server, name: &str, yaml: &str) {
    let f = server.file(&format!("{name}.yaml"), yaml);
    server.ok(
        "1.33",
        &["apply", "--validate=false", "-f", crate::harness::s(&f)],
    );
}

/// One HTTP GET to `ip:port` from the host; the body.
pub fn http_get(ip: &str, port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("address"),
        Duration::from_secs(3),
    )
    .expect("connect to the pod");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn pods_run_with_env_volumes_and_an_ip_and_survive_an_agent_restart() {
    let mut server = Server::start_node(1, &[]);
    server.wait_node_ready("node1");
    let node = get_json(&server, &["get", "node", "node1", "-o", "json"]);
    assert_eq!(node["spec"]["podCIDR"], "10.42.101.0/24", "{node}");
    assert!(
        node["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("containerd://")),
        "{node}"
    );
    apply(
        &server,
        "web",
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: site}
data:
  index.html: "hello from a configmap\n"
  greeting: hi
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {password: s3cret}
---
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: httpd
    image: localhost/busybox:1.35
    command: ["sh", "-c"]
    args:
    - |
      echo "$(GREETING) $PASSWORD $MY_NODE $MY_POD" > /scratch/env.txt
      cp /scratch/env.txt /www/
      exec httpd -f -p 8080 -h /www
    env:
    - {name: GREETING, valueFrom: {configMapKeyRef: {name: site, key: greeting}}}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: creds, key: password}}}
    - {name: MY_NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: MY_POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    ports: [{containerPort: 8080}]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
    volumeMounts:
    - {name: site, mountPath: /site}
    - {name: www, mountPath: /www}
    - {name: scratch, mountPath: /scratch}
  initContainers:
  - name: setup
    image: localhost/busybox:1.35
    command: ["sh", "-c", "cp /site/index.html /www/index.html"]
    volumeMounts:
    - {name: site, mountPath: /site}
    - {name: www, mountPath: /www}
  volumes:
  - {name: site, configMap: {name: site}}
  - {name: www, emptyDir: {}}
  - {name: scratch, emptyDir: {medium: Memory}}
"#,
    );
    server.ok(
        "1.33",
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=90s"],
    );
    let pod = pod_json(&server, "web");
    assert_eq!(pod["status"]["phase"], "Running");
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    let ip = pod["status"]["podIP"].as_str().expect("pod IP").to_string();
    assert!(
        ip.starts_with("10.42.101."),
        "pod IP {ip} is in the node's range"
    );
    let cs = container_status(&pod);
    assert_eq!(cs["restartCount"], 0);
    assert_eq!(cs["ready"], true);
    assert!(cs["containerID"]
        .as_str()
        .is_some_and(|c| c.starts_with("containerd://")));
    let init = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");

    let index = http_get(&ip, 8080, "/index.html");
    assert!(
        index.starts_with("HTTP/1.") && index.contains("hello from a configmap"),
        "{index}"
    );
    let env = http_get(&ip, 8080, "/env.txt");
    assert!(
        env.contains("hi s3cret node1 web"),
        "env from configMap, secret and fieldRef: {env}"
    );

    let table = server.ok("1.27", &["get", "pods", "-o", "wide"]);
    assert!(
        table.lines().any(|l| l.starts_with("web ")
            && l.contains("1/1")
            && l.contains("Running")
            && l.contains(&ip)),
        "{table}"
    );

    // Restarting the server (and its agent) adopts the running container.
    let id = cs["containerID"].clone();
    server.restart();
    std::thread::sleep(Duration::from_secs(3));
    server.ok(
        "1.33",
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=60s"],
    );
    let after = container_status(&pod_json(&server, "web"));
    assert_eq!(after["containerID"], id, "the same container runs on");
    assert_eq!(after["restartCount"], 0);
    assert!(http_get(&ip, 8080, "/index.html").contains("hello from a configmap"));

    // A pod deleted while no agent runs is cleaned up when the agent comes back: its
    // containers stop and its cgroup goes.
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    let cgroup = format!("/sys/fs/cgroup/memory/pikube-test-1/pod{uid}");
    assert!(
        std::path::Path::new(&cgroup).exists(),
        "the pod runs in {cgroup}"
    );
    server.restart_without_agent();
    server.ok(
        "1.33",
        &["delete", "pod", "web", "--grace-period=0", "--force"],
    );
    server.restart();
    wait_for(30, "the deleted pod's containers to go", || {
        let gone = std::net::TcpStream::connect_timeout(
            &format!("{ip}:8080").parse().expect("address"),
            Duration::from_millis(500),
        )
        .is_err();
        (gone && !std::path::Path::new(&cgroup).exists()).then_some(())
    });

    // A Deployment's pods run too.
    server.ok(
        "1.27",
        &[
            "create",
            "deployment",
            "app",
            "--image=localhost/busybox:1.35",
            "--replicas=3",
            "--",
            "sleep",
            "3600",
        ],
    );
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/app", "--timeout=90s"],
    );
}

#[test]
fn crash_loops_back_off_and_finished_pods_follow_their_restart_policy() {
    let server = Server::start_node(2, &[]);
    server.wait_node_ready("node2");
    apply(
        &server,
        "pods",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers: [{name: c, image: localhost/busybox:1.35, command: ["sh", "-c", "echo bye; exit 3"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  restartPolicy: Never
  containers: [{name: c, image: localhost/busybox:1.35, command: ["true"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: failed}
spec:
  restartPolicy: Never
  containers: [{name: c, image: localhost/busybox:1.35, command: ["sh", "-c", "exit 7"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: retry}
spec:
  restartPolicy: OnFailure
  containers: [{name: c, image: localhost/busybox:1.35, command: ["sh", "-c", "exit 1"]}]
"#,
    );
    let done = wait_for(60, "pod done to succeed", || {
        let p = pod_json(&server, "done");
        (p["status"]["phase"] == "Succeeded").then_some(p)
    });
    assert_eq!(
        container_status(&done)["state"]["terminated"]["reason"],
        "Completed"
    );
    let failed = wait_for(60, "pod failed to fail", || {
        let p = pod_json(&server, "failed");
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    let t = &container_status(&failed)["state"]["terminated"];
    assert_eq!(
        (t["exitCode"].as_i64(), t["reason"].as_str()),
        (Some(7), Some("Error")),
        "{t}"
    );

    // Always: restarted at once, then after 10 s, 20 s, … with CrashLoopBackOff between.
    let looping = wait_for(
        60,
        "crash to be in CrashLoopBackOff after two restarts",
        || {
            let p = pod_json(&server, "crash");
            let cs = container_status(&p);
            (cs["restartCount"].as_i64() >= Some(2)
                && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
                .then_some(cs)
        },
    );
    assert_eq!(
        looping["lastState"]["terminated"]["exitCode"], 3,
        "{looping}"
    );
    assert!(
        looping["state"]["waiting"]["message"].as_str().is_some_and(
            |m| m.starts_with("back-off 20s restarting failed container=c pod=crash_default(")
        ),
        "{looping}"
    );
    let count = looping["restartCount"].as_i64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs(5));
    let later = container_status(&pod_json(&server, "crash"));
    assert_eq!(
        later["restartCount"].as_i64(),
        Some(count),
        "no restart during the back-off"
    );
    let table = server.ok("1.33", &["get", "pod", "crash"]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");

    let retry = wait_for(60, "OnFailure pod to restart", || {
        let p = pod_json(&server, "retry");
        (container_status(&p)["restartCount"].as_i64() >= Some(1)).then_some(p)
    });
    assert_eq!(retry["status"]["phase"], "Running");
}

#[test]
fn image_and_start_errors_show_their_reasons_and_other_pods_keep_running() {
    let server = Server::start_node(3, &[]);
    server.wait_node_ready("node3");
    apply(
        &server,
        "bad",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  containers: [{name: c, image: "localhost/does-not-exist:1"}]
---
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  containers: [{name: c, image: "localhost/does-not-exist:1", imagePullPolicy: Never}]
---
apiVersion: v1
kind: Pod
metadata: {name: nocmd}
spec:
  containers: [{name: c, image: localhost/busybox:1.35, command: ["/no/such/binary"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: nocm}
spec:
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sleep", "3600"]
    env: [{name: X, valueFrom: {configMapKeyRef: {name: missing, key: k}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: good}
spec:
  containers: [{name: c, image: localhost/busybox:1.35, command: ["sleep", "3600"]}]
"#,
    );
    server.ok(
        "1.33",
        &["wait", "--for=condition=Ready", "pod/good", "--timeout=90s"],
    );
    let reason = |name: &str| {
        container_status(&pod_json(&server, name))["state"]["waiting"]["reason"]
            .as_str()
            .map(String::from)
    };
    wait_for(60, "noimage to show an image pull error", || {
        reason("noimage").filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    });
    let never = wait_for(30, "never to show ErrImageNeverPull", || {
        let cs = container_status(&pod_json(&server, "never"));
        (cs["state"]["waiting"]["reason"] == "ErrImageNeverPull").then_some(cs)
    });
    assert!(never["state"]["waiting"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("is not present with pull policy of Never")));
    let nocm = wait_for(30, "nocm to show CreateContainerConfigError", || {
        let cs = container_status(&pod_json(&server, "nocm"));
        (cs["state"]["waiting"]["reason"] == "CreateContainerConfigError").then_some(cs)
    });
    assert_eq!(
        nocm["state"]["waiting"]["message"],
        "configmap \"missing\" not found"
    );
    wait_for(60, "nocmd to fail to start", || {
        let cs = container_status(&pod_json(&server, "nocmd"));
        let failed = cs["lastState"]["terminated"]["exitCode"]
            .as_i64()
            .is_some_and(|c| c != 0)
            || cs["state"]["terminated"]["exitCode"]
                .as_i64()
                .is_some_and(|c| c != 0)
            || cs["state"]["waiting"]["reason"] == "RunContainerError";
        failed.then_some(())
    });
    let good = pod_json(&server, "good");
    assert_eq!(condition(&good, "Ready").as_deref(), Some("True"));
}

#[test]
fn probes_flip_readiness_and_graceful_deletes_run_pre_stop() {
    let server = Server::start_node(4, &[]);
    server.wait_node_ready("node4");
    let marker_dir = tempfile::tempdir().expect("temp dir");
    let marker = marker_dir.path().display().to_string();
    apply(
        &server,
        "probes",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sh", "-c", "sleep 6; touch /tmp/ready; exec sleep 3600"]
    readinessProbe:
      exec: {{command: ["test", "-f", "/tmp/ready"]}}
      periodSeconds: 1
---
apiVersion: v1
kind: Pod
metadata: {{name: stopper}}
spec:
  terminationGracePeriodSeconds: 20
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sh", "-c", "trap 'echo term > /marker/term; exit 0' TERM; while true; do sleep 1; done"]
    lifecycle:
      preStop:
        exec: {{command: ["sh", "-c", "echo prestop > /marker/prestop"]}}
    volumeMounts: [{{name: m, mountPath: /marker}}]
  volumes: [{{name: m, hostPath: {{path: "{marker}", type: Directory}}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: unhealthy}}
spec:
  containers:
  - name: c
    image: localhost/busybox:1.35
    command: ["sleep", "3600"]
    livenessProbe:
      exec: {{command: ["false"]}}
      periodSeconds: 1
      failureThreshold: 2
"#
        ),
    );
    let running_unready = wait_for(60, "slow to run but not be ready", || {
        let p = pod_json(&server, "slow");
        (p["status"]["phase"] == "Running").then_some(p)
    });
    assert_eq!(
        condition(&running_unready, "Ready").as_deref(),
        Some("False"),
        "{running_unready}"
    );
    server.ok(
        "1.33",
        &["wait", "--for=condition=Ready", "pod/slow", "--timeout=30s"],
    );

    wait_for(60, "the liveness probe to restart unhealthy", || {
        let cs = container_status(&pod_json(&server, "unhealthy"));
        (cs["restartCount"].as_i64() >= Some(1)).then_some(())
    });

    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/stopper",
            "--timeout=60s",
        ],
    );
    let deleted = server.ok("1.33", &["delete", "pod", "stopper", "--wait=false"]);
    assert!(deleted.contains("deleted"), "{deleted}");
    let terminating = pod_json(&server, "stopper");
    assert!(
        terminating["metadata"]["deletionTimestamp"].is_string(),
        "a pod on a node is deleted gracefully: {terminating}"
    );
    wait_for(40, "stopper to be removed", || {
        (!server
            .kubectl("1.33", &["get", "pod", "stopper"])
            .status
            .success())
        .then_some(())
    });
    let prestop = std::fs::read_to_string(marker_dir.path().join("prestop")).unwrap_or_default();
    assert_eq!(prestop.trim(), "prestop", "the preStop hook ran");
    let term = std::fs::read_to_string(marker_dir.path().join("term")).unwrap_or_default();
    assert_eq!(term.trim(), "term", "the container got SIGTERM");
}

#[test]
fn pods_resolve_cluster_names_through_the_node_local_dns() {
    // The cluster DNS answers on its own address (put on `lo`), as on a real node.
    let server = Server::start_node(8, &["--cluster-dns", "10.43.0.58"]);
    server.wait_node_ready("node8");
    apply(
        &server,
        "cart",
        r#"
apiVersion: v1
kind: Service
metadata: {name: cart}
spec:
  ports: [{port: 80}]
"#,
    );
    let cart = get_json(&server, &["get", "service", "cart", "-o", "json"]);
    let cart_ip = cart["spec"]["clusterIP"]
        .as_str()
        .expect("cluster IP")
        .to_string();
    apply(
        &server,
        "resolver",
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: resolver}}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: localhost/busybox:1.35
    command:
    - sh
    - -c
    - |
      set -e
      grep -x 'nameserver 10.43.0.58' /etc/resolv.conf
      grep -x 'search default.svc.cluster.local svc.cluster.local cluster.local' /etc/resolv.conf
      grep -x 'options ndots:5' /etc/resolv.conf
      # busybox's nslookup does not apply the search path (glibc's resolver does; see
      # the DNS tests): full names here.
      nslookup kubernetes.default.svc.cluster.local | grep 10.43.0.1
      nslookup cart.default.svc.cluster.local | grep '{cart_ip}'
      if nslookup nosuch.default.svc.cluster.local; then exit 9; fi
"#
        ),
    );
    let pod = wait_for(60, "the resolver pod to finish", || {
        let p = pod_json(&server, "resolver");
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(p)
    });
    assert_eq!(
        pod["status"]["phase"],
        "Succeeded",
        "the pod resolved the cluster's names: {}\n{}",
        container_status(&pod),
        server.ok("1.33", &["logs", "resolver"])
    );
}

#[test]
fn services_reach_pods_through_the_service_proxy() {
    // The only e2e test with the proxy on the host: table `inet pikube`, bridge
    // `pikube0` and the service routes are removed when it ends.
    let server = Server::start_node_with_proxy(9, &[]);
    server.wait_node_ready("node9");
    apply(
        &server,
        "web",
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: httpd
        image: localhost/busybox:1.35
        command: [sh, -c, 'hostname > /tmp/index.html; exec httpd -f -p 8080 -h /tmp']
        ports: [{containerPort: 8080}]
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080, nodePort: 30999}]
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers: [{name: c, image: localhost/busybox:1.35, command: [sleep, "3600"]}]
"#,
    );
    server.ok(
        "1.33",
        &["rollout", "status", "deployment/web", "--timeout=90s"],
    );
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=60s",
        ],
    );
    let svc = get_json(&server, &["get", "service", "web", "-o", "json"]);
    let ip = svc["spec"]["clusterIP"]
        .as_str()
        .expect("cluster IP")
        .to_string();
    let pods = get_json(&server, &["get", "pods", "-l", "app=web", "-o", "json"]);
    let names: std::collections::BTreeSet<String> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert_eq!(names.len(), 2, "{pods}");

    // From a pod, the ClusterIP reaches both backends.
    let fetch = |url: &str| {
        server.kubectl(
            "1.33",
            &["exec", "client", "--", "timeout", "5", "wget", "-qO-", url],
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = fetch(&format!("http://{ip}/"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.insert(String::from_utf8_lossy(&out.stdout).trim().to_string());
        if seen == names {
            break;
        }
    }
    assert_eq!(seen, names, "the ClusterIP spreads over both pods");

    // From the node, the node port answers on 127.0.0.1.
    let answer = http_get("127.0.0.1", 30999, "/");
    assert!(
        names.iter().any(|n| answer.contains(n.as_str())),
        "{answer}"
    );

    // A LoadBalancer Service gets the nodes' addresses, as k3s's servicelb gives them.
    let lb = server.file(
        "lb.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web-lb}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 8081, targetPort: 8080}]\n",
    );
    server.ok(
        "1.33",
        &["apply", "--validate=false", "-f", crate::harness::s(&lb)],
    );
    wait_for(30, "the LoadBalancer Service's ingress", || {
        let svc = get_json(&server, &["get", "service", "web-lb", "-o", "json"]);
        (svc["status"]["loadBalancer"]["ingress"][0]["ip"] == "127.0.0.1").then_some(())
    });
    let table = server.ok("1.33", &["get", "service", "web-lb"]);
    assert!(table.contains("127.0.0.1"), "EXTERNAL-IP: {table}");

    // An address that no Service holds is refused at once, not sent anywhere.
    let out = fetch("http://10.43.255.254/");
    assert!(
        !out.status.success(),
        "an unallocated ClusterIP does not answer"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused"),
        "refused at once, not timed out: {err}"
    );
}
