//! Image import into a real containerd: OCI layouts from images/build.sh, a
//! `docker save` archive, the air-gap directory, idempotence.

use std::collections::HashMap;
use std::path::Path;

use pikube_runtime::cri::v1;
use pikube_runtime::{import_dir, import_tarball, BUSYBOX_IMAGE, PAUSE_IMAGE};

use crate::harness::{test_images, Node};

async fn image_status(node: &Node, image: &str) -> Option<v1::Image> {
    node.cri()
        .images()
        .image_status(v1::ImageStatusRequest {
            image: Some(v1::ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image
}

/// Re-packs busybox.tar's layer and config as a `docker save` archive named
/// `example.com/box:v1`.
fn docker_archive(from: &Path, to: &Path) {
    let mut src = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    for e in src.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut buf).unwrap();
        files.insert(name, buf);
    }
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob =
        |d: &str| files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(mdigest)).unwrap();
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let list = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": ["example.com/box:v1"],
        "Layers": ["abc/layer.tar"],
    }]);
    let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
    for (name, data) in [
        ("manifest.json", serde_json::to_vec(&list).unwrap()),
        ("config.json", config),
        ("abc/layer.tar", layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        out.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    out.finish().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn air_gap_dir_and_docker_archive_import() {
    let node = Node::start(248).await;
    let built = test_images();
    let airgap = node.dir.path().join("data/agent/images");
    std::fs::create_dir_all(&airgap).unwrap();
    for f in ["pause.tar", "busybox.tar"] {
        std::fs::copy(built.join(f), airgap.join(f)).unwrap();
    }
    docker_archive(&built.join("busybox.tar"), &airgap.join("zz-docker.tar"));
    std::fs::write(airgap.join("README.txt"), "not an image").unwrap();

    let refs = import_dir(&node.socket(), &airgap)
        .await
        .expect("import_dir");
    assert_eq!(refs, [BUSYBOX_IMAGE, PAUSE_IMAGE, "example.com/box:v1"]);
    for r in &refs {
        let img = image_status(&node, r)
            .await
            .unwrap_or_else(|| panic!("{r} not visible"));
        assert!(img.repo_tags.contains(r), "{img:?}");
        assert!(img.size > 0);
    }

    // Importing again is a no-op that returns the same names.
    let again = import_tarball(&node.socket(), &airgap.join("busybox.tar"))
        .await
        .expect("re-import");
    assert_eq!(again, [BUSYBOX_IMAGE]);

    // The docker-archive image runs (CRI unpacks it on first use).
    let sandbox = node.sandbox_config("docker");
    let (pod, _) = node.run_sandbox(&sandbox).await;
    let mut rt = node.cri().runtime();
    let ctr = rt
        .create_container(v1::CreateContainerRequest {
            pod_sandbox_id: pod,
            config: Some(v1::ContainerConfig {
                metadata: Some(v1::ContainerMetadata {
                    name: "box".into(),
                    attempt: 0,
                }),
                image: Some(v1::ImageSpec {
                    image: "example.com/box:v1".into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "60".into()],
                log_path: "box.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox),
        })
        .await
        .expect("CreateContainer from the docker archive")
        .into_inner()
        .container_id;
    rt.start_container(v1::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("StartContainer");
    let out = rt
        .exec_sync(v1::ExecSyncRequest {
            container_id: ctr,
            cmd: vec!["cat".into(), "/etc/passwd".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("root:x:0:0"));

    // A broken tarball is refused with a clear error, the rest still imported.
    std::fs::write(airgap.join("broken.tar"), b"not a tar").unwrap();
    let err = import_dir(&node.socket(), &airgap)
        .await
        .expect_err("broken tarball");
    assert!(err.to_string().contains("broken.tar"), "{err}");
}
