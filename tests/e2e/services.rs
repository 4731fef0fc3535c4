//! Service address allocation: ClusterIPs and node ports as kubectl users see them.

use std::collections::HashSet;

use crate::harness::{get_json, s, Server};

#[test]
fn concurrent_creates_never_share_an_address_and_a_full_range_says_so() {
    // A /27 holds 30 addresses; the first is the `kubernetes` Service's (no DNS: its
    // `kube-dns` Service would take another).
    let server = Server::start_with(&["--service-cidr", "10.43.0.0/27", "--disable", "dns"]);
    std::thread::scope(|scope| {
        for i in 0..29 {
            let server = &server;
            scope.spawn(move || {
                let name = format!("s{i}");
                server.ok(
                    "1.27",
                    &["create", "service", "clusterip", &name, "--tcp=80"],
                );
            });
        }
    });
    let list = get_json(&server, &["get", "--raw", "/api/v1/services"]);
    let ips: Vec<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["spec"]["clusterIP"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(ips.len(), 30, "{ips:?}");
    let unique: HashSet<&String> = ips.iter().collect();
    assert_eq!(unique.len(), 30, "duplicate ClusterIPs: {ips:?}");
    assert!(ips.iter().all(|ip| ip.starts_with("10.43.0.")), "{ips:?}");

    let err = server.fails(
        "1.27",
        &["create", "service", "clusterip", "one-too-many", "--tcp=80"],
    );
    assert!(err.contains("range 10.43.0.0/27 is full"), "{err}");

    // Deleting a Service frees its address at once.
    let freed = get_json(&server, &["get", "service", "s7", "-o", "json"])["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();
    server.ok("1.33", &["delete", "service", "s7"]);
    let svc = server.file(
        "reuse.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: reuse\nspec:\n  clusterIP: {freed}\n  ports:\n  - port: 80\n"
        ),
    );
    server.ok("1.33", &["create", "-f", s(&svc)]);
    assert_eq!(
        get_json(&server, &["get", "service", "reuse", "-o", "json"])["spec"]["clusterIP"],
        freed.as_str()
    );
}

#[test]
fn cluster_ips_and_node_ports_are_checked_and_kept() {
    let server = Server::start();
    let svc = |name: &str, body: &str| {
        server.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{body}"),
        )
    };
    let create = |f: &std::path::Path| server.ok("1.33", &["create", "-f", s(f)]);
    let create_fails = |f: &std::path::Path| server.fails("1.33", &["create", "-f", s(f)]);

    // An address outside the range, or one already taken, is refused with the reason.
    let err = create_fails(&svc(
        "outside",
        "  clusterIP: 10.99.0.5\n  ports:\n  - port: 80\n",
    ));
    assert!(err.contains("not in the valid range"), "{err}");
    let err = create_fails(&svc(
        "taken",
        "  clusterIP: 10.43.0.1\n  ports:\n  - port: 80\n",
    ));
    assert!(err.contains("provided IP is already allocated"), "{err}");
    // The API server publishes its own address behind `default/kubernetes`.
    let ep = get_json(&server, &["get", "endpoints", "kubernetes", "-o", "json"]);
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "127.0.0.1", "{ep}");
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], server.port, "{ep}");
    let slice = get_json(
        &server,
        &["get", "endpointslice", "kubernetes", "-o", "json"],
    );
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(
        slice["endpoints"][0]["addresses"][0], "127.0.0.1",
        "{slice}"
    );
    let err = create_fails(&svc("noports", "  selector:\n    app: x\n"));
    assert!(err.contains("spec.ports"), "{err}");

    // Defaults, headless, ExternalName.
    create(&svc(
        "web",
        "  selector:\n    app: web\n  ports:\n  - port: 80\n",
    ));
    let web = get_json(&server, &["get", "service", "web", "-o", "json"]);
    assert_eq!(web["spec"]["type"], "ClusterIP");
    assert_eq!(web["spec"]["ports"][0]["protocol"], "TCP");
    assert_eq!(web["spec"]["ports"][0]["targetPort"], 80);
    assert_eq!(web["spec"]["clusterIPs"][0], web["spec"]["clusterIP"]);
    create(&svc(
        "headless",
        "  clusterIP: None\n  selector:\n    app: web\n",
    ));
    assert_eq!(
        get_json(&server, &["get", "service", "headless", "-o", "json"])["spec"]["clusterIP"],
        "None"
    );
    create(&svc(
        "ext",
        "  type: ExternalName\n  externalName: example.org\n",
    ));
    assert!(
        get_json(&server, &["get", "service", "ext", "-o", "json"])["spec"]
            .get("clusterIP")
            .is_none()
    );

    // The ClusterIP cannot change; an update that leaves it out keeps it.
    let ip = web["spec"]["clusterIP"].as_str().expect("ip").to_string();
    let err = server.fails(
        "1.33",
        &[
            "patch",
            "service",
            "web",
            "-p",
            r#"{"spec":{"clusterIP":"10.43.9.9"}}"#,
        ],
    );
    assert!(err.contains("field is immutable"), "{err}");
    server.ok("1.33", &["label", "service", "web", "tier=front"]);
    assert_eq!(
        get_json(&server, &["get", "service", "web", "-o", "json"])["spec"]["clusterIP"],
        ip.as_str()
    );

    // Node ports: allocated in range, kept across updates, freed when the type changes.
    server.ok(
        "1.33",
        &[
            "patch",
            "service",
            "web",
            "-p",
            r#"{"spec":{"type":"NodePort"}}"#,
        ],
    );
    let np = get_json(&server, &["get", "service", "web", "-o", "json"])["spec"]["ports"][0]
        ["nodePort"]
        .as_u64()
        .expect("nodePort allocated");
    assert!((30000..=32767).contains(&np), "{np}");
    server.ok("1.33", &["annotate", "service", "web", "note=kept"]);
    assert_eq!(
        get_json(&server, &["get", "service", "web", "-o", "json"])["spec"]["ports"][0]["nodePort"],
        np
    );
    let err = create_fails(&svc(
        "clash",
        &format!("  type: NodePort\n  ports:\n  - port: 80\n    nodePort: {np}\n"),
    ));
    assert!(err.contains("provided port is already allocated"), "{err}");
    let err = create_fails(&svc(
        "low",
        "  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 80\n",
    ));
    assert!(err.contains("not in the valid range"), "{err}");
    server.ok(
        "1.33",
        &[
            "patch",
            "service",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/type","value":"ClusterIP"},{"op":"remove","path":"/spec/ports/0/nodePort"}]"#,
        ],
    );
    create(&svc(
        "clash",
        &format!("  type: NodePort\n  ports:\n  - port: 80\n    nodePort: {np}\n"),
    ));
}
