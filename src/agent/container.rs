//! A container as CRI wants it: image, command and args (with `$(VAR)` expanded),
//! environment, mounts, log path, cgroup limits from `resources` and the basics of
//! `securityContext`.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use pikube_runtime::cri::v1 as cri;

use super::env::expand;
use super::sandbox::{pod_labels, LABEL_CONTAINER_NAME};
use crate::scheduler::quantity;

/// Annotation on a container: its restart count (the CRI attempt).
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Annotation on a container: where it writes its termination message.
pub const ANNOTATION_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";

/// CFS period used for cpu limits (kubelet's default, 100 ms).
const CPU_PERIOD: i64 = 100_000;
/// Smallest cpu.shares the kernel accepts.
const MIN_SHARES: i64 = 2;

/// The cgroup limits of a container's `resources` (cpu.shares from requests, CFS quota
/// from limits, memory limit), as kubelet computes them.
pub fn resources(c: &Container) -> cri::LinuxContainerResources {
    let res = c.resources.clone().unwrap_or_default();
    let get = |list: &Option<
        std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               name: &str| {
        list.as_ref().and_then(|l| l.get(name)).map(|q| q.0.clone())
    };
    let limit_cpu = get(&res.limits, "cpu").and_then(|q| quantity::cpu_millis(&q));
    // Requests default to limits when only limits are set.
    let request_cpu = get(&res.requests, "cpu")
        .and_then(|q| quantity::cpu_millis(&q))
        .or(limit_cpu);
    let shares = match request_cpu {
        Some(m) => (m * 1024 / 1000).max(MIN_SHARES),
        None => MIN_SHARES,
    };
    let quota = limit_cpu
        .map(|m| (m * CPU_PERIOD / 1000).max(1000))
        .unwrap_or(0);
    let memory = get(&res.limits, "memory")
        .and_then(|q| quantity::bytes(&q))
        .unwrap_or(0);
    cri::LinuxContainerResources {
        cpu_period: if quota > 0 { CPU_PERIOD } else { 0 },
        cpu_quota: quota,
        cpu_shares: shares,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

/// The container's security settings, with the pod's as defaults.
fn security(pod: &Pod, c: &Container) -> cri::LinuxContainerSecurityContext {
    let psc = pod
        .spec
        .as_ref()
        .and_then(|s| s.security_context.clone())
        .unwrap_or_default();
    let sc: SecurityContext = c.security_context.clone().unwrap_or_default();
    let caps = sc.capabilities.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: caps.add.unwrap_or_default(),
            drop_capabilities: caps.drop.unwrap_or_default(),
            ..Default::default()
        }),
        privileged: sc.privileged.unwrap_or(false),
        namespace_options: Some(super::sandbox::namespace_options(&spec)),
        run_as_user: sc
            .run_as_user
            .or(psc.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: sc
            .run_as_group
            .or(psc.run_as_group)
            .map(|value| cri::Int64Value { value }),
        readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups: psc.supplemental_groups.unwrap_or_default(),
        no_new_privs: sc.allow_privilege_escalation == Some(false),
        ..Default::default()
    }
}

/// Everything a container's config is built from.
pub struct Parts<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container spec.
    pub container: &'a Container,
    /// The CRI attempt (= restart count).
    pub attempt: u32,
    /// Resolved environment.
    pub env: &'a [(String, String)],
    /// Volume mounts, resolved to host paths.
    pub mounts: Vec<cri::Mount>,
    /// The node's name.
    pub node: &'a str,
}

/// The CRI config of a container.
pub fn config(p: Parts<'_>) -> cri::ContainerConfig {
    let c = p.container;
    let mut labels = pod_labels(p.node, p.pod);
    labels.retain(|k, _| k.starts_with("io.kubernetes.") || k.starts_with("io.pikube."));
    labels.insert(LABEL_CONTAINER_NAME.into(), c.name.clone());
    let termination_path = c
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    let annotations: HashMap<String, String> = [
        (ANNOTATION_RESTART_COUNT.to_string(), p.attempt.to_string()),
        (
            ANNOTATION_TERMINATION_MESSAGE_PATH.to_string(),
            termination_path,
        ),
    ]
    .into_iter()
    .collect();
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: c.name.clone(),
            attempt: p.attempt,
        }),
        image: Some(cri::ImageSpec {
            image: c.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command: c
            .command
            .iter()
            .flatten()
            .map(|s| expand(s, p.env))
            .collect(),
        args: c.args.iter().flatten().map(|s| expand(s, p.env)).collect(),
        working_dir: c.working_dir.clone().unwrap_or_default(),
        envs: p
            .env
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts: p.mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", c.name, p.attempt),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        tty: c.tty.unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(resources(c)),
            security_context: Some(security(p.pod, c)),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_become_cgroup_limits() {
        let c: Container = serde_json::from_value(json!({
            "name": "c",
            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m"}},
        }))
        .unwrap();
        let r = resources(&c);
        assert_eq!(r.cpu_shares, 256);
        assert_eq!(r.cpu_quota, 50_000);
        assert_eq!(r.cpu_period, 100_000);
        assert_eq!(r.memory_limit_in_bytes, 128 << 20);
        let none: Container = serde_json::from_value(json!({"name": "c"})).unwrap();
        let r = resources(&none);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes),
            (2, 0, 0)
        );
    }

    #[test]
    fn config_expands_command_and_keeps_identity() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"app": "x"}},
            "spec": {"containers": [{
                "name": "main", "image": "localhost/busybox:1.35",
                "command": ["sh", "-c"], "args": ["echo $(GREETING)"],
                "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": true,
                    "capabilities": {"add": ["NET_ADMIN"]}},
            }]},
        }))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let env = vec![("GREETING".to_string(), "hello".to_string())];
        let cfg = config(Parts {
            pod: &pod,
            container: c,
            attempt: 3,
            env: &env,
            mounts: Vec::new(),
            node: "n1",
        });
        assert_eq!(cfg.args, vec!["echo hello"]);
        assert_eq!(cfg.log_path, "main/3.log");
        assert_eq!(cfg.labels[LABEL_CONTAINER_NAME], "main");
        assert!(!cfg.labels.contains_key("app"));
        assert_eq!(cfg.annotations[ANNOTATION_RESTART_COUNT], "3");
        let sc = cfg.linux.unwrap().security_context.unwrap();
        assert_eq!(sc.run_as_user.unwrap().value, 1000);
        assert!(sc.readonly_rootfs);
        assert_eq!(sc.capabilities.unwrap().add_capabilities, vec!["NET_ADMIN"]);
    }
}
