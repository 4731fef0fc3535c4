//! The container runtime seam of pikube's node agent: a CRI (runtime.v1) client over
//! containerd's socket, supervision of a pikube-managed containerd, import of OCI image
//! tarballs, and the CNI config of the node's pod CIDR. Knows nothing of the pikube binary.
