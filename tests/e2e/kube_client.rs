//! kube-rs (the Rust client library) against a real pikube server.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config, ResourceExt};

use crate::harness::Server;

/// A kube-rs client of `server`, from its kubeconfig.
pub(crate) async fn client(server: &Server) -> Client {
    let kubeconfig = Kubeconfig::read_from(server.kubeconfig()).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
}

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"from": "kube-rs"}},
        "data": {"k": value},
    }))
    .expect("configmap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_lists_writes_and_watches() {
    let server = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let client = client(&server).await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list")
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(names.contains(&"kube-system".to_string()), "{names:?}");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    // A watcher started before the writes sees them.
    let watched = watcher(
        cms.clone(),
        watcher::Config::default().labels("from=kube-rs"),
    )
    .applied_objects();
    let collector = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut stream = std::pin::pin!(watched);
        while let Ok(Some(Ok(cm))) =
            tokio::time::timeout(Duration::from_secs(20), stream.next()).await
        {
            let v = cm
                .data
                .as_ref()
                .and_then(|d| d.get("k"))
                .cloned()
                .unwrap_or_default();
            seen.push(format!("{}={v}", cm.name_any()));
            if seen.iter().any(|s| s == "a=2") {
                break;
            }
        }
        seen
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let created = cms
        .create(&PostParams::default(), &configmap("a", "1"))
        .await
        .expect("create");
    assert!(created.resource_version().is_some());
    let err = cms
        .create(&PostParams::default(), &configmap("a", "1"))
        .await
        .expect_err("second create");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{err:?}"
    );

    let patched = cms
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"k": "2"}})),
        )
        .await
        .expect("patch");
    assert_eq!(
        patched
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("2")
    );
    // Replacing with the stale object is a conflict.
    let err = cms
        .replace("a", &PostParams::default(), &created)
        .await
        .expect_err("stale replace");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    let seen = collector.await.expect("collector");
    assert!(
        seen.contains(&"a=1".to_string()) || seen.contains(&"a=2".to_string()),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(String::as_str), Some("a=2"), "{seen:?}");

    cms.delete("a", &DeleteParams::default())
        .await
        .expect("delete");
    let err = cms.get("a").await.expect_err("gone");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
    // Pagination: a list with a limit follows continue tokens to the end.
    for i in 0..7 {
        cms.create(&PostParams::default(), &configmap(&format!("p{i}"), "x"))
            .await
            .expect("create");
    }
    let mut pages = 0;
    let mut total = 0;
    let mut params = ListParams::default().labels("from=kube-rs").limit(3);
    loop {
        let page = cms.list(&params).await.expect("page");
        pages += 1;
        total += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => params = params.continue_token(&c),
            None => break,
        }
    }
    assert_eq!((pages, total), (3, 7));
    let all: Vec<ConfigMap> = watcher(
        cms.clone(),
        watcher::Config::default().labels("from=kube-rs"),
    )
    .default_backoff()
    .applied_objects()
    .take(7)
    .try_collect()
    .await
    .expect("watcher initial list");
    assert_eq!(all.len(), 7);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_server_side_apply_creates_merges_and_reports_conflicts() {
    let server = tokio::task::spawn_blocking(Server::start)
        .await
        .expect("server");
    let cms: Api<ConfigMap> = Api::namespaced(client(&server).await, "default");
    let desired = |value: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "ssa"}, "data": {"k": value}})
    };
    // Apply creates, then owns `data.k` for its manager.
    let applied = cms
        .patch(
            "ssa",
            &PatchParams::apply("controller-a"),
            &Patch::Apply(desired("1")),
        )
        .await
        .expect("apply creates");
    assert_eq!(
        applied
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("1")
    );
    let managed = applied.metadata.managed_fields.clone().unwrap_or_default();
    assert_eq!(managed.len(), 1, "{managed:?}");
    assert_eq!(managed[0].manager.as_deref(), Some("controller-a"));
    assert_eq!(managed[0].operation.as_deref(), Some("Apply"));

    // Another manager setting the same field to another value conflicts (409) …
    let err = cms
        .patch(
            "ssa",
            &PatchParams::apply("controller-b"),
            &Patch::Apply(desired("2")),
        )
        .await
        .expect_err("conflict");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert!(
                status
                    .message
                    .contains("conflict with \"controller-a\": .data.k"),
                "{}",
                status.message
            );
        }
        other => panic!("not an API error: {other:?}"),
    }
    // … unless forced, which moves the field to it.
    let forced = cms
        .patch(
            "ssa",
            &PatchParams::apply("controller-b").force(),
            &Patch::Apply(desired("2")),
        )
        .await
        .expect("forced apply");
    assert_eq!(
        forced
            .data
            .as_ref()
            .and_then(|d| d.get("k"))
            .map(String::as_str),
        Some("2")
    );
    let managers: Vec<String> = forced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["controller-b"]);
}
