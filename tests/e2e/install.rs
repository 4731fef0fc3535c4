//! install.sh on this machine (root): the freshly built binary installed into temp dirs
//! (`INSTALL_PIKUBE_*` paths, no systemd needed), started by hand the way the script says,
//! a real node running a Deployment, an upgrade in place, and the uninstall script
//! removing what was installed and nothing else. Also the download with its sha256
//! check, the agent's service and the memory cgroup check.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{free_dual_port, free_port, s, test_images, wait_for};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh")
}

/// The temp dirs of one installation.
struct Layout {
    dir: tempfile::TempDir,
}

impl Layout {
    fn new() -> Layout {
        Layout {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bin(&self) -> PathBuf {
        self.path("bin/pikube")
    }

    /// install.sh with this layout's paths, `exec` as INSTALL_PIKUBE_EXEC and `env`.
    fn install(&self, exec: &str, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg(script())
            .env("INSTALL_PIKUBE_BIN_DIR", self.path("bin"))
            .env("INSTALL_PIKUBE_SYSTEMD_DIR", self.path("systemd"))
            .env("INSTALL_PIKUBE_CONFIG_DIR", self.path("etc"))
            .env("INSTALL_PIKUBE_LOG_FILE", self.path("pikube.log"))
            .env("INSTALL_PIKUBE_SKIP_ENABLE", "true")
            .env("INSTALL_PIKUBE_EXEC", exec)
            .env_remove("PIKUBE_URL")
            .env_remove("PIKUBE_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run install.sh")
    }

    /// Runs the install and asserts success; its stdout.
    fn installed(&self, exec: &str, env: &[(&str, &str)]) -> String {
        let out = self.install(exec, env);
        assert!(
            out.status.success(),
            "install.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }
}

/// Runs the uninstall script at `path` (if it is still there) when dropped, so a failed
/// test leaves no pikube process, container or mount behind.
struct Uninstall(PathBuf);

impl Drop for Uninstall {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = Command::new("sh").arg(&self.0).output();
        }
    }
}

/// Flags that keep an installation to itself on a shared test machine: its own dirs,
/// the test's own cgroup and bridge names (`index`), no service proxy (host-wide nftables
/// table and bridge), cluster DNS on a free loopback port rather than the host's `lo`.
fn own_flags(l: &Layout, index: u8) -> String {
    format!(
        "--data-dir {} --run-dir {} --cgroup-root /pikube-test-{index} --cni-bridge pkt{index} \
         --disable proxy --dns-listen-address 127.0.0.1:{}",
        l.path("data").display(),
        l.path("run").display(),
        free_dual_port()
    )
}

/// Index of the tests here that start no node: their uninstall scripts' `pikube killall`
/// looks at names nothing uses.
const NO_NODE: u8 = 17;

fn same_file(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .args(["-s", s(a), s(b)])
        .status()
        .is_ok_and(|st| st.success())
}

/// Asserts that shellcheck finds nothing in the script at `path`.
fn shellcheck_clean(path: &Path) {
    let check = Command::new("shellcheck")
        .arg(path)
        .output()
        .expect("shellcheck (Debian package shellcheck)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Processes whose executable is `bin`, or mention `dir` on their command lines.
fn processes_of(bin: &Path, dir: &Path) -> Vec<String> {
    let exe = bin.display().to_string();
    let dir = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let link = std::fs::read_link(e.path().join("exe"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let cmdline = std::fs::read(e.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            (link == exe || link == format!("{exe} (deleted)") || cmdline.contains(&dir))
                .then_some(cmdline)
        })
        .collect()
}

fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

fn kubectl(l: &Layout, args: &[&str]) -> Output {
    Command::new(l.bin())
        .arg("kubectl")
        .args(args)
        .arg("--cache-dir")
        .arg(l.path("kubectl-cache"))
        .env("KUBECONFIG", l.path("etc/pikube.yaml"))
        .output()
        .expect("run pikube kubectl")
}

#[test]
fn install_sh_installs_runs_upgrades_and_uninstalls_a_node() {
    let l = Layout::new();
    // What the uninstall must leave alone: files next to everything it removes.
    for f in ["sentinel", "bin/sentinel", "systemd/other.conf"] {
        std::fs::create_dir_all(l.path(f).parent().expect("parent")).expect("dir");
        std::fs::write(l.path(f), "keep me").expect("sentinel");
    }
    let images = l.path("data/agent/images");
    std::fs::create_dir_all(&images).expect("images dir");
    for tar in ["pause.tar", "busybox.tar"] {
        std::fs::copy(test_images().join(tar), images.join(tar)).expect("copy test image");
    }
    std::fs::write(l.path("resolv.conf"), "").expect("resolv.conf");
    let exec = format!(
        "{} --bind-address 127.0.0.1 --https-listen-port {} --agent-port {} \
         --node-name install16 --node-ip 127.0.0.1 --cluster-cidr 10.42.116.0/24 \
         --resolv-conf {}",
        own_flags(&l, 16),
        free_port(),
        free_port(),
        l.path("resolv.conf").display(),
    );
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pikube"));
    let uninstall = l.path("bin/pikube-uninstall.sh");
    let _cleanup = Uninstall(uninstall.clone());

    // The packages are detected (CI installs them), not installed again.
    let out = l.installed(&exec, &[("INSTALL_PIKUBE_BIN_PATH", s(&built))]);
    assert!(out.contains("System packages: all installed"), "{out}");
    assert!(same_file(&built, &l.bin()), "the local binary is installed");
    let unit = l.read("systemd/pikube.service");
    let etc = l.path("etc");
    assert!(
        unit.contains(&format!(
            "ExecStart={} server --write-kubeconfig {}/pikube.yaml --config {}/config.yaml {exec}",
            l.bin().display(),
            etc.display(),
            etc.display()
        )),
        "{unit}"
    );
    for line in [
        "KillMode=process",
        "Delegate=yes",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(unit.contains(&format!(
        "EnvironmentFile=-{}",
        l.path("systemd/pikube.service.env").display()
    )));
    assert_eq!(mode(&l.path("systemd/pikube.service.env")), 0o600);
    assert_eq!(mode(&uninstall), 0o755);
    shellcheck_clean(&uninstall);

    // No systemd here: start pikube the way the script says.
    let start = out
        .lines()
        .skip_while(|l| !l.contains("Start it by hand"))
        .nth(1)
        .unwrap_or_else(|| panic!("no command to start pikube by hand:\n{out}"))
        .trim()
        .to_string();
    assert!(start.ends_with('&'), "{start}");
    let st = Command::new("sh")
        .args(["-c", &start])
        .status()
        .expect("sh");
    assert!(st.success());
    let log = || std::fs::read_to_string(l.path("pikube.log")).unwrap_or_default();
    wait_for(90, "node install16 to be Ready", || {
        kubectl(
            &l,
            &[
                "wait",
                "--for=condition=Ready",
                "node/install16",
                "--timeout=10s",
            ],
        )
        .status
        .success()
        .then_some(())
    });
    let deployment = l.path("bb.yaml");
    std::fs::write(
        &deployment,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: bb}
spec:
  replicas: 1
  selector: {matchLabels: {app: bb}}
  template:
    metadata: {labels: {app: bb}}
    spec:
      containers:
      - {name: bb, image: localhost/busybox:1.35, command: [sleep, "3600"]}
"#,
    )
    .expect("write deployment");
    let out = kubectl(&l, &["apply", "--validate=false", "-f", s(&deployment)]);
    assert!(out.status.success(), "{out:?}");
    let out = kubectl(
        &l,
        &["rollout", "status", "deployment/bb", "--timeout=120s"],
    );
    assert!(
        out.status.success(),
        "busybox Deployment: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );

    // Again, while pikube runs: the binary is replaced in place (a new file, so the
    // running one is untouched) and the server keeps serving.
    let inode = std::fs::metadata(l.bin()).expect("bin").ino();
    let out = l.installed(
        &exec,
        &[
            ("INSTALL_PIKUBE_BIN_PATH", s(&built)),
            ("INSTALL_PIKUBE_SKIP_APT", "true"),
        ],
    );
    assert!(out.contains("Skipping the system packages"), "{out}");
    assert_ne!(std::fs::metadata(l.bin()).expect("bin").ino(), inode);
    assert!(same_file(&built, &l.bin()));
    assert_eq!(l.read("systemd/pikube.service"), unit, "same unit again");
    let pods = kubectl(&l, &["get", "pods", "-l", "app=bb", "-o", "name"]);
    assert!(String::from_utf8_lossy(&pods.stdout).contains("pod/bb-"));

    let out = Command::new("sh")
        .arg(&uninstall)
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        processes_of(&l.bin(), l.dir.path()),
        Vec::<String>::new(),
        "no pikube, containerd, shim or container left"
    );
    assert_eq!(mounts_below(l.dir.path()), Vec::<String>::new());
    let link = Command::new("ip")
        .args(["link", "show", "pkt16"])
        .output()
        .expect("ip");
    assert!(!link.status.success(), "the pods' bridge is gone");
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("pikube-test-16"))
        .chain([PathBuf::from("/sys/fs/cgroup/pikube-test-16")]);
    for cg in cgroups {
        assert!(!cg.exists(), "{} is gone", cg.display());
    }
    for gone in [
        "bin/pikube",
        "bin/pikube-uninstall.sh",
        "systemd/pikube.service",
        "systemd/pikube.service.env",
        "etc",
        "data",
        "run",
        "pikube.log",
    ] {
        assert!(!l.path(gone).exists(), "{gone} is removed");
    }
    for kept in ["sentinel", "bin/sentinel", "systemd/other.conf"] {
        assert_eq!(l.read(kept), "keep me", "{kept} is kept");
    }
    assert!(l.path("resolv.conf").exists());
}

#[test]
fn install_sh_downloads_checks_the_sha256_and_installs_agents() {
    let l = Layout::new();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        _ => "armhf",
    };
    let release = l.path("releases/download/v9.9.9");
    std::fs::create_dir_all(&release).expect("release dir");
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pikube"));
    std::fs::copy(&built, release.join(format!("pikube-{arch}"))).expect("copy binary");
    let sums = release.join(format!("sha256sum-{arch}.txt"));
    let url = format!("file://{}", l.path("releases").display());
    let exec = own_flags(&l, NO_NODE);
    let env = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("INSTALL_PIKUBE_URL", url.clone()),
            ("INSTALL_PIKUBE_VERSION", "v9.9.9".to_string()),
            ("INSTALL_PIKUBE_SKIP_APT", "true".to_string()),
            ("PIKUBE_URL", "https://192.0.2.1:6443".to_string()),
        ];
        v.extend(extra.iter().cloned());
        v
    };
    let run = |extra: &[(&'static str, String)]| {
        let e = env(extra);
        let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        l.install(&exec, &pairs)
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // A wrong checksum: refused, nothing installed.
    std::fs::write(&sums, format!("{}  pikube-{arch}\n", "0".repeat(64))).expect("sums");
    let out = run(&[("PIKUBE_TOKEN", "K10abc::server:x".into())]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));
    assert!(!l.bin().exists() && !l.path("systemd").exists());

    // An agent needs both the URL and a token, and an https URL.
    let out = run(&[]);
    assert!(
        stderr(&out).contains("an agent needs PIKUBE_TOKEN"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        ("PIKUBE_URL", "http://192.0.2.1:6443".into()),
        ("PIKUBE_TOKEN", "t".into()),
    ]);
    assert!(stderr(&out).contains("must be an https:// URL"));
    // The uninstall script deletes the data dir: never `/` or a relative path.
    for bad in ["/", "data"] {
        let out = l.install(
            &format!("--data-dir {bad}"),
            &[("INSTALL_PIKUBE_SKIP_APT", "true")],
        );
        assert!(
            stderr(&out).contains("must be absolute paths other than /"),
            "{}",
            stderr(&out)
        );
    }

    let sum = Command::new("sha256sum")
        .arg(release.join(format!("pikube-{arch}")))
        .output()
        .expect("sha256sum");
    let sum = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    std::fs::write(&sums, format!("{sum}  pikube-{arch}\n")).expect("sums");
    let out = run(&[("PIKUBE_TOKEN", "K10abc::server:it's".into())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("Verified sha256 {sum}")), "{text}");
    assert!(same_file(&built, &l.bin()));
    let unit = l.read("systemd/pikube-agent.service");
    assert!(
        unit.contains(&format!(
            "ExecStart={} agent --config {}/config.yaml {exec}",
            l.bin().display(),
            l.path("etc").display(),
        )),
        "{unit}"
    );
    // The URL and token are in the env file (0600), where `pikube agent` reads them.
    let env_file = l.path("systemd/pikube-agent.service.env");
    assert_eq!(mode(&env_file), 0o600);
    let sourced = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "set -a; . '{}'; echo \"$PIKUBE_URL $PIKUBE_TOKEN\"",
            env_file.display()
        ))
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&sourced.stdout).trim(),
        "https://192.0.2.1:6443 K10abc::server:it's"
    );
    let uninstall = l.path("bin/pikube-agent-uninstall.sh");
    assert!(uninstall.exists());
    let out = Command::new("sh")
        .arg(&uninstall)
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!l.bin().exists() && !env_file.exists() && !uninstall.exists());
    assert!(l.path("releases").exists());
}

#[test]
fn install_sh_stops_at_a_missing_memory_cgroup_with_the_raspberry_pi_fix() {
    let l = Layout::new();
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pikube"));
    let fake = |controllers: Option<&str>, v1_enabled: &str| {
        let root = tempfile::tempdir().expect("temp dir");
        let cg = root.path().join("cgroup");
        let proc_dir = root.path().join("proc");
        std::fs::create_dir_all(&cg).expect("dir");
        std::fs::create_dir_all(proc_dir.join("device-tree")).expect("dir");
        if let Some(c) = controllers {
            std::fs::write(cg.join("cgroup.controllers"), c).expect("controllers");
        }
        std::fs::write(
            proc_dir.join("cgroups"),
            format!("#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t2\t1\t1\nmemory\t0\t1\t{v1_enabled}\n"),
        )
        .expect("cgroups");
        std::fs::write(
            proc_dir.join("device-tree/model"),
            "Raspberry Pi 4 Model B Rev 1.4\0",
        )
        .expect("model");
        root
    };
    let run = |root: &tempfile::TempDir, exec: &str| {
        l.install(
            exec,
            &[
                ("INSTALL_PIKUBE_BIN_PATH", s(&built)),
                ("INSTALL_PIKUBE_SKIP_APT", "true"),
                ("INSTALL_PIKUBE_CGROUP_DIR", s(&root.path().join("cgroup"))),
                ("INSTALL_PIKUBE_PROC_DIR", s(&root.path().join("proc"))),
            ],
        )
    };
    for (controllers, v1) in [(Some("cpuset cpu io pids\n"), "1"), (None, "0")] {
        let root = fake(controllers, v1);
        let out = run(&root, &own_flags(&l, NO_NODE));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("Raspberry Pi OS (Raspberry Pi 4 Model B Rev 1.4)")
                && err.contains("cmdline.txt")
                && err.contains("s/$/ cgroup_memory=1 cgroup_enable=memory/"),
            "{err}"
        );
        assert!(!l.bin().exists(), "nothing installed");
        // A server without a node does not need it.
        let out = run(
            &root,
            &format!("--disable-agent {}", own_flags(&l, NO_NODE)),
        );
        assert!(out.status.success(), "{out:?}");
        let out = Command::new("sh")
            .arg(l.path("bin/pikube-uninstall.sh"))
            .output()
            .expect("uninstall");
        assert!(out.status.success(), "{out:?}");
    }
    for (controllers, v1) in [(Some("cpuset cpu memory pids\n"), "0"), (None, "1")] {
        let root = fake(controllers, v1);
        let out = run(&root, &own_flags(&l, NO_NODE));
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Memory cgroup: enabled"));
        let out = Command::new("sh")
            .arg(l.path("bin/pikube-uninstall.sh"))
            .output()
            .expect("uninstall");
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn install_sh_refuses_system_dirs_and_uninstall_removes_only_its_own() {
    let l = Layout::new();
    let built = PathBuf::from(env!("CARGO_BIN_EXE_pikube"));
    let base = [
        ("INSTALL_PIKUBE_BIN_PATH", s(&built)),
        ("INSTALL_PIKUBE_SKIP_APT", "true"),
    ];
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    std::os::unix::fs::symlink("/var", l.path("var-link")).expect("symlink");
    let root = l.dir.path().display().to_string();
    let link = l.path("var-link").display().to_string();
    // What the uninstall script would have deleted: refused, one line, nothing installed.
    for (exec, config_dir, why) in [
        (
            "--data-dir /var",
            None,
            "the data dir (--data-dir) /var is a system directory",
        ),
        ("--data-dir /var/", None, "/var is a system directory"),
        ("--data-dir //usr", None, "/usr is a system directory"),
        (
            "--data-dir /var/lib/pikube/../..",
            None,
            "/var is a system directory",
        ),
        (
            &format!("--data-dir {link}"),
            None,
            "/var is a system directory",
        ),
        ("--data-dir /home/pi", None, "/home/pi is a home directory"),
        (
            "--run-dir /run",
            None,
            "the run dir (--run-dir) /run is a system directory",
        ),
        (
            "",
            Some("/etc"),
            "the config dir (INSTALL_PIKUBE_CONFIG_DIR) /etc is a system directory",
        ),
        ("", Some("/usr/local"), "/usr/local is a system directory"),
        (&format!("--data-dir {root}"), None, "holds"),
    ] {
        let mut env = base.to_vec();
        if let Some(dir) = config_dir {
            env.push(("INSTALL_PIKUBE_CONFIG_DIR", dir));
        }
        let out = l.install(&format!("--disable-agent {exec}"), &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{exec} {config_dir:?}: {err}");
        assert!(err.contains(why), "{exec} {config_dir:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            !l.bin().exists() && !l.path("systemd").exists(),
            "{exec}: nothing installed"
        );
    }
    assert!(Path::new("/var/lib").exists() && Path::new("/usr/local").exists());

    // A data dir that held someone else's files is used but not claimed: the uninstall
    // script leaves it (and says so) and removes the directories install.sh made.
    let data = l.path("shared");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("precious.txt"), "keep me").expect("precious");
    let exec = format!(
        "--disable-agent --data-dir {} --run-dir {} --cgroup-root /pikube-test-{NO_NODE} --cni-bridge pkt{NO_NODE}",
        data.display(),
        l.path("run").display()
    );
    let out = l.install(&exec, &base);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds precious.txt: not marking it as pikube's"),
        "{}",
        stderr(&out)
    );
    assert!(!data.join(".pikube-owned").exists());
    for marked in ["run/.pikube-owned", "etc/.pikube-owned"] {
        assert!(l.path(marked).exists(), "{marked}");
    }
    let unit = l.read("systemd/pikube.service");
    assert!(
        unit.contains(&format!(
            "ExecStartPre=-/usr/bin/touch \"{}/.pikube-owned\"",
            l.path("run").display()
        )),
        "the run dir (a tmpfs) is marked again at every start:\n{unit}"
    );
    let uninstall = l.path("bin/pikube-uninstall.sh");
    shellcheck_clean(&uninstall);
    let out = Command::new("sh")
        .arg(&uninstall)
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "Leaving {}: it has no .pikube-owned",
            data.display()
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(l.read("shared/precious.txt"), "keep me");
    for gone in ["run", "etc", "bin/pikube", "systemd/pikube.service"] {
        assert!(!l.path(gone).exists(), "{gone} is removed");
    }
}
