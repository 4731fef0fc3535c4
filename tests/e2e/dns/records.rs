//! The records of the Kubernetes DNS specification, the search path of a pod, and how
//! fast changes show.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{start_dns, wait_for};
use crate::harness::{s, Server};
use crate::sim::{Sim, SimNode};

const WORKLOAD: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec:
  ports: [{port: 81, protocol: UDP}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.org}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, labels: {app: db}}
spec:
  containers: [{name: c, image: busybox}]
";

fn jsonpath(server: &Server, what: &[&str], path: &str) -> String {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    let path = format!("jsonpath={path}");
    args.extend_from_slice(&["-o", &path]);
    server.ok("1.27", &args).trim().to_string()
}

#[test]
fn dns_answers_every_record_type_over_udp_and_tcp() {
    let dns = start_dns(|_| String::new());
    let server = &dns.server;
    let _sim = Sim::start(server, vec![SimNode::new("dns-node")], Duration::ZERO);
    let file = server.file("workload.yaml", WORKLOAD);
    server.ok("1.27", &["create", "-f", s(&file), "--validate=false"]);
    let web_ip = jsonpath(server, &["service", "web"], "{.spec.clusterIP}");
    let pod_ip = |name: &str| {
        wait_for(30, "a pod IP", || {
            Some(jsonpath(server, &["pod", name], "{.status.podIP}")).filter(|ip| !ip.is_empty())
        })
    };
    let (ip0, ip1) = (pod_ip("db-0"), pod_ip("db-1"));
    let mut db_ips = vec![ip0.clone(), ip1.clone()];
    db_ips.sort();
    wait_for(10, "the headless service's endpoints", || {
        (dns.dig(false, &["db.default.svc.cluster.local"]).rdata("A") == db_ips).then_some(())
    });

    // ClusterIP service: A, SRV for the named port only, no AAAA (NODATA).
    let r = dns.both(&["web.default.svc.cluster.local", "A"]);
    assert_eq!(r.rdata("A"), [web_ip.as_str()]);
    assert!(r.flags.contains("aa"), "{}", r.text);
    assert_eq!(
        r.answers[0].split_whitespace().nth(1),
        Some("5"),
        "TTL 5: {}",
        r.text
    );
    let r = dns.both(&["_http._tcp.web.default.svc.cluster.local", "SRV"]);
    assert_eq!(r.rdata("SRV"), ["0 100 80 web.default.svc.cluster.local."]);
    assert!(
        r.additional.iter().any(|l| l.ends_with(&web_ip)),
        "{}",
        r.text
    );
    let r = dns.both(&["_udp.plain.default.svc.cluster.local", "SRV"]);
    assert_eq!(r.status, "NXDOMAIN", "unnamed port: {}", r.text);
    let r = dns.both(&["web.default.svc.cluster.local", "AAAA"]);
    assert_eq!(
        (r.status.as_str(), r.answers.len()),
        ("NOERROR", 0),
        "{}",
        r.text
    );

    // Headless: ready pod IPs, hostnames, SRV per endpoint.
    assert_eq!(
        dns.both(&["db.default.svc.cluster.local"]).rdata("A"),
        db_ips
    );
    assert_eq!(
        dns.both(&["db-0.db.default.svc.cluster.local"]).rdata("A"),
        [ip0.as_str()]
    );
    let dashed = ip1.replace('.', "-");
    assert_eq!(
        dns.both(&[&format!("{dashed}.db.default.svc.cluster.local")])
            .rdata("A"),
        [ip1.as_str()]
    );
    let r = dns.both(&["_pg._tcp.db.default.svc.cluster.local", "SRV"]);
    let mut want = vec![
        "0 50 5432 db-0.db.default.svc.cluster.local.".to_string(),
        format!("0 50 5432 {dashed}.db.default.svc.cluster.local."),
    ];
    want.sort();
    assert_eq!(r.rdata("SRV"), want);

    // ExternalName: a CNAME (its target cannot be resolved: no upstream here).
    let r = dns.both(&["ext.default.svc.cluster.local", "CNAME"]);
    assert_eq!(r.rdata("CNAME"), ["www.example.org."]);

    // Pod records, only for pods that exist in that namespace.
    let pod_name = format!("{}.default.pod.cluster.local", ip0.replace('.', "-"));
    assert_eq!(dns.both(&[&pod_name]).rdata("A"), [ip0.as_str()]);
    let other_ns = format!("{}.kube-system.pod.cluster.local", ip0.replace('.', "-"));
    assert_eq!(dns.both(&[&other_ns]).status, "NXDOMAIN");

    // PTR for service and endpoint IPs.
    assert_eq!(
        dns.both(&["-x", &web_ip]).rdata("PTR"),
        ["web.default.svc.cluster.local."]
    );
    assert_eq!(
        dns.both(&["-x", &ip0]).rdata("PTR"),
        ["db-0.db.default.svc.cluster.local."]
    );

    // NXDOMAIN versus NODATA, with the SOA for negative caching.
    for name in [
        "nope.default.svc.cluster.local",
        "web.default.default.svc.cluster.local",
    ] {
        let r = dns.both(&[name]);
        assert_eq!(r.status, "NXDOMAIN", "{name}: {}", r.text);
        assert!(
            r.text
                .lines()
                .any(|l| l.contains("SOA") && l.contains("ns.dns.cluster.local.")),
            "{}",
            r.text
        );
    }
    for name in [
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ] {
        let r = dns.both(&[name, "A"]);
        assert_eq!(
            (r.status.as_str(), r.answers.len()),
            ("NOERROR", 0),
            "{name}"
        );
    }

    // Schema version, and the kube-dns Service that the bootstrap created.
    assert_eq!(
        dns.both(&["dns-version.cluster.local", "TXT"]).rdata("TXT"),
        ["\"1.1.0\""]
    );
    assert_eq!(
        dns.both(&["kube-dns.kube-system.svc.cluster.local"])
            .rdata("A"),
        ["10.43.0.10"]
    );
    let labels = jsonpath(
        server,
        &["-n", "kube-system", "service", "kube-dns"],
        "{.metadata.labels}",
    );
    assert!(labels.contains("\"k8s-app\":\"kube-dns\""), "{labels}");
}

/// Runs `script` with `resolv` mounted over /etc/resolv.conf in a private mount
/// namespace (what a pod sees), returning stdout.
fn with_resolv_conf(resolv: &std::path::Path, script: &str) -> String {
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /etc/resolv.conf && {script}",
            s(resolv)
        ))
        .output()
        .expect("run unshare");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dns_search_path_of_a_pod_resolves_short_names() {
    let dns = start_dns(|_| String::new());
    let server = &dns.server;
    server.ok("1.27", &["create", "namespace", "shop"]);
    server.ok(
        "1.27",
        &[
            "-n",
            "shop",
            "create",
            "service",
            "clusterip",
            "cart",
            "--tcp=80",
        ],
    );
    let cart = jsonpath(
        server,
        &["-n", "shop", "service", "cart"],
        "{.spec.clusterIP}",
    );
    wait_for(10, "cart", || {
        (dns.dig(false, &["cart.shop.svc.cluster.local"]).rdata("A") == [cart.as_str()])
            .then_some(())
    });
    // What the kubelet writes for a pod in namespace `shop`.
    let resolv = server.file(
        "pod-resolv.conf",
        &format!(
            "search shop.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5\n",
            dns.addr.ip()
        ),
    );
    let out = with_resolv_conf(
        &resolv,
        "getent ahostsv4 cart; getent ahostsv4 cart.shop; getent ahostsv4 kubernetes.default; \
         dig +search +short cart; dig +search +short kubernetes.default",
    );
    let kubernetes = "10.43.0.1";
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        format!("{cart}      STREAM cart.shop.svc.cluster.local"),
        format!("{kubernetes}       STREAM kubernetes.default.svc.cluster.local"),
    ] {
        let ip = want.split_whitespace().next().unwrap_or_default();
        let host = want.split_whitespace().last().unwrap_or_default();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(ip) && l.contains("STREAM") && l.ends_with(host)),
            "{want}\n{out}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with(&cart) && l.contains("STREAM"))
            .count(),
        2,
        "cart and cart.shop: {out}"
    );
    assert!(
        lines.contains(&cart.as_str()) && lines.contains(&kubernetes),
        "{out}"
    );
}

#[test]
fn dns_sees_changes_within_a_second() {
    let dns = start_dns(|_| String::new());
    let server = &dns.server;
    let name = "quick.default.svc.cluster.local";
    assert_eq!(dns.dig(false, &[name]).status, "NXDOMAIN");
    server.ok(
        "1.27",
        &["create", "service", "clusterip", "quick", "--tcp=80"],
    );
    let created = Instant::now();
    let answer = wait_for(5, "the new service", || {
        Some(dns.dig(false, &[name]).rdata("A")).filter(|a| !a.is_empty())
    });
    let visible = created.elapsed();
    let ip = jsonpath(server, &["service", "quick"], "{.spec.clusterIP}");
    assert_eq!(answer, [ip.as_str()]);
    server.ok("1.27", &["delete", "service", "quick", "--wait=false"]);
    let deleted = Instant::now();
    wait_for(5, "the service to go", || {
        (dns.dig(false, &[name]).status == "NXDOMAIN").then_some(())
    });
    let gone = deleted.elapsed();
    eprintln!("dns change latency: new service {visible:?}, deleted service {gone:?}");
    // Measured from kubectl's return; each poll is one dig run (a few ms).
    assert!(
        visible < Duration::from_secs(1),
        "visible after {visible:?}"
    );
    assert!(gone < Duration::from_secs(1), "gone after {gone:?}");
}
