//! A CustomResourceDefinition written the way real projects write theirs (cert-manager's
//! Certificate, abridged): it applies, and its objects are served, validated, merged and
//! printed as kube-apiserver does.

use crate::crd::established;
use crate::harness::{get_json, s, Server};

/// A definition written the way cert-manager and Traefik write theirs: descriptions,
/// formats, patterns, `anyOf` int-or-string, keyed lists, CEL rules, embedded maps,
/// a filtered printer column and a `date` one.
const CERTIFICATES: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: certificates.cert-manager.io
  annotations:
    controller-gen.kubebuilder.io/version: v0.16.0
  labels:
    app.kubernetes.io/name: cert-manager
spec:
  group: cert-manager.io
  names:
    kind: Certificate
    listKind: CertificateList
    plural: certificates
    shortNames: [cert, certs]
    singular: certificate
    categories: [cert-manager]
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
    additionalPrinterColumns:
    - jsonPath: .status.conditions[?(@.type=="Ready")].status
      name: Ready
      type: string
    - jsonPath: .spec.secretName
      name: Secret
      type: string
    - jsonPath: .spec.issuerRef.name
      name: Issuer
      priority: 1
      type: string
    - jsonPath: .metadata.creationTimestamp
      description: CreationTimestamp is a timestamp representing the server time.
      name: Age
      type: date
    schema:
      openAPIV3Schema:
        description: A Certificate resource should be created to ensure an up to date and signed X.509 certificate is stored in the Kubernetes Secret resource named in `spec.secretName`.
        type: object
        required: [spec]
        properties:
          apiVersion:
            description: APIVersion defines the versioned schema of this representation of an object.
            type: string
          kind:
            type: string
          metadata:
            type: object
          spec:
            type: object
            required: [issuerRef, secretName]
            properties:
              commonName:
                type: string
                maxLength: 64
              dnsNames:
                type: array
                items:
                  type: string
              duration:
                type: string
                format: duration
              issuerRef:
                type: object
                required: [name]
                properties:
                  group: {type: string}
                  kind: {type: string}
                  name: {type: string}
              secretName:
                type: string
                pattern: ^[a-z0-9.-]+$
              secretTemplate:
                type: object
                properties:
                  annotations:
                    type: object
                    additionalProperties: {type: string}
              port:
                anyOf:
                - type: integer
                - type: string
                x-kubernetes-int-or-string: true
              usages:
                type: array
                items:
                  type: string
                  enum: [signing, digital signature, server auth, client auth]
              keystores:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    create: {type: boolean}
            x-kubernetes-validations:
            - rule: "!has(self.commonName) || size(self.commonName) > 0"
              message: commonName must not be empty
          status:
            type: object
            properties:
              conditions:
                type: array
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [type]
                items:
                  type: object
                  required: [status, type]
                  properties:
                    lastTransitionTime: {type: string, format: date-time}
                    message: {type: string}
                    status:
                      type: string
                      enum: ["True", "False", Unknown]
                    type: {type: string}
              notAfter: {type: string, format: date-time}
"#;

#[test]
fn cert_manager_style_definitions_apply_and_serve() {
    let server = Server::start();
    let v = "1.33";
    let crd = server.file("certificates.yaml", CERTIFICATES);
    server.ok(v, &["apply", "-f", s(&crd)]);
    established(&server, v, &["crd/certificates.cert-manager.io"]);
    let cert = server.file(
        "cert.yaml",
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  secretName: web-tls\n  dnsNames: [web.example.com]\n  port: https\n  usages: [server auth]\n  issuerRef:\n    name: ca\n    kind: ClusterIssuer\n  keystores:\n  - name: jks\n    create: true\n  secretTemplate:\n    annotations:\n      a: b\n",
    );
    server.ok(v, &["apply", "-f", s(&cert)]);
    server.ok(
        v,
        &[
            "patch",
            "certificate",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Ready","status":"True","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#,
        ],
    );
    let table = server.ok(v, &["get", "certs", "-o", "wide"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SECRET", "ISSUER", "AGE"],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(..4),
        Some(&["web", "True", "web-tls", "ca"][..]),
        "{table}"
    );
    let narrow = server.ok(v, &["get", "certificates.cert-manager.io"]);
    assert!(
        !narrow.contains("ISSUER"),
        "priority 1 only with -o wide: {narrow}"
    );
    let listed = server.ok(v, &["get", "cert-manager", "-o", "name"]);
    assert_eq!(listed.trim(), "certificate.cert-manager.io/web");
    let explained = server.ok(v, &["explain", "certificate.spec.issuerRef"]);
    assert!(explained.contains("name"), "{explained}");
    // Server-side apply merges the keyed list by its key.
    let more = server.file(
        "more.yaml",
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  secretName: web-tls\n  issuerRef:\n    name: ca\n  keystores:\n  - name: pkcs12\n    create: false\n",
    );
    server.ok(
        v,
        &[
            "apply",
            "--server-side",
            "--field-manager=other",
            "-f",
            s(&more),
        ],
    );
    let c = get_json(&server, &["get", "cert", "web", "-o", "json"]);
    let names: Vec<&str> = c["spec"]["keystores"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["jks", "pkcs12"], "{c}");
    // An enum value outside the list: 422 naming the field.
    let bad = server.file(
        "bad-cert.yaml",
        "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata:\n  name: bad\nspec:\n  secretName: x\n  issuerRef: {name: ca}\n  usages: [everything]\n",
    );
    let err = server.fails(v, &["apply", "-f", s(&bad)]);
    assert!(
        err.contains("spec.usages[0]: Unsupported value: \"everything\""),
        "{err}"
    );
}
