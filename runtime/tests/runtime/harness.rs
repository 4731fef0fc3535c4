//! A throwaway node for one test: a pikube-managed containerd in a temp dir, a CNI
//! network with a unique bridge and pod CIDR, and a cleanup that removes every trace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pikube_runtime::cri::v1;
use pikube_runtime::{cni, CniConfig, Containerd, ContainerdConfig, Cri, Ipv4Cidr};

/// Builds the test images once per test process (images/build.sh is idempotent) into
/// the target dir, and returns that dir.
pub fn test_images() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    BUILT
        .get_or_init(|| {
            // <target>/debug/deps/runtime-… → <target>/debug/pikube-test-images
            let exe = std::env::current_exe().expect("current exe");
            let out = exe
                .parent()
                .and_then(Path::parent)
                .expect("target dir")
                .join("pikube-test-images");
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/build.sh");
            let status = std::process::Command::new("bash")
                .arg(&script)
                .arg(&out)
                .status()
                .expect("run images/build.sh");
            assert!(status.success(), "images/build.sh failed");
            out
        })
        .clone()
}

/// A unique short id for names that must not collide with parallel tests or runs.
fn unique_id() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{:04x}{seq}", std::process::id() & 0xffff)
}

/// Reserves a pod CIDR `10.42.<octet>.0/24` for a test node: one not routed on the
/// machine yet, held by binding the abstract unix socket `pikube-test-10.42.<octet>`,
/// a lock shared with every other test process that vanishes with its holder.
fn reserve_octet() -> (u8, std::os::unix::net::UnixListener) {
    use std::os::linux::net::SocketAddrExt;
    let routes = std::process::Command::new("ip")
        .args(["-4", "-o", "route", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    (200..=254u8)
        .rev()
        .filter(|o| !routes.contains(&format!("10.42.{o}.")))
        .find_map(|o| {
            let name = format!("pikube-test-10.42.{o}");
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).ok()?;
            let lock = std::os::unix::net::UnixListener::bind_addr(&addr).ok()?;
            Some((o, lock))
        })
        .expect("a free 10.42.x.0/24 for the test")
}

/// One containerd + CNI network, removed on drop.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub id: String,
    pub net: String,
    pub bridge: String,
    pub cidr: Ipv4Cidr,
    pub cgroup_parent: String,
    containerd: Option<Containerd>,
    cri: Cri,
    /// Holds the pod CIDR reservation until the node is gone (dropped last).
    _cidr_lock: std::os::unix::net::UnixListener,
}

impl Node {
    /// Starts a containerd whose pods get addresses in a free `10.42.<x>.0/24`, routed
    /// locally to the node's bridge once the first pod runs.
    pub async fn start() -> Node {
        let (octet, cidr_lock) = reserve_octet();
        let id = unique_id();
        let dir = tempfile::Builder::new()
            .prefix("pikube-rt-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mut cfg = ContainerdConfig::new(&dir.path().join("data"), &dir.path().join("run"));
        cfg.log_level = "warn".to_string();
        let net = format!("pikube-rt-{id}");
        let bridge = format!("pkrt{id}");
        let cidr: Ipv4Cidr = format!("10.42.{octet}.0/24").parse().expect("cidr");
        let mut cni_cfg = CniConfig::new(cidr);
        cni_cfg.name = net.clone();
        cni_cfg.bridge = bridge.clone();
        cni::write(&cfg.cni_conf_dir, &cni_cfg).expect("write CNI config");
        let containerd = Containerd::start(cfg).await.expect("start containerd");
        let cri = containerd.cri().clone();
        Node {
            dir,
            cgroup_parent: format!("/pikube-rt-{id}"),
            id,
            net,
            bridge,
            cidr,
            containerd: Some(containerd),
            cri,
            _cidr_lock: cidr_lock,
        }
    }

    pub fn cri(&self) -> &Cri {
        &self.cri
    }

    pub fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("containerd running")
    }

    /// Stops containerd gracefully (the test of `Containerd::stop`).
    pub async fn stop_containerd(&mut self) {
        if let Some(c) = self.containerd.take() {
            c.stop().await;
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/containerd/containerd.sock")
    }

    /// Imports pause.tar (and busybox.tar when `busybox`) from the built test images.
    pub async fn import(&self, busybox: bool) -> Vec<String> {
        let images = test_images();
        let mut refs = pikube_runtime::import_tarball(&self.socket(), &images.join("pause.tar"))
            .await
            .expect("import pause");
        if busybox {
            refs.extend(
                pikube_runtime::import_tarball(&self.socket(), &images.join("busybox.tar"))
                    .await
                    .expect("import busybox"),
            );
        }
        refs
    }

    /// A pod sandbox config in this node's cgroup parent, logging under the temp dir.
    pub fn sandbox_config(&self, name: &str) -> v1::PodSandboxConfig {
        let uid = format!("{}-{name}", self.id);
        v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: name.to_string(),
                uid: uid.clone(),
                namespace: "default".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self
                .dir
                .path()
                .join("pods")
                .join(&uid)
                .to_string_lossy()
                .into_owned(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Runs a sandbox and returns (id, pod IP).
    pub async fn run_sandbox(&self, cfg: &v1::PodSandboxConfig) -> (String, Ipv4Addr) {
        let id = self
            .cri
            .runtime()
            .run_pod_sandbox(v1::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox")
            .into_inner()
            .pod_sandbox_id;
        let status = self
            .cri
            .runtime()
            .pod_sandbox_status(v1::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .expect("sandbox status");
        let ip: Ipv4Addr = status
            .network
            .expect("sandbox network")
            .ip
            .parse()
            .expect("pod IPv4");
        assert!(self.cidr.contains(ip), "pod IP {ip} outside {}", self.cidr);
        (id, ip)
    }
}

/// A container config for `image` running `command`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(v1::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A CRI image spec naming `image`.
pub fn image_spec(image: &str) -> v1::ImageSpec {
    v1::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

impl Node {
    /// CreateContainer + StartContainer in `pod`; returns the container id.
    pub async fn start_container(
        &self,
        pod: &str,
        sandbox: &v1::PodSandboxConfig,
        cfg: v1::ContainerConfig,
    ) -> String {
        let mut rt = self.cri.runtime();
        let id = rt
            .create_container(v1::CreateContainerRequest {
                pod_sandbox_id: pod.to_string(),
                config: Some(cfg),
                sandbox_config: Some(sandbox.clone()),
            })
            .await
            .expect("CreateContainer")
            .into_inner()
            .container_id;
        rt.start_container(v1::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
        id
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub async fn remove_pod(&self, pod: &str) {
        remove_pod(&self.cri, pod)
            .await
            .unwrap_or_else(|e| panic!("remove sandbox {pod}: {e}"));
    }

    /// CRI ImageStatus: the image when the runtime has it.
    pub async fn image_status(&self, image: &str) -> Option<v1::Image> {
        self.cri
            .images()
            .image_status(v1::ImageStatusRequest {
                image: Some(image_spec(image)),
                verbose: false,
            })
            .await
            .expect("ImageStatus")
            .into_inner()
            .image
    }
}

async fn remove_pod(cri: &Cri, pod: &str) -> Result<(), tonic::Status> {
    let mut rt = cri.runtime();
    rt.stop_pod_sandbox(v1::StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await?;
    rt.remove_pod_sandbox(v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    })
    .await?;
    Ok(())
}

impl Drop for Node {
    fn drop(&mut self) {
        let socket = self.socket();
        // The test's runtime may be blocked in this drop: clean up on a fresh one.
        let cleaned = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(60), remove_sandboxes(&socket)).await
            })
        })
        .join();
        if !matches!(cleaned, Ok(Ok(()))) {
            eprintln!(
                "cleanup: removing sandboxes of {} timed out or panicked",
                self.id
            );
        }
        // Kills containerd (SIGKILL) if the test did not stop it.
        drop(self.containerd.take());
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
        unmount_under(self.dir.path());
        if let Err(e) = pikube_runtime::cgroups::remove(&self.cgroup_parent) {
            eprintln!("cleanup: {e}");
        }
        remove_cni_state(&self.net);
    }
}

async fn remove_sandboxes(socket: &Path) {
    let Ok(cri) = Cri::connect(&socket.to_string_lossy()).await else {
        return;
    };
    let Ok(list) = cri
        .runtime()
        .list_pod_sandbox(v1::ListPodSandboxRequest { filter: None })
        .await
    else {
        return;
    };
    for sb in list.into_inner().items {
        let _ = remove_pod(&cri, &sb.id).await;
    }
}

/// Lazily unmounts every mount point under `root`, deepest first.
fn unmount_under(root: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(root))
        .map(str::to_string)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .args(["-l", &p])
            .status();
    }
}

/// Deletes libcni's cached results and host-local's leases for the network.
fn remove_cni_state(net: &str) {
    let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(net));
    if let Ok(results) = std::fs::read_dir("/var/lib/cni/results") {
        for r in results.flatten() {
            if r.file_name()
                .to_string_lossy()
                .starts_with(&format!("{net}-"))
            {
                let _ = std::fs::remove_file(r.path());
            }
        }
    }
}
