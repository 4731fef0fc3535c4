//! Air-gap image tarballs as k3s takes them: gzip- and zstd-compressed copies of the
//! busybox test image (made by the real gzip and zstd tools, under their own names) are
//! imported at start and run by pods with `imagePullPolicy: Never`; other files are
//! skipped with the reason, a damaged tarball is reported by name without stopping the
//! others, and a restart does not import unchanged tarballs again.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::agent::{apply, pod_json};
use crate::harness::{s, test_images, wait_for, Server};

/// Writes busybox.tar re-tagged as `name` (its index.json annotations), as a tar
/// compressed by `compressor` (`gzip` or `zstd`) at `to`.
fn retagged(work: &Path, name: &str, compressor: &str, to: &Path) {
    let layout = work.join(name.replace(['/', ':'], "_"));
    std::fs::create_dir_all(&layout).expect("layout dir");
    let run = |cmd: &mut Command| {
        let status = cmd.status().expect("run a tool");
        assert!(status.success(), "{cmd:?} failed");
    };
    run(Command::new("tar")
        .arg("-xf")
        .arg(test_images().join("busybox.tar"))
        .arg("-C")
        .arg(&layout));
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index.json")).expect("json");
    let annotations = &mut index["manifests"][0]["annotations"];
    annotations["io.containerd.image.name"] = name.into();
    annotations["org.opencontainers.image.ref.name"] = name.rsplit(':').next().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).expect("json")).expect("write");
    let tar = work.join(format!("{}.tar", layout.display()));
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .arg("."));
    let out = std::fs::File::create(to).expect("compressed tarball");
    run(Command::new(compressor)
        .args(["-c", s(&tar)])
        .stdout(Stdio::from(out)));
}

/// The lines of `log` that contain every one of `parts`.
fn lines_with(log: &str, parts: &[&str]) -> usize {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Restarts the server and waits until its agent has gone through the air-gap
/// directory; the log from the restart on.
fn restart_and_import(server: &mut Server) -> String {
    let from = server.log().len();
    server.restart();
    wait_for(60, "the agent to import the air-gap images", || {
        let log = server.log().get(from..).unwrap_or_default().to_string();
        (lines_with(&log, &["air-gap images ready"]) > 0).then_some(log)
    })
}

/// Creates pod `name` running `image` (never pulled) and waits until it runs.
fn pod_running(server: &Server, name: &str, image: &str) {
    apply(
        server,
        name,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: Never\n    command: [sleep, '3600']\n"
        ),
    );
    wait_for(60, &format!("pod {name} to run {image}"), || {
        let pod = pod_json(server, name);
        (pod["status"]["phase"] == "Running").then_some(())
    });
}

#[test]
fn compressed_air_gap_tarballs_run_and_are_not_imported_again() {
    let mut server = Server::start_node(31, &[]);
    server.wait_node_ready("node31");
    let images = server.data_dir().join("agent/images");
    let work = tempfile::tempdir().expect("temp dir");
    retagged(
        work.path(),
        "localhost/airgap-gz:1",
        "gzip",
        &images.join("busybox-gz.tar.gz"),
    );
    retagged(
        work.path(),
        "localhost/airgap-zst:1",
        "zstd",
        &images.join("busybox-zst.tar.zst"),
    );
    let gz = std::fs::read(images.join("busybox-gz.tar.gz")).expect("gz");
    std::fs::write(images.join("broken.tar.gz"), &gz[..gz.len() / 2]).expect("broken");
    std::fs::write(images.join("images.txt"), "docker.io/library/nginx:1\n").expect("txt");

    // The next start imports the new tarballs, names the broken one, skips the list.
    let log = restart_and_import(&mut server);
    for tar in ["busybox-gz.tar.gz", "busybox-zst.tar.zst"] {
        assert_eq!(
            lines_with(&log, &["imported image tarball", tar]),
            1,
            "{tar}:\n{log}"
        );
    }
    assert_eq!(
        lines_with(&log, &["image import failed", "broken.tar.gz"]),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &["skipping file", "images.txt", "registry"]),
        1,
        "{log}"
    );
    pod_running(&server, "gz", "localhost/airgap-gz:1");
    pod_running(&server, "zst", "localhost/airgap-zst:1");
    let state_path = server.data_dir().join("agent/image-import.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).expect("state file")).expect("json");
    let recorded = &state["tarballs"];
    assert_eq!(
        recorded["busybox-zst.tar.zst"]["images"][0]["name"], "localhost/airgap-zst:1",
        "{state}"
    );
    assert!(recorded["broken.tar.gz"].is_null(), "{state}");

    // A restart leaves the unchanged tarballs alone; their images still run.
    let log = restart_and_import(&mut server);
    for tar in [
        "busybox-gz.tar.gz",
        "busybox-zst.tar.zst",
        "busybox.tar",
        "pause.tar",
    ] {
        assert_eq!(
            lines_with(&log, &["not imported again", tar]),
            1,
            "{tar}:\n{log}"
        );
    }
    assert_eq!(lines_with(&log, &["imported image tarball"]), 0, "{log}");
    pod_running(&server, "gz-again", "localhost/airgap-gz:1");

    // A changed tarball (new mtime) is imported again.
    let zst = std::fs::File::options()
        .append(true)
        .open(images.join("busybox-zst.tar.zst"))
        .expect("open");
    zst.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .expect("touch");
    drop(zst);
    let log = restart_and_import(&mut server);
    assert_eq!(
        lines_with(&log, &["imported image tarball", "busybox-zst.tar.zst"]),
        1,
        "{log}"
    );
    assert_eq!(
        lines_with(&log, &["not imported again", "busybox-gz.tar.gz"]),
        1,
        "{log}"
    );
}
