//! meta.k8s.io/v1 Table output: the columns kubectl prints for each kind (`kubectl get`,
//! `-o wide` adds the priority-1 columns), computed on the server as kube-apiserver does.

use serde_json::{json, Value};

use super::resources::ResourceDef;

/// What each row carries besides its cells (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    /// Nothing.
    None,
    /// The object's metadata as PartialObjectMetadata (the default).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the `includeObject` query parameter.
    pub fn parse(s: Option<&str>) -> IncludeObject {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an Accept header asks for a meta.k8s.io/v1 Table first.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        params.contains(&"as=Table")
            && params.contains(&"g=meta.k8s.io")
            && params.contains(&"v=v1")
    })
}

/// Age as kubectl prints it (`5s`, `3m2s`, `4h`, `12d`), from kube's HumanDuration.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        return if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

pub(crate) fn age(obj: &Value) -> String {
    since(obj, "/metadata/creationTimestamp")
}

/// How long ago the time at `pointer` was, as kubectl prints ages.
pub(crate) fn since(obj: &Value, pointer: &str) -> String {
    since_time(obj.pointer(pointer).and_then(Value::as_str).unwrap_or(""))
}

/// How long ago the RFC 3339 time `t` was, as kubectl prints ages.
pub(crate) fn since_time(t: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| human_duration((chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds()))
        .unwrap_or_else(|| "<unknown>".into())
}

/// A string field (empty when absent).
pub(crate) fn s<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// An integer field (0 when absent).
pub(crate) fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn count(obj: &Value, pointer: &str) -> usize {
    match obj.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn or_none(v: String) -> String {
    if v.is_empty() {
        "<none>".into()
    } else {
        v
    }
}

fn selector(obj: &Value, pointer: &str) -> String {
    match obj.pointer(pointer) {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

fn containers(obj: &Value, pointer: &str, field: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| s(c, &format!("/{field}")).to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Pod STATUS as kubectl's printer computes it.
fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_string();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_string();
    }
    let statuses = |p: &str| {
        pod.pointer(p)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let inits = statuses("/status/initContainerStatuses");
    let init_total = count(pod, "/spec/initContainers");
    for (i, c) in inits.iter().enumerate() {
        if c.pointer("/state/terminated/exitCode")
            .and_then(Value::as_i64)
            == Some(0)
        {
            continue;
        }
        let waiting = s(c, "/state/waiting/reason");
        return if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{init_total}")
        };
    }
    for c in statuses("/status/containerStatuses").iter().rev() {
        let waiting = s(c, "/state/waiting/reason");
        let terminated = s(c, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_string();
        } else if !terminated.is_empty() {
            reason = terminated.to_string();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    reason
}

/// A column: name, type, priority (1 = wide only).
pub(crate) type Column = (&'static str, &'static str, i64);

fn columns(def: &ResourceDef) -> Vec<Column> {
    if super::event_versions::is_event(def) {
        return super::table_events::COLUMNS.to_vec();
    }
    let mut cols: Vec<Column> = vec![("Name", "string", 0)];
    cols.extend(match def.kind.as_str() {
        "Namespace" => vec![("Status", "string", 0)],
        "ConfigMap" => vec![("Data", "integer", 0)],
        "Secret" => vec![("Type", "string", 0), ("Data", "integer", 0)],
        "ServiceAccount" => vec![("Secrets", "integer", 0)],
        "Pod" => vec![
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
        ],
        "Service" => vec![
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
        ],
        "Deployment" => vec![
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
        ],
        "ReplicaSet" => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
        ],
        "Node" => vec![("Status", "string", 0), ("Roles", "string", 0)],
        "DaemonSet" => vec![
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Node Selector", "string", 0),
        ],
        "StatefulSet" => vec![("Ready", "string", 0)],
        "ControllerRevision" => vec![("Controller", "string", 0), ("Revision", "integer", 0)],
        "Job" => vec![
            ("Status", "string", 0),
            ("Completions", "string", 0),
            ("Duration", "string", 0),
        ],
        "CronJob" => vec![
            ("Schedule", "string", 0),
            ("Timezone", "string", 0),
            ("Suspend", "boolean", 0),
            ("Active", "integer", 0),
            ("Last Schedule", "string", 0),
        ],
        k => super::table_storage::columns(k),
    });
    cols.push(("Age", "string", 0));
    cols.extend(match def.kind.as_str() {
        "Pod" => vec![
            ("IP", "string", 1),
            ("Node", "string", 1),
            ("Nominated Node", "string", 1),
            ("Readiness Gates", "string", 1),
        ],
        "Service" => vec![("Selector", "string", 1)],
        "Deployment" | "ReplicaSet" | "DaemonSet" | "Job" | "CronJob" => vec![
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        "StatefulSet" => vec![("Containers", "string", 1), ("Images", "string", 1)],
        "Node" => vec![("Version", "string", 0), ("Internal-IP", "string", 1)],
        k => super::table_storage::wide_columns(k),
    });
    cols
}

fn cells(def: &ResourceDef, o: &Value) -> Vec<Value> {
    if super::event_versions::is_event(def) {
        return super::table_events::cells(def, o);
    }
    let name = json!(s(o, "/metadata/name"));
    let age = json!(age(o));
    match def.kind.as_str() {
        "Namespace" => vec![name, json!(s(o, "/status/phase")), age],
        "ConfigMap" => vec![
            name,
            json!(count(o, "/data") + count(o, "/binaryData")),
            age,
        ],
        "Secret" => vec![name, json!(s(o, "/type")), json!(count(o, "/data")), age],
        "ServiceAccount" => vec![name, json!(count(o, "/secrets")), age],
        "Pod" => {
            let cs = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let ready = cs
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = cs.iter().map(|c| int(c, "/restartCount")).sum();
            vec![
                name,
                json!(format!("{ready}/{}", count(o, "/spec/containers"))),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                age,
                json!(or_none(s(o, "/status/podIP").to_string())),
                json!(or_none(s(o, "/spec/nodeName").to_string())),
                json!(or_none(s(o, "/status/nominatedNodeName").to_string())),
                json!("<none>"),
            ]
        }
        "Service" => {
            let ports = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let np = int(p, "/nodePort");
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            if np > 0 {
                                format!("{}:{np}/{proto}", int(p, "/port"))
                            } else {
                                format!("{}/{proto}", int(p, "/port"))
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let external = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|i| {
                    i.iter()
                        .map(|x| s(x, "/ip").to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP").to_string())),
                json!(or_none(external)),
                json!(or_none(ports)),
                age,
                json!(or_none(selector(o, "/spec/selector"))),
            ]
        }
        "Job" | "CronJob" => batch_cells(&def.kind, o, name, age),
        "PersistentVolume" | "PersistentVolumeClaim" | "StorageClass" => {
            super::table_storage::cells(&def.kind, o, name, age)
        }
        "Deployment" | "ReplicaSet" => {
            let wide = [
                json!(containers(o, "/spec/template/spec/containers", "name")),
                json!(containers(o, "/spec/template/spec/containers", "image")),
                json!(or_none(selector(o, "/spec/selector/matchLabels"))),
            ];
            let mut row = if def.kind == "Deployment" {
                vec![
                    name,
                    json!(format!(
                        "{}/{}",
                        int(o, "/status/readyReplicas"),
                        int(o, "/spec/replicas")
                    )),
                    json!(int(o, "/status/updatedReplicas")),
                    json!(int(o, "/status/availableReplicas")),
                    age,
                ]
            } else {
                vec![
                    name,
                    json!(int(o, "/spec/replicas")),
                    json!(int(o, "/status/replicas")),
                    json!(int(o, "/status/readyReplicas")),
                    age,
                ]
            };
            row.extend(wide);
            row
        }
        "DaemonSet" => vec![
            name,
            json!(int(o, "/status/desiredNumberScheduled")),
            json!(int(o, "/status/currentNumberScheduled")),
            json!(int(o, "/status/numberReady")),
            json!(int(o, "/status/updatedNumberScheduled")),
            json!(int(o, "/status/numberAvailable")),
            json!(or_none(selector(o, "/spec/template/spec/nodeSelector"))),
            age,
            json!(containers(o, "/spec/template/spec/containers", "name")),
            json!(containers(o, "/spec/template/spec/containers", "image")),
            json!(or_none(selector(o, "/spec/selector/matchLabels"))),
        ],
        "StatefulSet" => vec![
            name,
            json!(format!(
                "{}/{}",
                int(o, "/status/readyReplicas"),
                int(o, "/spec/replicas")
            )),
            age,
            json!(containers(o, "/spec/template/spec/containers", "name")),
            json!(containers(o, "/spec/template/spec/containers", "image")),
        ],
        "ControllerRevision" => {
            let owner = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .and_then(|refs| refs.iter().find(|r| r["controller"] == json!(true)))
                .map(|r| {
                    let group = s(r, "/apiVersion")
                        .rsplit_once('/')
                        .map(|(g, _)| format!(".{g}"))
                        .unwrap_or_default();
                    format!("{}{group}/{}", s(r, "/kind").to_lowercase(), s(r, "/name"))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![name, json!(owner), json!(int(o, "/revision")), age]
        }
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| s(c, "/type") == "Ready")
                        .map(|c| s(c, "/status") == "True")
                });
            let mut status = match ready {
                Some(true) => "Ready".to_string(),
                _ => "NotReady".to_string(),
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let roles: Vec<String> = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|l| {
                    l.keys()
                        .filter_map(|k| {
                            k.strip_prefix("node-role.kubernetes.io/").map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let ip = o
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|x| s(x, "/type") == "InternalIP")
                        .map(|x| s(x, "/address").to_string())
                })
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                json!(or_none(roles.join(","))),
                age,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
                json!(or_none(ip)),
            ]
        }
        _ => vec![name, age],
    }
}

fn time_at(o: &Value, pointer: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let t = o.pointer(pointer)?.as_str()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(t)
            .ok()?
            .with_timezone(&chrono::Utc),
    )
}

/// Job and CronJob rows, as kube-apiserver's printers make them.
fn batch_cells(kind: &str, o: &Value, name: Value, age: Value) -> Vec<Value> {
    let (template, sel) = if kind == "Job" {
        (
            "/spec/template/spec/containers",
            "/spec/selector/matchLabels",
        )
    } else {
        (
            "/spec/jobTemplate/spec/template/spec/containers",
            "/spec/jobTemplate/spec/selector/matchLabels",
        )
    };
    let wide = [
        json!(containers(o, template, "name")),
        json!(containers(o, template, "image")),
        json!(or_none(selector(o, sel))),
    ];
    let mut row = if kind == "Job" {
        let has = |t: &str| {
            o.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| s(c, "/type") == t && s(c, "/status") == "True")
                })
        };
        let status = if has("Complete") {
            "Complete"
        } else if has("Failed") {
            "Failed"
        } else if o.pointer("/metadata/deletionTimestamp").is_some() {
            "Terminating"
        } else if has("Suspended") {
            "Suspended"
        } else if has("FailureTarget") {
            "FailureTarget"
        } else if has("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        let succeeded = int(o, "/status/succeeded");
        let parallelism = o.pointer("/spec/parallelism").and_then(Value::as_i64);
        let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
            Some(c) => format!("{succeeded}/{c}"),
            None => match parallelism {
                Some(p) if p > 1 => format!("{succeeded}/1 of {p}"),
                _ => format!("{succeeded}/1"),
            },
        };
        let duration = match (
            time_at(o, "/status/startTime"),
            time_at(o, "/status/completionTime"),
        ) {
            (None, _) => String::new(),
            (Some(start), None) => human_duration((chrono::Utc::now() - start).num_seconds()),
            (Some(start), Some(end)) => human_duration((end - start).num_seconds()),
        };
        vec![
            name,
            json!(status),
            json!(completions),
            json!(duration),
            age,
        ]
    } else {
        let suspend = match o.pointer("/spec/suspend").and_then(Value::as_bool) {
            Some(true) => "True",
            Some(false) => "False",
            None => "<unset>",
        };
        let last = time_at(o, "/status/lastScheduleTime")
            .map(|t| human_duration((chrono::Utc::now() - t).num_seconds()))
            .unwrap_or_else(|| "<none>".into());
        vec![
            name,
            json!(s(o, "/spec/schedule")),
            json!(or_none(s(o, "/spec/timeZone").to_string())),
            json!(suspend),
            json!(count(o, "/status/active")),
            json!(last),
            age,
        ]
    };
    row.extend(wide);
    row
}

/// One column definition.
pub(crate) fn column(name: &str, ty: &str, priority: i64) -> Value {
    let mut c =
        json!({"name": name, "type": ty, "format": "", "description": name, "priority": priority});
    if name == "Name" {
        c["format"] = json!("name");
        c["description"] = json!("Name must be unique within a namespace.");
    }
    c
}

/// One table row for `obj`.
fn row(def: &ResourceDef, obj: &Value, include: IncludeObject) -> Value {
    let cells = match &def.custom {
        Some(c) => super::crd::printer::cells(c, obj),
        None => cells(def, obj),
    };
    let mut r = json!({"cells": cells});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        IncludeObject::Object => r["object"] = obj.clone(),
    }
    r
}

/// A Table of `objects` with the list's metadata (resourceVersion, continue).
pub fn to_table<V: std::borrow::Borrow<Value>>(
    def: &ResourceDef,
    objects: &[V],
    include: IncludeObject,
    list_metadata: Value,
) -> Value {
    let column_definitions: Vec<Value> = match &def.custom {
        Some(c) => super::crd::printer::columns(c),
        None => columns(def)
            .into_iter()
            .map(|(name, ty, priority)| column(name, ty, priority))
            .collect(),
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": column_definitions,
        "rows": objects.iter().map(|o| row(def, o.borrow(), include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn ages_print_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (182, "3m2s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
            (20 * 86400, "20d"),
            (800 * 86400, "2y70d"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
        assert!(!wants_table(
            "application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
        ));
    }

    #[test]
    fn workload_rows() {
        let ds = json!({"metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"spec": {
                "nodeSelector": {"arch": "arm64"}, "containers": [{"name": "c", "image": "i:1"}]}}},
            "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 3, "numberReady": 2,
                "updatedNumberScheduled": 1, "numberAvailable": 2}});
        let t = to_table(
            &lookup("apps", "v1", "daemonsets").unwrap(),
            &[ds],
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "agent",
                3,
                3,
                2,
                1,
                2,
                "arch=arm64",
                "<unknown>",
                "c",
                "i:1",
                "app=agent"
            ])
        );
        let sts = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3},
            "status": {"readyReplicas": 2}});
        let t = to_table(
            &lookup("apps", "v1", "statefulsets").unwrap(),
            &[sts],
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(t["rows"][0]["cells"][1], "2/3");
        let rev = json!({"metadata": {"name": "web-abc", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "StatefulSet", "name": "web", "uid": "u", "controller": true}]}, "revision": 2});
        let t = to_table(
            &lookup("apps", "v1", "controllerrevisions").unwrap(),
            &[rev],
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!(["web-abc", "statefulset.apps/web", 2, "<unknown>"])
        );
    }

    #[test]
    fn pod_and_service_rows() {
        let pod = json!({
            "metadata": {"name": "web-1", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "pi1"},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
            ]}
        });
        let t = to_table(
            &lookup("", "v1", "pods").unwrap(),
            &[pod],
            IncludeObject::Metadata,
            json!({}),
        );
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-1");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.42.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.9", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let t = to_table(
            &lookup("", "v1", "services").unwrap(),
            &[svc],
            IncludeObject::None,
            json!({}),
        );
        assert_eq!(
            t["rows"][0]["cells"],
            json!([
                "s",
                "NodePort",
                "10.43.0.9",
                "<none>",
                "80:30080/TCP",
                "<unknown>",
                "app=web"
            ])
        );
        assert!(t["rows"][0].get("object").is_none());
    }
}
