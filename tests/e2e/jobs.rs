//! Jobs and CronJobs driven by the real kubectl: completions and parallelism,
//! backoffLimit, activeDeadlineSeconds, suspend, ttlSecondsAfterFinished, Indexed
//! completion, CronJob schedules with Forbid and history limits, manual runs with
//! `kubectl create job --from=cronjob/…`, validation; pods finish in the node simulator
//! (its exit-code annotation), and one Job runs a real container on a real agent.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{describe_showing, get_json, s, wait_for, wait_for_every, Server};
use crate::sim::{Sim, SimNode, EXIT_CODE, RUN_MS};

fn apply(server: &Server, name: &str, yaml: &str) {
    let f = server.file(&format!("{name}.yaml"), yaml);
    server.ok("1.33", &["apply", "-f", s(&f)]);
}

/// A Job manifest; `exit` = the simulated exit code and run time, `None` runs forever.
fn job_yaml(name: &str, spec: &str, exit: Option<(i32, u64)>, restart: &str) -> String {
    let annotations = match exit {
        Some((code, ms)) => format!("{{\"{EXIT_CODE}\": \"{code}\", \"{RUN_MS}\": \"{ms}\"}}"),
        None => "{}".into(),
    };
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    metadata:\n      annotations: {annotations}\n    spec:\n      restartPolicy: {restart}\n      containers:\n      - name: work\n        image: busybox\n"
    )
}

fn job_json(server: &Server, name: &str) -> Value {
    get_json(server, &["get", "job", name, "-o", "json"])
}

fn pods_of(server: &Server, job: &str) -> Vec<Value> {
    let list = get_json(
        server,
        &[
            "get",
            "pods",
            "-l",
            &format!("batch.kubernetes.io/job-name={job}"),
            "-o",
            "json",
        ],
    );
    list["items"].as_array().cloned().unwrap_or_default()
}

fn condition(obj: &Value, kind: &str) -> Option<Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind && c["status"] == "True")
        .cloned()
}

fn sim(server: &Server) -> Sim {
    Sim::start(
        server,
        vec![SimNode::new("sim-a"), SimNode::new("sim-b")],
        Duration::from_millis(300),
    )
}

#[test]
fn job_runs_completions_with_parallelism_and_kubectl_waits() {
    let server = Server::start();
    let _sim = sim(&server);
    apply(
        &server,
        "pi",
        &job_yaml(
            "pi",
            "  completions: 3\n  parallelism: 2\n",
            Some((0, 1500)),
            "Never",
        ),
    );

    // Sample the pods that run at once while the Job works.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        let kubeconfig = server.kubeconfig();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(crate::harness::kubectl_path("1.33"))
                    .args(["--kubeconfig", s(&kubeconfig), "get", "--raw"])
                    .arg("/api/v1/namespaces/default/pods?labelSelector=job-name%3Dpi")
                    .output()
                    .expect("kubectl");
                if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
                    let running = v["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|p| {
                            !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                        })
                        .count() as i64;
                    most.fetch_max(running, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let out = server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/pi",
            "--timeout=60s",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    assert!(out.contains("condition met"), "{out}");
    assert_eq!(
        most.load(Ordering::Relaxed),
        2,
        "parallelism 2 at most and at least"
    );

    let job = job_json(&server, "pi");
    let uid = job["metadata"]["uid"].as_str().expect("uid");
    let st = &job["status"];
    assert_eq!(st["succeeded"], 3, "{job}");
    assert!(
        st["failed"].as_i64().unwrap_or(0) == 0 && st["active"].as_i64().unwrap_or(0) == 0,
        "{job}"
    );
    assert!(
        st["startTime"].is_string() && st["completionTime"].is_string(),
        "{job}"
    );
    assert!(
        condition(&job, "Complete").is_some_and(|c| c["lastTransitionTime"].is_string()),
        "{job}"
    );
    // The generated selector and template labels, and the other defaults.
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
        uid
    );
    let labels = &job["spec"]["template"]["metadata"]["labels"];
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid),
        ("controller-uid", uid),
        ("batch.kubernetes.io/job-name", "pi"),
        ("job-name", "pi"),
    ] {
        assert_eq!(labels[k], v, "{labels}");
    }
    assert_eq!(
        &job["metadata"]["labels"], labels,
        "the Job takes its template's labels"
    );
    assert_eq!(job["spec"]["backoffLimit"], 6);
    assert_eq!(job["spec"]["completionMode"], "NonIndexed");

    // Exactly three pods, all succeeded, owned by the Job and no longer tracked.
    let pods = pods_of(&server, "pi");
    assert_eq!(pods.len(), 3, "{pods:?}");
    for p in &pods {
        assert_eq!(p["status"]["phase"], "Succeeded");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], uid);
        assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Job");
        assert!(
            p["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty()),
            "{p}"
        );
    }
    let table = server.ok("1.33", &["get", "jobs"]);
    let row = table.lines().find(|l| l.starts_with("pi ")).expect("row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..3], ["Complete", "3/3"], "{table}");
    assert!(cols[3].ends_with('s'), "duration: {table}");
    let old = server.ok("1.27", &["get", "jobs"]);
    assert!(old.contains("3/3"), "{old}");
    let describe = server.ok("1.33", &["describe", "job", "pi"]);
    assert!(
        describe.contains("Pods Statuses:    0 Active (0 Ready) / 3 Succeeded / 0 Failed"),
        "{describe}"
    );

    // A bad Job is refused with the API server's reasons.
    let bad = server.file("bad.yaml", &job_yaml("bad", "", Some((0, 0)), "Always"));
    let err = server.fails("1.33", &["apply", "-f", s(&bad)]);
    assert!(
        err.contains("spec.template.spec.restartPolicy: Unsupported value: \"Always\""),
        "{err}"
    );
}

#[test]
fn failing_job_backs_off_then_fails_at_the_backoff_limit() {
    let server = Server::start();
    let _sim = sim(&server);
    apply(
        &server,
        "bad",
        &job_yaml("bad", "  backoffLimit: 1\n", Some((3, 200)), "Never"),
    );
    let out = server.ok(
        "1.33",
        &["wait", "--for=condition=failed", "job/bad", "--timeout=60s"],
    );
    assert!(out.contains("condition met"), "{out}");
    let job = job_json(&server, "bad");
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let failed = condition(&job, "Failed").expect("Failed");
    assert_eq!(failed["reason"], "BackoffLimitExceeded");
    assert_eq!(
        failed["message"],
        "Job has reached the specified backoff limit"
    );
    assert!(job["status"].get("completionTime").is_none(), "{job}");
    let mut pods = pods_of(&server, "bad");
    assert_eq!(pods.len(), 2, "one pod and one replacement: {pods:?}");
    pods.sort_by_key(|p| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or("")
            .to_string()
    });
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().expect("time")).expect("rfc3339")
    };
    let first_done =
        time(&pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]);
    let second = time(&pods[1]["metadata"]["creationTimestamp"]);
    let gap = (second - first_done).num_seconds();
    assert!(
        (9..=15).contains(&gap),
        "replacement after the 10 s back-off, not {gap} s"
    );
    let table = server.ok("1.33", &["get", "job", "bad"]);
    assert!(table.contains("Failed") && table.contains("0/1"), "{table}");
}

#[test]
fn deadline_suspend_ttl_and_indexed_jobs() {
    let server = Server::start();
    let _sim = sim(&server);
    apply(
        &server,
        "slow",
        &job_yaml(
            "slow",
            "  parallelism: 2\n  completions: 4\n  activeDeadlineSeconds: 3\n",
            None,
            "Never",
        ),
    );
    apply(
        &server,
        "later",
        &job_yaml(
            "later",
            "  suspend: true\n  ttlSecondsAfterFinished: 2\n",
            Some((0, 200)),
            "OnFailure",
        ),
    );
    apply(
        &server,
        "idx",
        &job_yaml(
            "idx",
            "  completionMode: Indexed\n  completions: 3\n  parallelism: 3\n",
            Some((0, 300)),
            "Never",
        ),
    );

    // activeDeadlineSeconds: Failed with DeadlineExceeded, its running pods deleted.
    wait_for(10, "two running pods of slow", || {
        (pods_of(&server, "slow").len() == 2).then_some(())
    });
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=failed",
            "job/slow",
            "--timeout=30s",
        ],
    );
    let job = job_json(&server, "slow");
    assert_eq!(
        condition(&job, "Failed").expect("Failed")["reason"],
        "DeadlineExceeded"
    );
    wait_for(20, "slow's pods deleted", || {
        pods_of(&server, "slow").is_empty().then_some(())
    });
    let job = job_json(&server, "slow");
    assert_eq!(
        job["status"]["failed"], 2,
        "deleted pods count as failed: {job}"
    );

    // Indexed: one pod per index, completedIndexes, the index in env and hostname.
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/idx",
            "--timeout=30s",
        ],
    );
    let job = job_json(&server, "idx");
    assert_eq!(job["status"]["completedIndexes"], "0-2", "{job}");
    assert_eq!(job["status"]["succeeded"], 3);
    let mut indexes: Vec<String> = pods_of(&server, "idx")
        .iter()
        .map(|p| {
            let i = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                .as_str()
                .expect("index")
                .to_string();
            assert_eq!(p["spec"]["hostname"], format!("idx-{i}"));
            let env = &p["spec"]["containers"][0]["env"][0];
            assert_eq!(env["name"], "JOB_COMPLETION_INDEX", "{p}");
            i
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);

    // suspend: no pods, a Suspended condition; resumed, it runs and completes.
    let job = job_json(&server, "later");
    assert!(condition(&job, "Suspended").is_some(), "{job}");
    assert!(job["status"].get("startTime").is_none(), "{job}");
    assert!(pods_of(&server, "later").is_empty());
    assert!(server
        .ok("1.33", &["get", "job", "later"])
        .contains("Suspended"));
    server.ok(
        "1.33",
        &[
            "patch",
            "job",
            "later",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":false}}"#,
        ],
    );
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/later",
            "--timeout=30s",
        ],
    );
    let finished = Instant::now();
    // ttlSecondsAfterFinished: the Job goes 2 s after it finished, its pod with it.
    wait_for(20, "later deleted", || {
        let out = server.kubectl("1.33", &["get", "job", "later"]);
        String::from_utf8_lossy(&out.stderr)
            .contains("NotFound")
            .then_some(())
    });
    assert!(
        finished.elapsed() >= Duration::from_millis(1500),
        "deleted too early"
    );
    wait_for(20, "later's pod deleted", || {
        pods_of(&server, "later").is_empty().then_some(())
    });
}

fn jobs_of(server: &Server, cronjob: &str) -> Vec<Value> {
    let list = get_json(server, &["get", "jobs", "-o", "json"]);
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|j| j["metadata"]["ownerReferences"][0]["name"] == cronjob)
        .collect()
}

fn cronjob_yaml(name: &str, spec: &str, exit: Option<(i32, u64)>) -> String {
    let annotations = match exit {
        Some((code, ms)) => format!("{{\"{EXIT_CODE}\": \"{code}\", \"{RUN_MS}\": \"{ms}\"}}"),
        None => "{}".into(),
    };
    format!(
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {name}\nspec:\n{spec}  jobTemplate:\n    spec:\n      template:\n        metadata:\n          annotations: {annotations}\n        spec:\n          restartPolicy: Never\n          containers:\n          - name: work\n            image: busybox\n"
    )
}

#[test]
fn cronjob_manual_runs_history_limits_and_validation() {
    let server = Server::start();
    let _sim = sim(&server);
    apply(
        &server,
        "nightly",
        &cronjob_yaml(
            "nightly",
            "  schedule: \"0 3 * * *\"\n  timeZone: Europe/Berlin\n  successfulJobsHistoryLimit: 1\n",
            Some((0, 200)),
        ),
    );
    let cj = get_json(&server, &["get", "cronjob", "nightly", "-o", "json"]);
    assert_eq!(cj["spec"]["concurrencyPolicy"], "Allow");
    assert_eq!(cj["spec"]["suspend"], false);
    assert_eq!(cj["spec"]["failedJobsHistoryLimit"], 1);
    let table = server.ok("1.33", &["get", "cronjobs"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("nightly"))
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[1..10],
        [
            "0",
            "3",
            "*",
            "*",
            "*",
            "Europe/Berlin",
            "False",
            "0",
            "<none>"
        ],
        "{table}"
    );

    // Manual runs are Jobs controlled by the CronJob (kubectl 1.31 marks the owner as
    // controller; older ones do not, and such Jobs are not pruned, as in Kubernetes);
    // finished ones beyond the limit go.
    for (i, name) in ["manual-1", "manual-2"].iter().enumerate() {
        server.ok("1.31", &["create", "job", name, "--from=cronjob/nightly"]);
        server.ok(
            "1.33",
            &[
                "wait",
                "--for=condition=complete",
                &format!("job/{name}"),
                "--timeout=30s",
            ],
        );
        let job = job_json(&server, name);
        assert_eq!(
            job["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"],
            "manual"
        );
        assert_eq!(
            job["metadata"]["ownerReferences"][0]["kind"], "CronJob",
            "{i}: {job}"
        );
    }
    wait_for(20, "manual-1 pruned", || {
        let names: Vec<String> = jobs_of(&server, "nightly")
            .iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        (names == ["manual-2"]).then_some(())
    });
    // Jobs it did not create itself: kube's controller warns of them; the pruned one is
    // recorded as deleted.
    describe_showing(
        &server,
        &["cronjob", "nightly"],
        "SuccessfulDelete",
        &[
            "Warning  UnexpectedJob",
            "cronjob-controller  Saw a job that the controller did not create or forgot: manual-1",
            "Normal   SuccessfulDelete",
            "cronjob-controller  Deleted job manual-1",
        ],
    );

    for (spec, msg) in [
        (
            "  schedule: \"61 * * * *\"\n",
            "spec.schedule: Invalid value: \"61 * * * *\"",
        ),
        (
            "  schedule: \"@daily\"\n  timeZone: Mars/Olympus\n",
            "unknown time zone Mars/Olympus",
        ),
        (
            "  schedule: \"TZ=UTC 0 * * * *\"\n",
            "use timeZone field instead",
        ),
    ] {
        let f = server.file("bad-cj.yaml", &cronjob_yaml("bad", spec, None));
        let err = server.fails("1.33", &["apply", "-f", s(&f)]);
        assert!(err.contains(msg), "{err}");
    }
}

#[test]
fn cronjob_runs_every_minute_with_forbid_and_history() {
    let server = Server::start();
    let _sim = sim(&server);
    apply(
        &server,
        "tick",
        &cronjob_yaml(
            "tick",
            "  schedule: \"* * * * *\"\n  successfulJobsHistoryLimit: 1\n",
            Some((0, 200)),
        ),
    );
    apply(
        &server,
        "swap",
        &cronjob_yaml(
            "swap",
            "  schedule: \"* * * * *\"\n  concurrencyPolicy: Replace\n",
            None,
        ),
    );
    apply(
        &server,
        "solo",
        &cronjob_yaml(
            "solo",
            "  schedule: \"* * * * *\"\n  concurrencyPolicy: Forbid\n",
            None,
        ),
    );
    // The first minute: each CronJob creates its Job, named by the scheduled minute.
    let first = wait_for_every(Duration::from_secs(1), 70, "solo's first job", || {
        jobs_of(&server, "solo").into_iter().next()
    });
    let cj = get_json(&server, &["get", "cronjob", "solo", "-o", "json"]);
    let scheduled = chrono::DateTime::parse_from_rfc3339(
        cj["status"]["lastScheduleTime"]
            .as_str()
            .expect("lastScheduleTime"),
    )
    .expect("time");
    let first_name = first["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    assert_eq!(first_name, format!("solo-{}", scheduled.timestamp() / 60));
    assert_eq!(
        cj["status"]["active"][0]["name"],
        first_name.as_str(),
        "{cj}"
    );
    let tick_first = wait_for(15, "tick's first success", || {
        let cj = get_json(&server, &["get", "cronjob", "tick", "-o", "json"]);
        cj["status"]["lastSuccessfulTime"]
            .as_str()
            .map(String::from)
    });

    // The next minute: tick runs again and keeps one finished Job; solo's Job is
    // still running, so Forbid starts none.
    wait_for_every(
        Duration::from_secs(1),
        75,
        "tick's second run, first pruned",
        || {
            let cj = get_json(&server, &["get", "cronjob", "tick", "-o", "json"]);
            let last = cj["status"]["lastSuccessfulTime"]
                .as_str()
                .map(String::from);
            let jobs = jobs_of(&server, "tick");
            (last.is_some_and(|l| l != tick_first) && jobs.len() == 1).then_some(())
        },
    );
    let solo = jobs_of(&server, "solo");
    assert_eq!(solo.len(), 1, "Forbid: {solo:?}");
    // Replace: the running Job of the first minute made way for the second one.
    let swap = wait_for(10, "swap's Job replaced", || {
        let jobs = jobs_of(&server, "swap");
        (jobs.len() == 1 && jobs[0]["metadata"]["name"] != first_name.replace("solo", "swap"))
            .then_some(jobs)
    });
    let cj = get_json(&server, &["get", "cronjob", "swap", "-o", "json"]);
    assert_eq!(
        cj["status"]["active"][0]["name"], swap[0]["metadata"]["name"],
        "{cj}"
    );

    // Once the running Job goes, the missed run starts at once.
    server.ok("1.33", &["delete", "job", &first_name, "--wait=false"]);
    let second = wait_for(20, "solo's missed run", || {
        jobs_of(&server, "solo")
            .into_iter()
            .map(|j| j["metadata"]["name"].as_str().unwrap_or("").to_string())
            .find(|n| *n != first_name)
    });
    assert!(second > first_name, "{second} after {first_name}");
    // The deleted Job's running pod goes too (garbage collector, then its tracking
    // finalizer released).
    wait_for(20, "the deleted Job's pod gone", || {
        pods_of(&server, &first_name).is_empty().then_some(())
    });

    // All of it as the cronjob-controller's Events on each CronJob.
    let first_swap = first_name.replace("solo", "swap");
    // (CronJob, type, reason, start of the message)
    let expect: [(&str, &str, &str, String); 9] = [
        (
            "tick",
            "Normal",
            "SuccessfulCreate",
            "Created job tick-".into(),
        ),
        (
            "tick",
            "Normal",
            "SawCompletedJob",
            "Saw completed job: tick-".into(),
        ),
        (
            "tick",
            "Normal",
            "SuccessfulDelete",
            "Deleted job tick-".into(),
        ),
        (
            "swap",
            "Normal",
            "SuccessfulCreate",
            format!("Created job {first_swap}"),
        ),
        (
            "swap",
            "Normal",
            "SuccessfulDelete",
            format!("Deleted job {first_swap}"),
        ),
        (
            "solo",
            "Normal",
            "SuccessfulCreate",
            format!("Created job {first_name}"),
        ),
        (
            "solo",
            "Normal",
            "JobAlreadyActive",
            "Not starting job because prior execution is running and concurrency policy is Forbid"
                .into(),
        ),
        (
            "solo",
            "Normal",
            "MissingJob",
            format!("Active job went missing: {first_name}"),
        ),
        (
            "solo",
            "Normal",
            "SuccessfulCreate",
            format!("Created job {second}"),
        ),
    ];
    for (cronjob, kind, reason, message) in &expect {
        wait_for(20, &format!("{cronjob}: {reason} {message}"), || {
            let list = get_json(
                &server,
                &[
                    "get",
                    "events",
                    "--field-selector",
                    &format!(
                        "involvedObject.kind=CronJob,involvedObject.name={cronjob},reason={reason}"
                    ),
                    "-o",
                    "json",
                ],
            );
            let events = list["items"].as_array().cloned().unwrap_or_default();
            events
                .iter()
                .any(|e| {
                    e["type"] == *kind
                        && e["source"]["component"] == "cronjob-controller"
                        && e["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with(message.as_str()))
                })
                .then_some(())
        });
    }
    describe_showing(
        &server,
        &["cronjob", "tick"],
        "SawCompletedJob",
        &[", condition: Complete"],
    );
}

#[test]
fn job_runs_a_real_container_to_completion() {
    let server = Server::start_node(12, &[]);
    server.wait_node_ready("node12");
    let yaml = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: real\nspec:\n  completions: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: sh\n        image: localhost/busybox:1.35\n        imagePullPolicy: Never\n        command: [\"sh\", \"-c\", \"exit 0\"]\n";
    apply(&server, "real", yaml);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=complete",
            "job/real",
            "--timeout=90s",
        ],
    );
    let job = job_json(&server, "real");
    assert_eq!(job["status"]["succeeded"], 2, "{job}");
    for p in pods_of(&server, "real") {
        assert_eq!(p["status"]["phase"], "Succeeded", "{p}");
        assert_eq!(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
    }
}
