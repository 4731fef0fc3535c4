//! A busybox pod through CRI end to end: sandbox, container, HTTP over the bridge,
//! ExecSync, the CRI log file, stop and removal; missing images as the agent sees them.

use std::time::{Duration, Instant};

use pikube_runtime::cri::v1;
use pikube_runtime::{BUSYBOX_IMAGE, PAUSE_IMAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{container_config, image_spec, Node};

type RuntimeClient = v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// CRI ContainerStatus of `id` (None when the runtime has no status for it).
async fn container_status(rt: &mut RuntimeClient, id: &str) -> Option<v1::ContainerStatus> {
    rt.container_status(v1::ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
}

/// GET `path` from `ip:port` over plain HTTP/1.0, retrying while the server starts.
async fn http_get(ip: std::net::Ipv4Addr, port: u16, path: &str) -> String {
    let start = Instant::now();
    loop {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
            s.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
                .await?;
            let mut body = String::new();
            s.read_to_string(&mut body).await?;
            Ok::<_, std::io::Error>(body)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(body)) => return body,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "GET http://{ip}:{port}{path}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_pod_serves_http_execs_and_logs() {
    let node = Node::start().await;
    let refs = node.import(true).await;
    assert_eq!(refs, [PAUSE_IMAGE, BUSYBOX_IMAGE]);
    let mut rt = node.cri().runtime();

    let sandbox = node.sandbox_config("web");
    let (pod, ip) = node.run_sandbox(&sandbox).await;

    let cfg = container_config(
        "web",
        BUSYBOX_IMAGE,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo pikube-ok > /www/index.html && echo started && \
             echo to-stderr >&2 && exec httpd -f -p 8080 -h /www",
        ],
    );
    let ctr = node.start_container(&pod, &sandbox, cfg).await;

    // Plain TCP/HTTP from the host to the pod IP over the CNI bridge.
    let body = http_get(ip, 8080, "/index.html").await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.ends_with("pikube-ok\n"), "{body}");

    // ExecSync keeps stdout and the exit code.
    let exec = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo hi; echo oops >&2; exit 3".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(exec.exit_code, 3);
    assert_eq!(exec.stdout, b"hi\n");
    assert_eq!(exec.stderr, b"oops\n");

    // The CRI log file: `<RFC3339Nano> <stream> <F|P> <text>` per line.
    let log_path = std::path::Path::new(&sandbox.log_directory).join("web.log");
    let log = std::fs::read_to_string(&log_path).expect("container log");
    let lines: Vec<(&str, &str, &str, &str)> = log
        .lines()
        .map(|l| {
            let mut parts = l.splitn(4, ' ');
            let mut next = || parts.next().unwrap_or_default();
            (next(), next(), next(), next())
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.1 == "stdout" && l.2 == "F" && l.3 == "started"),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.1 == "stderr" && l.2 == "F" && l.3 == "to-stderr"),
        "{log}"
    );
    for (ts, ..) in &lines {
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T',
            "timestamp {ts:?} in {log}"
        );
    }

    // Stop: the container exits (httpd gets SIGTERM), then everything is removed.
    rt.stop_container(v1::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 5,
    })
    .await
    .expect("StopContainer");
    let status = container_status(&mut rt, &ctr).await.expect("status");
    assert_eq!(status.state, v1::ContainerState::ContainerExited as i32);
    rt.remove_container(v1::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("RemoveContainer");
    node.remove_pod(&pod).await;
    let left = rt
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(left.is_empty(), "{left:?}");
    // The pod IP is gone from the bridge.
    let gone = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((ip, 8080)),
    )
    .await;
    assert!(
        !matches!(gone, Ok(Ok(_))),
        "pod still answers after removal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_is_reported_not_pulled() {
    let node = Node::start().await;
    node.import(false).await;
    // What the agent relies on: ImageStatus of a missing image is OK with no image
    // (not NOT_FOUND), and an imported one is found by its name.
    // (`image_status` fails the test on an error status.)
    assert!(node
        .image_status("localhost/does-not-exist:1")
        .await
        .is_none());
    let pause = node
        .image_status(PAUSE_IMAGE)
        .await
        .expect("imported pause image");
    assert!(
        pause.repo_tags.contains(&PAUSE_IMAGE.to_string()),
        "{pause:?}"
    );

    // Creating a container from a missing image fails (the agent maps this to
    // ErrImagePull / CreateContainerError), and the runtime keeps working.
    let sandbox = node.sandbox_config("missing");
    let (pod, _ip) = node.run_sandbox(&sandbox).await;
    let cfg = container_config("c", "localhost/does-not-exist:1", &["true"]);
    let err = node
        .cri()
        .runtime()
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(cfg),
            sandbox_config: Some(sandbox),
        })
        .await
        .expect_err("CreateContainer with a missing image");
    assert!(err.message().contains("does-not-exist"), "{err}");

    // PullImage tries a registry; here none answers (localhost only), so it fails.
    let pull = tokio::time::timeout(
        Duration::from_secs(60),
        node.cri().images().pull_image(v1::PullImageRequest {
            image: Some(image_spec("localhost/does-not-exist:1")),
            auth: None,
            sandbox_config: None,
        }),
    )
    .await
    .expect("PullImage answers");
    assert!(pull.is_err(), "{pull:?}");
    node.cri()
        .wait_ready(Duration::from_secs(5))
        .await
        .expect("still ready");
}

/// Puts the sandbox and a container config into one pod-wide PID namespace.
fn share_pid_namespace(sandbox: &mut v1::PodSandboxConfig, cfg: &mut v1::ContainerConfig) {
    let pod_pid = || {
        Some(v1::NamespaceOption {
            pid: v1::NamespaceMode::Pod as i32,
            ..Default::default()
        })
    };
    if let Some(linux) = sandbox.linux.as_mut() {
        linux.security_context = Some(v1::LinuxSandboxSecurityContext {
            namespace_options: pod_pid(),
            ..Default::default()
        });
    }
    if let Some(linux) = cfg.linux.as_mut() {
        linux.security_context = Some(v1::LinuxContainerSecurityContext {
            namespace_options: pod_pid(),
            ..Default::default()
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reaps_orphans_and_stops_on_sigterm() {
    let node = Node::start().await;
    node.import(true).await;
    let mut sandbox = node.sandbox_config("shared");
    // An orphaned `sleep` is re-parented to PID 1 of the pod (pause) and must be reaped.
    let mut cfg = container_config(
        "orphans",
        BUSYBOX_IMAGE,
        &["sh", "-c", "sh -c 'sleep 0.2 &'; exec sleep 60"],
    );
    share_pid_namespace(&mut sandbox, &mut cfg);
    let (pod, _ip) = node.run_sandbox(&sandbox).await;
    let ctr = node.start_container(&pod, &sandbox, cfg).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut rt = node.cri().runtime();
    let ps = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["ps".into(), "-o".into(), "pid,stat,comm".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync ps")
        .into_inner();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    let rows: Vec<Vec<&str>> = ps
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r.first() == Some(&"1") && r.get(2) == Some(&"pause")),
        "{ps}"
    );
    assert!(
        !rows
            .iter()
            .any(|r| r.get(1).is_some_and(|s| s.starts_with('Z'))),
        "zombie left:\n{ps}"
    );

    // SIGTERM to pause ends the sandbox (and with it the pod's PID namespace).
    let _ = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["kill".into(), "-TERM".into(), "1".into()],
            timeout: 10,
        })
        .await;
    let start = Instant::now();
    loop {
        let state = container_status(&mut rt, &ctr).await.map(|s| s.state);
        if state == Some(v1::ContainerState::ContainerExited as i32) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "container still {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.remove_pod(&pod).await;
}
