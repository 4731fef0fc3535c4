//! containerd supervision: restart after a crash (pods survive), graceful stop, two
//! instances side by side.

use std::path::Path;
use std::time::{Duration, Instant};

use pikube_runtime::cri::v1;
use pikube_runtime::{Containerd, ContainerdConfig, BUSYBOX_IMAGE};

use crate::harness::Node;

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_after_kill_and_keeps_pods() {
    let mut node = Node::start().await;
    node.import(false).await;
    let sandbox = node.sandbox_config("survivor");
    let (pod, _ip) = node.run_sandbox(&sandbox).await;

    let first = node.containerd().pid().expect("running");
    // SAFETY: kill(2) on the containerd child this test started.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let start = Instant::now();
    let second = loop {
        match node.containerd().pid() {
            Some(p) if p != first => break p,
            _ => {
                assert!(start.elapsed() < Duration::from_secs(15), "not restarted");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The same client reconnects; the pod kept running under its shim.
    node.cri()
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("ready after restart");
    let status = node
        .cri()
        .runtime()
        .pod_sandbox_status(v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod,
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus after restart")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(status.state, v1::PodSandboxState::SandboxReady as i32);

    // Remove the pod while containerd runs, then stop containerd gracefully.
    node.remove_pod(&status.id).await;
    node.stop_containerd().await;
    assert!(
        !process_exists(second),
        "containerd {second} still running after stop"
    );
    assert!(node.cri().version().await.is_err(), "socket still answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_containerds_side_by_side() {
    let (a, b) = tokio::join!(Node::start(), Node::start());
    assert_ne!(a.containerd().pid(), b.containerd().pid());
    a.import(true).await;
    b.import(false).await;
    let (_, ip_a) = a.run_sandbox(&a.sandbox_config("left")).await;
    let (_, ip_b) = b.run_sandbox(&b.sandbox_config("right")).await;
    assert_ne!(ip_a, ip_b);

    // Separate roots: the busybox image exists only where it was imported.
    assert!(a.image_status(BUSYBOX_IMAGE).await.is_some());
    assert!(b.image_status(BUSYBOX_IMAGE).await.is_none());
    // Each lists only its own sandbox.
    for node in [&a, &b] {
        let items = node
            .cri()
            .runtime()
            .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
            .await
            .expect("ListPodSandbox")
            .into_inner()
            .items;
        assert_eq!(items.len(), 1, "{items:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_socket_in_use() {
    let node = Node::start().await;
    let mut cfg =
        ContainerdConfig::new(&node.dir.path().join("other"), &node.dir.path().join("run"));
    cfg.ready_timeout = Duration::from_secs(5);
    let err = Containerd::start(cfg).await.expect_err("socket in use");
    assert!(err.to_string().contains("in use"), "{err}");
    // The running one is unharmed.
    node.cri()
        .wait_ready(Duration::from_secs(5))
        .await
        .expect("still ready");
}
