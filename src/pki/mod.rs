//! Certificates and credentials: cluster CA, serving and client certificates, kubeconfig, join tokens.
