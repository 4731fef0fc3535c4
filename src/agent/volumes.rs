//! Pod volumes on the node: emptyDir (on disk, or tmpfs for `medium: Memory`), hostPath,
//! configMap, secret, downwardAPI and projected (configMap, secret, downwardAPI and
//! serviceAccountToken sources), persistentVolumeClaim (the bound volume's hostPath or
//! local directory),
//! written the way kubelet's atomic writer does (a timestamped directory behind a `..data`
//! link, swapped in one rename) so containers never see a half-written update; plus the
//! pod's managed `/etc/hosts`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Secret, Volume, VolumeProjection,
};
use kube::{Api, Client, ResourceExt};
use pikube_runtime::cri::v1 as cri;

use super::env::{field_value, resource_value, ConfigError, EnvContext};

/// Files of a projected volume: relative path → (contents, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// Where a pod's files live: `<root>/<uid>`.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

fn volume_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(plugin).join(name)
}

fn relative_ok(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !p.starts_with("..")
}

/// Writes `files` into `dir` atomically; returns whether anything changed.
pub fn write_atomic(dir: &Path, files: &Files) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let data = dir.join("..data");
    let current = std::fs::read_link(&data).ok();
    if let Some(cur) = &current {
        let cur = dir.join(cur);
        let same = files.iter().all(|(name, (bytes, mode))| {
            let p = cur.join(name);
            std::fs::read(&p).is_ok_and(|b| &b == bytes)
                && std::fs::metadata(&p).is_ok_and(|m| m.permissions().mode() & 0o7777 == *mode)
        }) && count_files(&cur) == files.len();
        if same {
            return Ok(false);
        }
    }
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for (name, (bytes, mode)) in files {
        let p = fresh.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|k| k.split('/').next().map(String::from))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("..") {
            if name != "..data" && name != stamp {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        } else if !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

fn items(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
    out: &mut Files,
) -> Result<(), ConfigError> {
    match items {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), (v.clone(), mode));
            }
        }
        Some(list) => {
            for it in list {
                if !relative_ok(&it.path) {
                    return Err(ConfigError(format!("invalid path {:?} in {what}", it.path)));
                }
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(
                            it.path.clone(),
                            (v.clone(), it.mode.map_or(mode, |m| m as u32)),
                        );
                    }
                    None if optional => {}
                    None => {
                        return Err(ConfigError(format!(
                            "configmap references non-existent config key: {}",
                            it.key
                        )))
                    }
                }
            }
        }
    }
    Ok(())
}

/// The keys of ConfigMap `name` (data and binaryData); None when it is missing and
/// `optional`.
async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    match super::env::config_map(&api, name).await? {
        Some(cm) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            Ok(Some(data))
        }
        None if optional => Ok(None),
        None => Err(ConfigError(format!("configmap \"{name}\" not found"))),
    }
}

/// The keys of Secret `name`; None when it is missing and `optional`.
async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    match super::env::secret(&api, name).await? {
        Some(s) => {
            let mut data: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in s.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            Ok(Some(data))
        }
        None if optional => Ok(None),
        None => Err(ConfigError(format!("secret \"{name}\" not found"))),
    }
}

fn downward_files(
    ctx: &EnvContext<'_>,
    pod: &Pod,
    list: &[DownwardAPIVolumeFile],
    mode: u32,
    out: &mut Files,
) -> Result<(), ConfigError> {
    for f in list {
        if !relative_ok(&f.path) {
            return Err(ConfigError(format!(
                "invalid downwardAPI path {:?}",
                f.path
            )));
        }
        let value = if let Some(r) = &f.field_ref {
            field_value(pod, &r.field_path, ctx.host_ip, ctx.pod_ip)?
        } else if let Some(r) = &f.resource_field_ref {
            let name = r.container_name.clone().unwrap_or_default();
            let c = pod
                .spec
                .iter()
                .flat_map(|s| s.containers.iter())
                .find(|c| c.name == name)
                .ok_or_else(|| ConfigError(format!("container {name:?} not found")))?;
            resource_value(
                c,
                &r.resource,
                r.divisor.as_ref().map(|d| d.0.as_str()),
                ctx.node_cpu_millis,
                ctx.node_memory,
            )?
        } else {
            continue;
        };
        out.insert(
            f.path.clone(),
            (value.into_bytes(), f.mode.map_or(mode, |m| m as u32)),
        );
    }
    Ok(())
}

async fn projection_files(
    ctx: &EnvContext<'_>,
    pod: &Pod,
    source: &VolumeProjection,
    mode: u32,
    out: &mut Files,
) -> Result<(), ConfigError> {
    let ns = pod.namespace().unwrap_or_default();
    if let Some(cm) = &source.config_map {
        let optional = cm.optional == Some(true);
        if let Some(data) = config_map_data(ctx.client, &ns, &cm.name, optional).await? {
            items(&data, cm.items.as_ref(), mode, "configMap", optional, out)?;
        }
    }
    if let Some(s) = &source.secret {
        let optional = s.optional == Some(true);
        if let Some(data) = secret_data(ctx.client, &ns, &s.name, optional).await? {
            items(&data, s.items.as_ref(), mode, "secret", optional, out)?;
        }
    }
    if let Some(d) = &source.downward_api {
        downward_files(ctx, pod, d.items.as_deref().unwrap_or_default(), mode, out)?;
    }
    if let Some(t) = &source.service_account_token {
        if !relative_ok(&t.path) {
            return Err(ConfigError(format!(
                "invalid serviceAccountToken path {:?}",
                t.path
            )));
        }
        let token = ctx.tokens.token(ctx.client, pod, t).await?;
        out.insert(t.path.clone(), (token.into_bytes(), mode));
    }
    Ok(())
}

/// Makes one volume ready on disk and returns its host path. Content volumes are
/// rewritten (atomically) when their source changed.
pub async fn prepare(
    ctx: &EnvContext<'_>,
    pod: &Pod,
    pod_dir: &Path,
    v: &Volume,
) -> Result<PathBuf, ConfigError> {
    let ns = pod.namespace().unwrap_or_default();
    let io = |e: std::io::Error| ConfigError(format!("volume {:?}: {e}", v.name));
    let mut files = Files::new();
    let (dir, content) = if let Some(e) = &v.empty_dir {
        let dir = volume_dir(pod_dir, "kubernetes.io~empty-dir", &v.name);
        std::fs::create_dir_all(&dir).map_err(io)?;
        if e.medium.as_deref() == Some("Memory") {
            mount_tmpfs(&dir, e.size_limit.as_ref().map(|q| q.0.as_str())).await?;
        }
        (dir, false)
    } else if let Some(h) = &v.host_path {
        return host_path(&h.path, h.type_.as_deref().unwrap_or("")).map_err(io);
    } else if let Some(c) = &v.persistent_volume_claim {
        return claim_path(ctx.client, &ns, &c.claim_name).await;
    } else if let Some(cm) = &v.config_map {
        let optional = cm.optional == Some(true);
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        if let Some(data) = config_map_data(ctx.client, &ns, &cm.name, optional).await? {
            items(
                &data,
                cm.items.as_ref(),
                mode,
                "configMap",
                optional,
                &mut files,
            )?;
        }
        (
            volume_dir(pod_dir, "kubernetes.io~configmap", &v.name),
            true,
        )
    } else if let Some(s) = &v.secret {
        let optional = s.optional == Some(true);
        let mode = s.default_mode.map_or(0o644, |m| m as u32);
        let name = s.secret_name.clone().unwrap_or_default();
        if let Some(data) = secret_data(ctx.client, &ns, &name, optional).await? {
            items(
                &data,
                s.items.as_ref(),
                mode,
                "secret",
                optional,
                &mut files,
            )?;
        }
        (volume_dir(pod_dir, "kubernetes.io~secret", &v.name), true)
    } else if let Some(d) = &v.downward_api {
        let mode = d.default_mode.map_or(0o644, |m| m as u32);
        downward_files(
            ctx,
            pod,
            d.items.as_deref().unwrap_or_default(),
            mode,
            &mut files,
        )?;
        (
            volume_dir(pod_dir, "kubernetes.io~downward-api", &v.name),
            true,
        )
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.map_or(0o644, |m| m as u32);
        for source in p.sources.iter().flatten() {
            projection_files(ctx, pod, source, mode, &mut files).await?;
        }
        (
            volume_dir(pod_dir, "kubernetes.io~projected", &v.name),
            true,
        )
    } else {
        return Err(ConfigError(format!(
            "volume {:?} has a type this node does not support",
            v.name
        )));
    };
    if content {
        let d = dir.clone();
        tokio::task::spawn_blocking(move || write_atomic(&d, &files))
            .await
            .map_err(|e| ConfigError(e.to_string()))?
            .map_err(io)?;
    }
    Ok(dir)
}

/// The host directory of claim `name`'s volume: the claim must be Bound, its volume
/// bound to it and a `hostPath` or `local` volume (what the local-path provisioner and
/// hand-made node volumes are). Errors carry the kubelet's messages.
async fn claim_path(client: &Client, ns: &str, name: &str) -> Result<PathBuf, ConfigError> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| ConfigError(format!("persistentvolumeclaim {name:?} not found")))?;
    if pvc.metadata.deletion_timestamp.is_some() {
        return Err(ConfigError(format!(
            "can't start pod because PVC {ns}/{name} is being deleted"
        )));
    }
    let phase = pvc
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let volume = pvc
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    if phase != "Bound" || volume.is_empty() {
        return Err(ConfigError(format!(
            "PVC {ns}/{name} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume:?})"
        )));
    }
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get_opt(&volume)
        .await?
        .ok_or_else(|| ConfigError(format!("persistentvolume {volume:?} not found")))?;
    // A local-path volume's directory is made writable for any container user (as k3s's
    // provisioner makes it), whether this mount or the node's storage loop creates it.
    let local_path = pv.metadata.annotations.as_ref().is_some_and(|a| {
        a.contains_key(crate::controllers::persistentvolume::provisioner::VOLUME_NODE)
    });
    let spec = pv.spec.unwrap_or_default();
    if spec.claim_ref.as_ref().and_then(|r| r.uid.as_deref()) != pvc.metadata.uid.as_deref() {
        return Err(ConfigError(format!(
            "volume {volume:?} is not bound to claim {ns}/{name}"
        )));
    }
    let (path, kind) = match (&spec.host_path, &spec.local) {
        (Some(h), _) => (h.path.clone(), h.type_.clone().unwrap_or_default()),
        (None, Some(l)) => (l.path.clone(), String::new()),
        (None, None) => {
            return Err(ConfigError(format!(
                "volume {volume:?} has a type this node does not support"
            )))
        }
    };
    let checked = tokio::task::spawn_blocking(move || {
        if local_path {
            super::storage::create_open_dir(Path::new(&path))?;
        }
        let p = host_path(&path, &kind)?;
        std::fs::metadata(&p)?;
        Ok::<_, std::io::Error>(p)
    })
    .await
    .map_err(|e| ConfigError(e.to_string()))?;
    checked.map_err(|e| ConfigError(format!("volume {volume:?}: {e}")))
}

fn host_path(path: &str, kind: &str) -> std::io::Result<PathBuf> {
    use std::io::{Error, ErrorKind};
    let p = PathBuf::from(path);
    let meta = std::fs::metadata(&p);
    let bad = |what: &str| {
        Err(Error::new(
            ErrorKind::NotFound,
            format!("hostPath type check failed: {path} is not {what}"),
        ))
    };
    match kind {
        "DirectoryOrCreate" if meta.is_err() => std::fs::create_dir_all(&p)?,
        "FileOrCreate" if meta.is_err() => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create(&p)?;
        }
        "Directory" | "DirectoryOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => {
            return bad("a directory")
        }
        "File" | "FileOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_file()) => {
            return bad("a file")
        }
        "Socket" | "CharDevice" | "BlockDevice" if meta.is_err() => return bad(kind),
        _ => {}
    }
    Ok(p)
}

async fn mount_tmpfs(dir: &Path, size: Option<&str>) -> Result<(), ConfigError> {
    let mounted = tokio::fs::read_to_string("/proc/self/mounts")
        .await
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&*dir.to_string_lossy()));
    if mounted {
        return Ok(());
    }
    let mut opts = "mode=0777".to_string();
    if let Some(bytes) = size.and_then(crate::scheduler::quantity::bytes) {
        opts.push_str(&format!(",size={bytes}"));
    }
    let out = tokio::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &opts, "tmpfs"])
        .arg(dir)
        .output()
        .await
        .map_err(|e| ConfigError(format!("cannot run mount: {e}")))?;
    if !out.status.success() {
        return Err(ConfigError(format!(
            "cannot mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Unmounts whatever is mounted below `dir` and removes it (a pod that is gone).
pub async fn remove_pod_dir(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let mounts = tokio::fs::read_to_string("/proc/self/mounts")
        .await
        .unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = tokio::process::Command::new("umount").arg(t).status().await;
    }
    let _ = tokio::fs::remove_dir_all(dir).await;
}

/// The pod's managed /etc/hosts (kubelet's format).
pub fn etc_hosts(pod: &Pod, pod_ip: &str, domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let host = spec.hostname.clone().unwrap_or_else(|| pod.name_any());
    if !pod_ip.is_empty() {
        match &spec.subdomain {
            Some(sub) if !sub.is_empty() => out.push_str(&format!(
                "{pod_ip}\t{host}.{sub}.{}.svc.{domain}\t{host}\n",
                pod.namespace().unwrap_or_default()
            )),
            _ => out.push_str(&format!("{pod_ip}\t{host}\n")),
        }
    }
    for alias in spec.host_aliases.iter().flatten() {
        out.push_str(&format!(
            "\n# Entries added by HostAliases.\n{}\t{}\n",
            alias.ip,
            alias.hostnames.clone().unwrap_or_default().join("\t")
        ));
    }
    out
}

/// The CRI mounts of a container: its volumeMounts resolved against `volumes`
/// (name → host dir), plus the managed /etc/hosts.
pub fn mounts(
    c: &k8s_openapi::api::core::v1::Container,
    pod: &Pod,
    volumes: &BTreeMap<String, PathBuf>,
    hosts_file: Option<&Path>,
) -> Result<Vec<cri::Mount>, ConfigError> {
    let spec = pod.spec.clone().unwrap_or_default();
    let read_only_kind: BTreeMap<&str, bool> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let ro = v.config_map.is_some()
                || v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.read_only == Some(true))
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some();
            (v.name.as_str(), ro)
        })
        .collect();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let base = volumes.get(&m.name).ok_or_else(|| {
            ConfigError(format!(
                "cannot find volume {:?} to mount into container {:?}",
                m.name, c.name
            ))
        })?;
        let host = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) if relative_ok(sub) => {
                let p = base.join(sub);
                if std::fs::symlink_metadata(&p).is_err() {
                    std::fs::create_dir_all(&p)
                        .map_err(|e| ConfigError(format!("subPath {sub:?}: {e}")))?;
                }
                p
            }
            Some(sub) => return Err(ConfigError(format!("invalid subPath {sub:?}"))),
            None => base.clone(),
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host.to_string_lossy().into_owned(),
            readonly: m.read_only.unwrap_or(false)
                || read_only_kind
                    .get(m.name.as_str())
                    .copied()
                    .unwrap_or(false),
            ..Default::default()
        });
    }
    if let Some(h) = hosts_file {
        if !out.iter().any(|m| m.container_path == "/etc/hosts") {
            out.push(cri::Mount {
                container_path: "/etc/hosts".into(),
                host_path: h.to_string_lossy().into_owned(),
                ..Default::default()
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_swap_the_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new();
        files.insert("a".into(), (b"1".to_vec(), 0o644));
        files.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        assert!(write_atomic(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(dir.path().join("sub/b")).unwrap(), b"2");
        assert!(
            !write_atomic(dir.path(), &files).unwrap(),
            "unchanged content is not rewritten"
        );
        files.remove("sub/b");
        files.insert("a".into(), (b"3".to_vec(), 0o644));
        assert!(write_atomic(dir.path(), &files).unwrap());
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"3");
        assert!(
            std::fs::symlink_metadata(dir.path().join("sub")).is_err(),
            "stale links go"
        );
        let stamps = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("..2"))
            .count();
        assert_eq!(stamps, 1, "old versions are removed");
    }

    #[test]
    fn rejects_escaping_paths() {
        assert!(relative_ok("a/b"));
        assert!(!relative_ok("../x"));
        assert!(!relative_ok("/etc/passwd"));
        assert!(!relative_ok("a/../../b"));
        assert!(!relative_ok(""));
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop"},
            "spec": {"containers": [], "subdomain": "web",
                "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]},
        }))
        .unwrap();
        let hosts = etc_hosts(&pod, "10.42.0.7", "cluster.local");
        assert!(hosts.contains("10.42.0.7\tweb-0.web.shop.svc.cluster.local\tweb-0\n"));
        assert!(hosts.contains("10.1.2.3\tfoo.local\tbar.local\n"));
    }
}
