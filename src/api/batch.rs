//! Defaults and validation of batch/v1 Jobs and CronJobs, as kube-apiserver's job and
//! cronjob strategies do: a Job gets its generated selector
//! (`batch.kubernetes.io/controller-uid`) and the matching pod template labels unless
//! `manualSelector` is set, plus completions, parallelism, backoffLimit and the other
//! defaults; a CronJob gets its policy defaults and a checked schedule and time zone.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Map, Value};

use super::status::ApiError;
use crate::controllers::schedule::{self, Schedule};

/// Labels the generated selector relies on, with their legacy names.
const UID_LABELS: [&str; 2] = ["batch.kubernetes.io/controller-uid", "controller-uid"];
const NAME_LABELS: [&str; 2] = ["batch.kubernetes.io/job-name", "job-name"];

/// Longest CronJob name: Job names append 11 characters to it.
const MAX_CRONJOB_NAME: usize = 52;

type Causes = Vec<(String, String)>;

/// The object at `path` under `v`, made when missing; `None` when something on the way
/// is not an object (validation then reports what is missing).
fn obj_at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Map<String, Value>> {
    let mut cur = v;
    for key in path {
        cur = cur
            .as_object_mut()?
            .entry(key.to_string())
            .or_insert_with(|| json!({}));
    }
    cur.as_object_mut()
}

/// Checks `spec.template` (at `path`) of a Job or CronJob: pods must not restart
/// always.
fn check_restart_policy(template: Option<&Value>, path: &str, causes: &mut Causes) {
    let policy = template
        .and_then(|t| t.pointer("/spec/restartPolicy"))
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if policy != "OnFailure" && policy != "Never" {
        causes.push((
            format!("{path}.spec.restartPolicy"),
            format!("Unsupported value: \"{policy}\": supported values: \"OnFailure\", \"Never\""),
        ));
    }
}

fn check_non_negative(spec: &Value, fields: &[&str], path: &str, causes: &mut Causes) {
    for f in fields {
        if let Some(v) = spec.get(*f).filter(|v| !v.is_null()) {
            if v.as_i64().is_none_or(|n| n < 0) {
                causes.push((
                    format!("{path}.{f}"),
                    format!("Invalid value: {v}: must be greater than or equal to 0"),
                ));
            }
        }
    }
}

/// Whether `selector` (matchLabels and matchExpressions) selects `labels`; a selector
/// that is not a valid LabelSelector selects nothing.
fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Ok(selector) = serde_json::from_value::<LabelSelector>(selector.clone()) else {
        return false;
    };
    let labels = serde_json::from_value(labels.clone()).ok();
    crate::controllers::pods::selector_matches(&selector, labels.as_ref())
}

/// Defaults and checks a Job about to be stored over `old`.
fn prepare_job(old: Option<&Value>, job: &mut Value, causes: &mut Causes) {
    let name = job
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let uid = job
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let manual = job.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    if let Some(labels) = obj_at(job, &["spec", "template", "metadata", "labels"])
        .filter(|_| old.is_none() && !manual)
    {
        for l in UID_LABELS {
            labels.entry(l).or_insert(json!(uid));
        }
        for l in NAME_LABELS {
            labels.entry(l).or_insert(json!(name));
        }
    }
    // A Job without labels of its own takes its pod template's.
    let template_labels = job.pointer("/spec/template/metadata/labels").cloned();
    let own = job.pointer("/metadata/labels").and_then(Value::as_object);
    if old.is_none() && own.is_none_or(|l| l.is_empty()) {
        if let (Some(l), Some(m)) = (template_labels, obj_at(job, &["metadata"])) {
            m.insert("labels".into(), l);
        }
    }
    let Some(spec) = obj_at(job, &["spec"]) else {
        causes.push(("spec".into(), "Invalid value: must be an object".into()));
        return;
    };
    if !spec.contains_key("completions") && !spec.contains_key("parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    spec.entry("parallelism").or_insert(json!(1));
    let per_index = spec
        .get("backoffLimitPerIndex")
        .is_some_and(|v| !v.is_null());
    spec.entry("backoffLimit")
        .or_insert(json!(if per_index { i32::MAX } else { 6 }));
    spec.entry("completionMode").or_insert(json!("NonIndexed"));
    spec.entry("suspend").or_insert(json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|v| !v.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    spec.entry("podReplacementPolicy")
        .or_insert(json!(replacement));
    match old {
        None if !manual => {
            let generated = json!({"matchLabels": {UID_LABELS[0]: uid}});
            match spec.get("selector").filter(|s| !s.is_null()) {
                None => {
                    spec.insert("selector".into(), generated);
                }
                Some(s) if *s != generated => causes.push((
                    "spec.selector".into(),
                    format!("Invalid value: {s}: `selector` not auto-generated"),
                )),
                Some(_) => {}
            }
        }
        None => {}
        Some(old) => {
            let old_spec = old.get("spec").cloned().unwrap_or(json!({}));
            if spec.get("selector").is_none_or(Value::is_null) {
                if let Some(s) = old_spec.get("selector") {
                    spec.insert("selector".into(), s.clone());
                }
            }
            for f in ["selector", "completionMode"] {
                if spec.get(f) != old_spec.get(f) {
                    causes.push((
                        format!("spec.{f}"),
                        "Invalid value: field is immutable".into(),
                    ));
                }
            }
            let suspended = old_spec.get("suspend").and_then(Value::as_bool) == Some(true);
            if !suspended && spec.get("template") != old_spec.get("template") {
                causes.push((
                    "spec.template".into(),
                    "Invalid value: field is immutable".into(),
                ));
            }
        }
    }
    let spec = Value::Object(spec.clone());
    let template = spec.get("template");
    if template.is_none() {
        causes.push(("spec.template".into(), "Required value".into()));
    }
    // Objects stored before these checks existed stay writable (metadata, finalizers).
    let old_spec = old.and_then(|o| o.get("spec"));
    if old_spec.is_none_or(|o| o.get("template") != template) {
        check_restart_policy(template, "spec.template", causes);
    }
    check_non_negative(
        &spec,
        &[
            "parallelism",
            "completions",
            "backoffLimit",
            "activeDeadlineSeconds",
            "ttlSecondsAfterFinished",
        ],
        "spec",
        causes,
    );
    match spec.get("selector").filter(|s| !s.is_null()) {
        None if old_spec.is_some_and(|o| o.get("selector").is_none()) => {}
        None => causes.push(("spec.selector".into(), "Required value".into())),
        Some(s) => {
            let labels = spec
                .pointer("/template/metadata/labels")
                .cloned()
                .unwrap_or(json!({}));
            if !labels_match(s, &labels) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    format!("Invalid value: {labels}: `selector` does not match template `labels`"),
                ));
            }
        }
    }
    match spec.get("completionMode").and_then(Value::as_str) {
        Some("NonIndexed") => {}
        Some("Indexed") => {
            if spec.get("completions").is_none_or(Value::is_null) {
                causes.push((
                    "spec.completions".into(),
                    "Required value: when completion mode is Indexed".into(),
                ));
            }
        }
        other => causes.push((
            "spec.completionMode".into(),
            format!(
                "Unsupported value: {}: supported values: \"NonIndexed\", \"Indexed\"",
                other
                    .map(|s| format!("\"{s}\""))
                    .unwrap_or_else(|| "null".into())
            ),
        )),
    }
}

/// Defaults and checks a CronJob.
fn prepare_cronjob(cj: &mut Value, causes: &mut Causes) {
    let name_len = cj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map_or(0, str::len);
    if name_len > MAX_CRONJOB_NAME {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: must be no more than {MAX_CRONJOB_NAME} characters"),
        ));
    }
    let Some(spec) = obj_at(cj, &["spec"]) else {
        causes.push(("spec".into(), "Invalid value: must be an object".into()));
        return;
    };
    spec.entry("concurrencyPolicy").or_insert(json!("Allow"));
    spec.entry("suspend").or_insert(json!(false));
    spec.entry("successfulJobsHistoryLimit").or_insert(json!(3));
    spec.entry("failedJobsHistoryLimit").or_insert(json!(1));
    let spec = Value::Object(spec.clone());
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => causes.push(("spec.schedule".into(), "Required value".into())),
        Some(s) => {
            if let Err(e) = Schedule::parse(s) {
                causes.push((
                    "spec.schedule".into(),
                    format!("Invalid value: \"{s}\": {e}"),
                ));
            }
        }
    }
    if let Some(tz) = spec.get("timeZone").filter(|v| !v.is_null()) {
        let name = tz.as_str().unwrap_or_default();
        if let Err(e) = schedule::time_zone(name) {
            causes.push((
                "spec.timeZone".into(),
                format!("Invalid value: \"{name}\": {e}"),
            ));
        }
    }
    let policy = spec
        .get("concurrencyPolicy")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !["Allow", "Forbid", "Replace"].contains(&policy) {
        causes.push((
            "spec.concurrencyPolicy".into(),
            format!("Unsupported value: \"{policy}\": supported values: \"Allow\", \"Forbid\", \"Replace\""),
        ));
    }
    check_non_negative(
        &spec,
        &[
            "startingDeadlineSeconds",
            "successfulJobsHistoryLimit",
            "failedJobsHistoryLimit",
        ],
        "spec",
        causes,
    );
    check_restart_policy(
        spec.pointer("/jobTemplate/spec/template"),
        "spec.jobTemplate.spec.template",
        causes,
    );
}

/// Defaults and validates a batch/v1 object of `kind` about to be stored over `old`;
/// other kinds pass untouched.
pub fn prepare(kind: &str, old: Option<&Value>, obj: &mut Value) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    match kind {
        "Job" => prepare_job(old, obj, &mut causes),
        "CronJob" => prepare_cronjob(obj, &mut causes),
        _ => return Ok(()),
    }
    ApiError::unless_invalid(kind, "batch", obj, causes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: Value) -> Value {
        json!({"metadata": {"name": "pi", "uid": "u-1"}, "spec": spec})
    }

    fn template() -> Value {
        json!({"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}})
    }

    #[test]
    fn jobs_get_a_generated_selector_and_defaults() {
        let mut j = job(json!({"template": template()}));
        prepare("Job", None, &mut j).expect("valid");
        assert_eq!(
            j["spec"]["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        let labels = &j["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels["controller-uid"], "u-1");
        assert_eq!(labels["batch.kubernetes.io/job-name"], "pi");
        assert_eq!(labels["job-name"], "pi");
        assert_eq!(&j["metadata"]["labels"], labels);
        assert_eq!(j["spec"]["completions"], 1);
        assert_eq!(j["spec"]["parallelism"], 1);
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
        assert_eq!(j["spec"]["suspend"], false);
        assert!(j["spec"].get("manualSelector").is_none());

        // Work queue: parallelism without completions keeps completions unset.
        let mut j = job(json!({"parallelism": 3, "template": template()}));
        prepare("Job", None, &mut j).expect("valid");
        assert!(j["spec"].get("completions").is_none());

        // Updates keep the selector; changing it is refused.
        let old = j.clone();
        let mut new = old.clone();
        new["spec"]["parallelism"] = json!(1);
        new["spec"]
            .as_object_mut()
            .expect("spec")
            .remove("selector");
        prepare("Job", Some(&old), &mut new).expect("valid update");
        assert_eq!(new["spec"]["selector"], old["spec"]["selector"]);
        new["spec"]["selector"] = json!({"matchLabels": {"a": "b"}});
        assert!(prepare("Job", Some(&old), &mut new).is_err());
    }

    #[test]
    fn bad_jobs_are_invalid() {
        let mut j = job(json!({"template": {"spec": {"containers": []}}}));
        let e = prepare("Job", None, &mut j).expect_err("Always is refused");
        assert_eq!(e.code, 422);
        assert!(
            e.message
                .contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\""),
            "{}",
            e.message
        );
        let mut j = job(json!({"selector": {"matchLabels": {"a": "b"}}, "template": template()}));
        assert!(prepare("Job", None, &mut j)
            .expect_err("selector")
            .message
            .contains("not auto-generated"));
        let mut j = job(
            json!({"manualSelector": true, "selector": {"matchLabels": {"a": "b"}}, "template": template()}),
        );
        assert!(prepare("Job", None, &mut j)
            .expect_err("labels")
            .message
            .contains("does not match"));
        let mut j =
            job(json!({"completionMode": "Indexed", "parallelism": 2, "template": template()}));
        assert!(prepare("Job", None, &mut j).is_err());
        let mut j = job(json!({"backoffLimit": -1, "template": template()}));
        assert!(prepare("Job", None, &mut j).is_err());
    }

    #[test]
    fn cronjobs_get_defaults_and_checked_schedules() {
        let cj = |spec: Value| json!({"metadata": {"name": "c"}, "spec": spec});
        let jt = json!({"spec": {"template": template()}});
        let mut c = cj(json!({"schedule": "*/5 * * * *", "jobTemplate": jt}));
        prepare("CronJob", None, &mut c).expect("valid");
        assert_eq!(c["spec"]["concurrencyPolicy"], "Allow");
        assert_eq!(c["spec"]["successfulJobsHistoryLimit"], 3);
        assert_eq!(c["spec"]["failedJobsHistoryLimit"], 1);
        assert_eq!(c["spec"]["suspend"], false);
        for (spec, msg) in [
            (
                json!({"schedule": "61 * * * *", "jobTemplate": jt}),
                "spec.schedule: Invalid value",
            ),
            (json!({"jobTemplate": jt}), "spec.schedule: Required value"),
            (
                json!({"schedule": "@daily", "timeZone": "Nowhere/Land", "jobTemplate": jt}),
                "unknown time zone",
            ),
            (
                json!({"schedule": "@daily", "concurrencyPolicy": "Sometimes", "jobTemplate": jt}),
                "concurrencyPolicy",
            ),
            (
                json!({"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {}}}}}),
                "restartPolicy",
            ),
        ] {
            let mut c = cj(spec);
            let e = prepare("CronJob", None, &mut c).expect_err(msg);
            assert!(e.message.contains(msg), "{}", e.message);
        }
    }
}
