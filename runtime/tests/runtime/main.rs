//! Integration tests of pikube-runtime against a real, pikube-managed containerd (root).
