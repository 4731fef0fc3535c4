//! Service-account tokens driven by the real kubectl: `kubectl create token` (plain and
//! bound to a pod) issues tokens that authenticate as the service account
//! (`kubectl auth whoami`), and stop doing so once their service account or pod is gone
//! or when tampered with; new pods get the `kube-api-access-*` volume and every namespace
//! the `kube-root-ca.crt` ConfigMap; and a real container finds the token, CA and
//! namespace at the in-cluster path and the API server's address in its environment.

use std::path::PathBuf;

use serde_json::Value;

use crate::harness::{get_json, s, wait_for, Server};

const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn ca_pem(server: &Server) -> String {
    std::fs::read_to_string(server.data_dir().join("server/tls/ca.crt")).expect("CA file")
}

/// A kubeconfig that presents only `token` (no client certificate, which would win).
fn token_kubeconfig(server: &Server, name: &str, token: &str) -> PathBuf {
    let ca = server.data_dir().join("server/tls/ca.crt");
    server.file(
        &format!("{name}.kubeconfig"),
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            server.port,
            s(&ca)
        ),
    )
}

/// `kubectl auth whoami -o json` with `token`: the user info, or None when refused.
pub fn whoami(server: &Server, token: &str) -> Option<Value> {
    let kc = token_kubeconfig(server, "whoami", token);
    let out = std::process::Command::new(crate::harness::kubectl_path("1.33"))
        .args(["--kubeconfig", s(&kc), "auth", "whoami", "-o", "json"])
        .output()
        .expect("run kubectl");
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Unauthorized"), "not a 401: {err}");
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("whoami JSON");
    Some(v["status"]["userInfo"].clone())
}

fn assert_is(user: &Option<Value>, ns: &str, name: &str) {
    let user = user.as_ref().expect("the token is accepted");
    assert_eq!(
        user["username"],
        format!("system:serviceaccount:{ns}:{name}")
    );
    let groups: Vec<&str> = user["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for g in [
        "system:serviceaccounts",
        &format!("system:serviceaccounts:{ns}"),
        "system:authenticated",
    ] {
        assert!(groups.contains(&g), "{g} missing in {groups:?}");
    }
}

fn token_volume(pod: &Value) -> Option<Value> {
    pod["spec"]["volumes"]
        .as_array()?
        .iter()
        .find(|v| {
            v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("kube-api-access-"))
        })
        .cloned()
}

#[test]
fn created_tokens_authenticate_until_their_account_or_pod_is_gone() {
    let server = Server::start();
    for v in ["1.27", "1.33"] {
        let token = server.ok(v, &["create", "token", "default"]);
        assert_is(&whoami(&server, token.trim()), "default", "default");
        // Until RBAC exists a service account may discover the API and ask about
        // itself, nothing more: a pod's token is not an admin credential.
        let kc = token_kubeconfig(&server, "sa", token.trim());
        let out = server
            .kubectl_cmd(v)
            .args(["--kubeconfig", s(&kc), "get", "pods"])
            .output()
            .expect("kubectl");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{v}: {err}");
        assert!(
            err.contains("pods is forbidden: User \"system:serviceaccount:default:default\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""),
            "{v}: {err}"
        );
        let out = server
            .kubectl_cmd(v)
            .args(["--kubeconfig", s(&kc), "auth", "can-i", "get", "secrets"])
            .output()
            .expect("kubectl");
        let answer = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(answer.trim().starts_with("no"), "{v}: {answer}");
    }
    // TokenReview, what webhooks and authenticating proxies ask, answers for it too.
    let token = server.ok("1.33", &["create", "token", "default"]);
    let review = |token: &str| {
        let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview", "spec": {"token": token}});
        let f = server.file("review.json", &body.to_string());
        // (kubectl's client-side validation does not find the kind in the OpenAPI
        // documents yet: the server checks the body anyway.)
        let args = ["create", "-f", s(&f), "--validate=false", "-o", "json"];
        get_json(&server, &args)["status"].clone()
    };
    let status = review(token.trim());
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        "system:serviceaccount:default:default"
    );
    let status = review("not-a-token");
    assert_eq!(status["authenticated"], false, "{status}");
    // Too short a lifetime is refused, as by kube-apiserver.
    let err = server.fails("1.33", &["create", "token", "default", "--duration=60s"]);
    assert!(err.contains("600"), "{err}");

    // A tampered token (another namespace in the claims) is refused.
    let token = server.ok("1.33", &["create", "token", "default"]);
    let parts: Vec<&str> = token.trim().split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let mut forged = parts[1].to_string();
    forged.replace_range(0..1, if forged.starts_with('e') { "f" } else { "e" });
    let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
    assert!(whoami(&server, &tampered).is_none());

    // A deleted service account's tokens stop working, even once the name is reused.
    server.ok("1.33", &["create", "serviceaccount", "robot"]);
    let robot = server.ok("1.33", &["create", "token", "robot", "--duration=1h"]);
    assert_is(&whoami(&server, robot.trim()), "default", "robot");
    server.ok("1.33", &["delete", "serviceaccount", "robot"]);
    assert!(whoami(&server, robot.trim()).is_none());
    server.ok("1.33", &["create", "serviceaccount", "robot"]);
    assert!(whoami(&server, robot.trim()).is_none());

    // A token bound to a pod lasts as long as the pod.
    let pod_yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: holder\nspec:\n  containers:\n  - name: c\n    image: busybox\n";
    let f = server.file("holder.yaml", pod_yaml);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    let pod = get_json(&server, &["get", "pod", "holder", "-o", "json"]);
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    let bound = server.ok(
        "1.33",
        &[
            "create",
            "token",
            "default",
            "--bound-object-kind=Pod",
            "--bound-object-name=holder",
            &format!("--bound-object-uid={uid}"),
        ],
    );
    assert_is(&whoami(&server, bound.trim()), "default", "default");
    server.ok(
        "1.33",
        &["delete", "pod", "holder", "--grace-period=0", "--force"],
    );
    wait_for(20, "the bound token to be refused", || {
        whoami(&server, bound.trim()).is_none().then_some(())
    });
    // No token for a service account that does not exist.
    let err = server.fails("1.33", &["create", "token", "nobody"]);
    assert!(err.contains("not found"), "{err}");
}

/// The `kube-root-ca.crt` ConfigMap of `ns`, when it exists.
fn root_ca_map(server: &Server, ns: &str) -> Option<Value> {
    let args = [
        "get",
        "configmap",
        "kube-root-ca.crt",
        "-n",
        ns,
        "-o",
        "json",
    ];
    let out = server.kubectl("1.33", &args);
    out.status
        .success()
        .then(|| serde_json::from_slice::<Value>(&out.stdout).expect("JSON"))
}

#[test]
fn pods_get_the_token_volume_and_namespaces_the_root_ca() {
    let server = Server::start();
    server.ok("1.33", &["create", "namespace", "team"]);
    let cm = wait_for(20, "kube-root-ca.crt in a new namespace", || {
        root_ca_map(&server, "team")
    });
    assert_eq!(cm["data"]["ca.crt"], ca_pem(&server));
    // Edited, it is put back.
    server.ok(
        "1.33",
        &[
            "patch",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "team",
            "--type=merge",
            "-p",
            "{\"data\":{\"ca.crt\":\"junk\"}}",
        ],
    );
    wait_for(20, "kube-root-ca.crt repaired", || {
        let cm = root_ca_map(&server, "team")?;
        (cm["data"]["ca.crt"] == ca_pem(&server)).then_some(())
    });

    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: team\nspec:\n  initContainers:\n  - name: i\n    image: busybox\n  containers:\n  - name: a\n    image: busybox\n  - name: b\n    image: busybox\n";
    let f = server.file("p.yaml", yaml);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    let pod = get_json(&server, &["get", "pod", "p", "-n", "team", "-o", "json"]);
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let vol = token_volume(&pod).expect("kube-api-access volume");
    let sources = &vol["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3607);
    assert_eq!(sources[0]["serviceAccountToken"]["path"], "token");
    assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
    assert_eq!(sources[1]["configMap"]["items"][0]["path"], "ca.crt");
    assert_eq!(
        sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    for list in ["initContainers", "containers"] {
        for c in pod["spec"][list].as_array().expect("containers") {
            assert!(
                c["volumeMounts"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| {
                        m["name"] == vol["name"]
                            && m["mountPath"] == SA_DIR
                            && m["readOnly"] == true
                    })),
                "{c}"
            );
        }
    }

    // Opting out on the pod, or on its service account.
    let off = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: optout\nspec:\n  automountServiceAccountToken: false\n  containers:\n  - name: a\n    image: busybox\n";
    let f = server.file("optout.yaml", off);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    let pod = get_json(&server, &["get", "pod", "optout", "-o", "json"]);
    assert!(token_volume(&pod).is_none(), "{pod}");
    let sa = "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: quiet\nautomountServiceAccountToken: false\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: quiet\nspec:\n  serviceAccountName: quiet\n  containers:\n  - name: a\n    image: busybox\n";
    let f = server.file("quiet.yaml", sa);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    let pod = get_json(&server, &["get", "pod", "quiet", "-o", "json"]);
    assert_eq!(pod["spec"]["serviceAccountName"], "quiet");
    assert!(token_volume(&pod).is_none(), "{pod}");
}

#[test]
fn a_real_container_reads_its_token_ca_and_namespace() {
    let server = Server::start_node(23, &[]);
    server.wait_node_ready("node23");
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: incluster\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: sh\n    image: localhost/busybox:1.35\n    imagePullPolicy: Never\n    command: [\"sleep\", \"3600\"]\n";
    let f = server.file("incluster.yaml", yaml);
    server.ok("1.33", &["apply", "-f", s(&f)]);
    server.ok(
        "1.33",
        &[
            "wait",
            "--for=condition=Ready",
            "pod/incluster",
            "--timeout=90s",
        ],
    );
    let cat = |file: &str| {
        server.ok(
            "1.33",
            &[
                "exec",
                "incluster",
                "--",
                "cat",
                &format!("{SA_DIR}/{file}"),
            ],
        )
    };
    assert_eq!(cat("namespace"), "default");
    assert_eq!(cat("ca.crt"), ca_pem(&server));
    let token = cat("token");
    let user = whoami(&server, token.trim());
    assert_is(&user, "default", "default");
    // kube-apiserver's extra attributes of a bound token, and the account's uid.
    let user = user.expect("accepted");
    let pod = get_json(&server, &["get", "pod", "incluster", "-o", "json"]);
    let sa = get_json(&server, &["get", "serviceaccount", "default", "-o", "json"]);
    assert_eq!(user["uid"], sa["metadata"]["uid"]);
    let extra = &user["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"][0],
        "incluster"
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"][0],
        pod["metadata"]["uid"]
    );
    assert!(extra["authentication.kubernetes.io/credential-id"][0]
        .as_str()
        .is_some_and(|c| c.starts_with("JTI=")));
    // Mounted read-only.
    let out = server.kubectl(
        "1.33",
        &[
            "exec",
            "incluster",
            "--",
            "sh",
            "-c",
            &format!("echo x > {SA_DIR}/token"),
        ],
    );
    assert!(!out.status.success(), "the token volume is writable");
    // What in-cluster clients use to find the API server.
    let env = server.ok("1.33", &["exec", "incluster", "--", "env"]);
    assert!(
        env.lines()
            .any(|l| l == "KUBERNETES_SERVICE_HOST=10.43.0.1"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "KUBERNETES_SERVICE_PORT=443"),
        "{env}"
    );
    // The pod's token dies with the pod.
    server.ok(
        "1.33",
        &["delete", "pod", "incluster", "--wait=true", "--timeout=60s"],
    );
    assert!(whoami(&server, token.trim()).is_none());
}
