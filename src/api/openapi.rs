//! OpenAPI v2 and v3 documents built from k8s-openapi's schemas plus Kubernetes extensions.
