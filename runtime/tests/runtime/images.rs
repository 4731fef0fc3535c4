//! Image import into a real containerd: OCI layouts from images/build.sh, a
//! `docker save` archive, the air-gap directory, idempotence.

use std::collections::HashMap;
use std::path::Path;

use pikube_runtime::cri::v1;
use pikube_runtime::{import_dir, import_tarball, BUSYBOX_IMAGE, PAUSE_IMAGE};

use crate::harness::{container_config, test_images, Node};

/// Re-packs busybox.tar's layer and config as a `docker save` archive named
/// `tag`; returns the config digest (the image id CRI reports).
fn docker_archive(from: &Path, tag: &str, to: &Path) -> String {
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
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let config = blob(&config_digest);
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let list = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [tag],
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
    config_digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn air_gap_dir_and_docker_archive_import() {
    let node = Node::start().await;
    let built = test_images();
    let airgap = node.dir.path().join("data/agent/images");
    std::fs::create_dir_all(&airgap).unwrap();
    for f in ["pause.tar", "busybox.tar"] {
        std::fs::copy(built.join(f), airgap.join(f)).unwrap();
    }
    docker_archive(
        &built.join("busybox.tar"),
        "example.com/box:v1",
        &airgap.join("zz-docker.tar"),
    );
    std::fs::write(airgap.join("README.txt"), "not an image").unwrap();

    let state = node.dir.path().join("data/agent/image-import.json");
    let report = import_dir(&node.socket(), &airgap, Some(&state))
        .await
        .expect("import_dir");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let refs = report.imported;
    assert_eq!(refs, [BUSYBOX_IMAGE, PAUSE_IMAGE, "example.com/box:v1"]);
    assert_eq!(report.skipped.len(), 1, "README.txt: {:?}", report.skipped);
    for r in &refs {
        let img = node
            .image_status(r)
            .await
            .unwrap_or_else(|| panic!("{r} not visible"));
        assert!(img.repo_tags.contains(r), "{img:?}");
        assert!(img.size > 0);
    }

    // The next start leaves the unchanged tarballs alone.
    let again = import_dir(&node.socket(), &airgap, Some(&state))
        .await
        .expect("import_dir again");
    assert!(again.imported.is_empty(), "{:?}", again.imported);
    assert_eq!(again.unchanged.len(), 3, "{:?}", again.unchanged);

    // An image removed from containerd is imported again from its unchanged tarball.
    node.cri()
        .images()
        .remove_image(v1::RemoveImageRequest {
            image: Some(v1::ImageSpec {
                image: PAUSE_IMAGE.to_string(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage");
    assert!(node.image_status(PAUSE_IMAGE).await.is_none(), "removed");
    let back = import_dir(&node.socket(), &airgap, Some(&state))
        .await
        .expect("import_dir after a removal");
    assert_eq!(back.imported, [PAUSE_IMAGE]);
    assert_eq!(back.unchanged.len(), 2, "{:?}", back.unchanged);
    assert!(node.image_status(PAUSE_IMAGE).await.is_some(), "back");

    // Importing again is a no-op that returns the same names.
    let again = import_tarball(&node.socket(), &airgap.join("busybox.tar"))
        .await
        .expect("re-import");
    assert_eq!(again, [BUSYBOX_IMAGE]);

    // The docker-archive image runs (CRI unpacks it on first use).
    let sandbox = node.sandbox_config("docker");
    let (pod, _) = node.run_sandbox(&sandbox).await;
    let cfg = container_config("box", "example.com/box:v1", &["sleep", "60"]);
    let ctr = node.start_container(&pod, &sandbox, cfg).await;
    let out = node
        .cri()
        .runtime()
        .exec_sync(v1::ExecSyncRequest {
            container_id: ctr,
            cmd: vec!["cat".into(), "/etc/passwd".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("root:x:0:0"));

    // Re-pointing a name at another image: CRI sees the new image as soon as the
    // import returns.
    let retag = node.dir.path().join("retag.tar");
    let pause_id = docker_archive(&built.join("pause.tar"), "example.com/box:v1", &retag);
    import_tarball(&node.socket(), &retag)
        .await
        .expect("re-tag");
    let img = node
        .image_status("example.com/box:v1")
        .await
        .expect("image");
    assert_eq!(img.id, pause_id);

    // A broken tarball is refused with a clear error, the rest still there; the
    // re-pointed name makes the docker archive's image "gone", so it is imported again.
    std::fs::write(airgap.join("broken.tar"), b"not a tar").unwrap();
    let report = import_dir(&node.socket(), &airgap, Some(&state))
        .await
        .expect("import_dir with a broken tarball");
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    let err = report.failed[0].1.to_string();
    assert!(err.contains("broken.tar"), "{err}");
    assert_eq!(report.imported, ["example.com/box:v1"]);
    assert_eq!(report.unchanged.len(), 2, "{:?}", report.unchanged);
}
