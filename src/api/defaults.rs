//! The defaults kube-apiserver gives objects it stores, so that what `kubectl get -o yaml`
//! shows, what `kubectl get pods` prints (a new pod is `Pending`) and what controllers
//! and the node agent read are the same as on Kubernetes: the pod spec defaults
//! (`dnsPolicy`, `restartPolicy`, grace period, scheduler, container pull policy and
//! termination message, probe timings, volume modes, port protocols), the pod defaults
//! of the admission chain (requests from limits, the 300 s `not-ready`/`unreachable`
//! tolerations, priority), a new pod's status (`Pending` with its QoS class), and the
//! Deployment and ReplicaSet defaults. Pod templates of every workload get the pod
//! spec defaults.
//!
//! Only absent (or null) fields are filled; a value of the wrong type is left for the
//! type checks to report.

use serde_json::{json, Map, Value};

use super::resources::ResourceDef;

/// Default grace period of a pod (`terminationGracePeriodSeconds`).
pub const GRACE_PERIOD_SECONDS: i64 = 30;
/// How long pods tolerate a not-ready or unreachable node by default
/// (DefaultTolerationSeconds).
pub const TOLERATION_SECONDS: i64 = 300;
/// Mode of files in secret, configMap, downwardAPI and projected volumes (0644).
const VOLUME_MODE: i64 = 0o644;

/// Fills the defaults of `obj`, of kind `def`; `creating` for a new object (a new pod's
/// status is set, the admission defaults are added).
pub fn apply(def: &ResourceDef, obj: &mut Value, creating: bool) {
    if def.custom.is_some() {
        return;
    }
    let spec = obj.get_mut("spec").and_then(Value::as_object_mut);
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            if let Some(spec) = spec {
                pod_spec(spec);
                if creating {
                    admission(spec);
                }
            }
            if creating {
                let qos = qos_class(obj.get("spec"));
                if let Some(o) = obj.as_object_mut() {
                    o.insert(
                        "status".into(),
                        json!({"phase": "Pending", "qosClass": qos}),
                    );
                }
            }
        }
        ("apps", "Deployment") => {
            if let Some(spec) = spec {
                replicated(spec);
                put(spec, "revisionHistoryLimit", json!(10));
                put(spec, "progressDeadlineSeconds", json!(600));
                put(spec, "strategy", json!({}));
                if let Some(s) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                    put(s, "type", json!("RollingUpdate"));
                    if s.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                        put(s, "rollingUpdate", json!({}));
                        if let Some(ru) = s.get_mut("rollingUpdate").and_then(Value::as_object_mut)
                        {
                            put(ru, "maxUnavailable", json!("25%"));
                            put(ru, "maxSurge", json!("25%"));
                        }
                    }
                }
            }
        }
        ("apps", "ReplicaSet") => {
            if let Some(spec) = spec {
                replicated(spec);
            }
        }
        ("apps", "DaemonSet") | ("apps", "StatefulSet") | ("batch", "Job") => {
            if let Some(t) = spec.and_then(|s| s.get_mut("template")) {
                template(t);
            }
        }
        ("batch", "CronJob") => {
            if let Some(t) = obj.pointer_mut("/spec/jobTemplate/spec/template") {
                template(t);
            }
        }
        _ => {}
    }
}

/// Sets `key` to `value` unless it has a value.
fn put(m: &mut Map<String, Value>, key: &str, value: Value) {
    let v = m.entry(key.to_string()).or_insert(Value::Null);
    if v.is_null() {
        *v = value;
    }
}

fn replicated(spec: &mut Map<String, Value>) {
    put(spec, "replicas", json!(1));
    if let Some(t) = spec.get_mut("template") {
        template(t);
    }
}

fn template(t: &mut Value) {
    if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
        pod_spec(spec);
    }
}

fn objects_in<'a>(
    m: &'a mut Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a mut Map<String, Value>> {
    m.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

/// SetDefaults_PodSpec and what it calls for containers, volumes and probes.
fn pod_spec(spec: &mut Map<String, Value>) {
    put(spec, "dnsPolicy", json!("ClusterFirst"));
    put(spec, "restartPolicy", json!("Always"));
    put(
        spec,
        "terminationGracePeriodSeconds",
        json!(GRACE_PERIOD_SECONDS),
    );
    put(spec, "securityContext", json!({}));
    put(spec, "schedulerName", json!("default-scheduler"));
    put(spec, "enableServiceLinks", json!(true));
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        for c in objects_in(spec, key) {
            container(c, host_network);
        }
    }
    for v in objects_in(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Map<String, Value>, host_network: bool) {
    put(c, "terminationMessagePath", json!("/dev/termination-log"));
    put(c, "terminationMessagePolicy", json!("File"));
    if let Some(image) = c.get("image").and_then(Value::as_str) {
        let policy = pull_policy(image);
        put(c, "imagePullPolicy", json!(policy));
    }
    put(c, "resources", json!({}));
    for p in objects_in(c, "ports") {
        put(p, "protocol", json!("TCP"));
        if host_network {
            if let Some(port) = p.get("containerPort").cloned() {
                put(p, "hostPort", port);
            }
        }
    }
    for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(key).and_then(Value::as_object_mut) {
            probe(p);
        }
    }
    for key in ["postStart", "preStop"] {
        if let Some(h) = c
            .get_mut("lifecycle")
            .and_then(|l| l.get_mut(key))
            .and_then(Value::as_object_mut)
        {
            http_get(h);
        }
    }
    for e in objects_in(c, "env") {
        if let Some(f) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .and_then(Value::as_object_mut)
        {
            put(f, "apiVersion", json!("v1"));
        }
    }
}

/// `Always` for the `latest` tag, which an image with neither tag nor digest has, else
/// `IfNotPresent` (kube's defaulting by the tag ParseImageName finds).
pub fn pull_policy(image: &str) -> &'static str {
    let (name, digest) = match image.split_once('@') {
        Some((name, _)) => (name, true),
        None => (image, false),
    };
    // The tag follows the last ':' after the last '/' (a registry port is not a tag).
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, "latest")) => "Always",
        Some(_) => "IfNotPresent",
        None if digest => "IfNotPresent",
        None => "Always",
    }
}

fn probe(p: &mut Map<String, Value>) {
    put(p, "timeoutSeconds", json!(1));
    put(p, "periodSeconds", json!(10));
    put(p, "successThreshold", json!(1));
    put(p, "failureThreshold", json!(3));
    http_get(p);
}

fn http_get(handler: &mut Map<String, Value>) {
    if let Some(h) = handler.get_mut("httpGet").and_then(Value::as_object_mut) {
        put(h, "path", json!("/"));
        put(h, "scheme", json!("HTTP"));
    }
}

fn volume(v: &mut Map<String, Value>) {
    const SOURCES: [&str; 24] = [
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "projected",
        "csi",
    ];
    const MORE: [&str; 6] = [
        "photonPersistentDisk",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "ephemeral",
        "image",
    ];
    if !SOURCES
        .iter()
        .chain(MORE.iter())
        .any(|s| v.contains_key(*s))
    {
        v.insert("emptyDir".into(), json!({}));
    }
    for key in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(key).and_then(Value::as_object_mut) {
            put(src, "defaultMode", json!(VOLUME_MODE));
        }
    }
    if let Some(h) = v.get_mut("hostPath").and_then(Value::as_object_mut) {
        put(h, "type", json!(""));
    }
    for f in v
        .get_mut("downwardAPI")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|d| objects_in(d, "items"))
    {
        if let Some(r) = f.get_mut("fieldRef").and_then(Value::as_object_mut) {
            put(r, "apiVersion", json!("v1"));
        }
    }
}

/// What the admission chain adds to a new pod: requests from limits (SetDefaults_Pod)
/// and priority (Priority); the tolerations come from [`add_tolerations`].
fn admission(spec: &mut Map<String, Value>) {
    for key in ["initContainers", "containers"] {
        for c in objects_in(spec, key) {
            let Some(r) = c.get_mut("resources").and_then(Value::as_object_mut) else {
                continue;
            };
            let Some(limits) = r.get("limits").and_then(Value::as_object).cloned() else {
                continue;
            };
            put(r, "requests", json!({}));
            if let Some(req) = r.get_mut("requests").and_then(Value::as_object_mut) {
                for (k, v) in limits {
                    req.entry(k).or_insert(v);
                }
            }
        }
    }
    if spec.get("priorityClassName").is_none() {
        put(spec, "priority", json!(0));
    }
    put(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

/// DefaultTolerationSeconds admission: a new pod that does not tolerate the
/// `not-ready` or `unreachable` NoExecute taints itself tolerates them for
/// `not_ready` / `unreachable` seconds (kube-apiserver's
/// `--default-not-ready-toleration-seconds`/`--default-unreachable-toleration-seconds`),
/// which is how long the node lifecycle controller leaves it on such a node.
pub fn add_tolerations(pod: &mut Value, not_ready: i64, unreachable: i64) {
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    put(spec, "tolerations", json!([]));
    let Some(t) = spec.get_mut("tolerations").and_then(Value::as_array_mut) else {
        return;
    };
    for (key, seconds) in [
        ("node.kubernetes.io/not-ready", not_ready),
        ("node.kubernetes.io/unreachable", unreachable),
    ] {
        let covered = t.iter().any(|t| {
            let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
            let k = t.get("key").and_then(Value::as_str).unwrap_or("");
            let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
            (effect.is_empty() || effect == "NoExecute") && (k == key || (k.is_empty() && exists))
        });
        if !covered {
            t.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": seconds}),
            );
        }
    }
}

/// The pod's QoS class (kube's GetPodQOS): BestEffort without any cpu or memory request
/// or limit, Guaranteed when every container limits both and requests what it limits,
/// else Burstable.
pub fn qos_class(spec: Option<&Value>) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.and_then(|s| s.get(*k)).and_then(Value::as_array))
        .flatten()
        .collect();
    // A positive quantity of `res` in `kind` (requests or limits); zero counts as none.
    let quantity = |c: &Value, kind: &str, res: &str| -> Option<f64> {
        let q = c.pointer(&format!("/resources/{kind}/{res}"))?;
        let text = match q {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        crate::scheduler::quantity::parse(&text).filter(|v| *v > 0.0)
    };
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        for res in ["cpu", "memory"] {
            let req = quantity(c, "requests", res);
            let lim = quantity(c, "limits", res);
            any |= req.is_some() || lim.is_some();
            guaranteed &= match (req, lim) {
                (Some(r), Some(l)) => (r - l).abs() <= l * 1e-9,
                (None, Some(_)) => true,
                _ => false,
            };
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::builtin;

    fn def(group: &str, kind: &str) -> crate::api::resources::Def {
        builtin()
            .iter()
            .find(|d| d.is(group, kind))
            .cloned()
            .expect("built-in kind")
    }

    #[test]
    fn a_new_pod_gets_kube_apiservers_defaults_and_pending_status() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "containers": [
                {"name": "a", "image": "busybox", "ports": [{"containerPort": 80}],
                 "readinessProbe": {"httpGet": {"port": 80}},
                 "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "b", "image": "localhost/busybox:1.35@sha256:ab",
                 "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}},
            ],
            "volumes": [{"name": "scratch"}, {"name": "cm", "configMap": {"name": "x"}}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}],
        }, "status": {"phase": "Running"}});
        apply(&def("", "Pod"), &mut pod, true);
        add_tolerations(&mut pod, TOLERATION_SECONDS, 60);
        let s = &pod["spec"];
        assert_eq!(s["dnsPolicy"], "ClusterFirst");
        assert_eq!(s["restartPolicy"], "Always");
        assert_eq!(s["terminationGracePeriodSeconds"], 30);
        assert_eq!(s["schedulerName"], "default-scheduler");
        assert_eq!(s["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(s["containers"][1]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(s["containers"][0]["ports"][0]["protocol"], "TCP");
        assert_eq!(s["containers"][0]["readinessProbe"]["httpGet"]["path"], "/");
        assert_eq!(s["containers"][0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(
            s["containers"][0]["resources"]["requests"],
            json!({"cpu": "1", "memory": "1Gi"})
        );
        assert_eq!(s["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(s["volumes"][1]["configMap"]["defaultMode"], 420);
        // The pod's own unreachable toleration is kept; not-ready is added.
        let tolerations = s["tolerations"].as_array().expect("tolerations");
        assert_eq!(tolerations.len(), 2, "{tolerations:?}");
        assert_eq!(tolerations[0]["tolerationSeconds"], 5);
        assert_eq!(tolerations[1]["key"], "node.kubernetes.io/not-ready");
        assert_eq!(tolerations[1]["tolerationSeconds"], 300);
        assert_eq!(
            pod["status"],
            json!({"phase": "Pending", "qosClass": "Guaranteed"})
        );
    }

    #[test]
    fn set_values_and_wrong_types_are_left_alone() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {
            "restartPolicy": "Never", "dnsPolicy": 5,
            "containers": [{"name": "a", "image": "r.example:5000/app", "imagePullPolicy": "Never"}],
        }});
        apply(&def("", "Pod"), &mut pod, false);
        assert_eq!(pod["spec"]["restartPolicy"], "Never");
        assert_eq!(pod["spec"]["dnsPolicy"], 5);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Never");
        assert!(pod.get("status").is_none(), "an update keeps the status");
        assert_eq!(pull_policy("r.example:5000/app"), "Always");
        assert_eq!(pull_policy("r.example:5000/app:v1"), "IfNotPresent");
        assert_eq!(pull_policy("app:latest"), "Always");
        assert_eq!(pull_policy("app@sha256:ab"), "IfNotPresent");
        assert_eq!(pull_policy("app:latest@sha256:ab"), "Always");
    }

    #[test]
    fn qos_classes_follow_requests_and_limits() {
        let spec =
            |resources: Value| json!({"containers": [{"name": "a", "resources": resources}]});
        assert_eq!(qos_class(Some(&spec(json!({})))), "BestEffort");
        assert_eq!(
            qos_class(Some(&spec(json!({"requests": {"cpu": "100m"}})))),
            "Burstable"
        );
        assert_eq!(
            qos_class(Some(&spec(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "1000m", "memory": "1Gi"}})
            ))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(Some(&spec(
                json!({"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}})
            ))),
            "Burstable"
        );
    }

    #[test]
    fn workloads_get_their_defaults_and_pod_template_defaults() {
        let mut d = json!({"spec": {"selector": {"matchLabels": {"app": "w"}},
            "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        apply(&def("apps", "Deployment"), &mut d, true);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        assert!(d["spec"]["template"]["spec"].get("tolerations").is_none());
        let mut recreate = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply(&def("apps", "Deployment"), &mut recreate, true);
        assert!(recreate["spec"]["strategy"].get("rollingUpdate").is_none());
    }
}
