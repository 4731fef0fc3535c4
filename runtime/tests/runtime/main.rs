//! Integration tests of pikube-runtime against a real, pikube-managed containerd. They
//! need root, containerd, runc, the CNI plugins, gcc and busybox-static (as CI has).
//! Each test runs its own containerd in a temp dir with its own bridge, pod CIDR and
//! cgroup parent, and cleans everything up in `Drop`.

mod harness;
mod images;
mod pods;
mod supervise;
