//! Behaviour of the single-node store through its public API.

use std::time::Duration;

use futures::StreamExt;
use pikube_raft::*;

async fn open_tmp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Config::single_node(dir.path().join("s")))
        .await
        .unwrap();
    (dir, store)
}

async fn next_event(w: &mut Watcher) -> Event {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch event in time")
        .expect("stream open")
        .expect("event")
}

#[tokio::test]
async fn put_get_and_key_metadata() {
    let (_d, s) = open_tmp().await;
    assert_eq!(s.current_revision(), 0);
    let r1 = s.put(b"/a", b"1", 0).await.unwrap();
    assert_eq!(r1.revision, 1);
    assert!(r1.prev.is_none());
    let r2 = s.put(b"/a", b"2", 0).await.unwrap();
    assert_eq!(r2.revision, 2);
    assert_eq!(r2.prev.unwrap().value, b"1");
    s.put(b"/b", b"x", 0).await.unwrap();
    let a = s.get(b"/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 2, 2));
    assert_eq!(a.value, b"2");
    let d = s.delete(b"/a").await.unwrap();
    assert_eq!(d.revision, 4);
    assert_eq!(d.deleted.len(), 1);
    assert!(s.get(b"/a").await.unwrap().is_none());
    // Deleting a missing key writes nothing.
    let d = s.delete(b"/a").await.unwrap();
    assert_eq!(d.revision, 4);
    assert!(d.deleted.is_empty());
    // Re-creation starts a new life of the key.
    s.put(b"/a", b"3", 0).await.unwrap();
    let a = s.get(b"/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
}

#[tokio::test]
async fn range_prefix_limit_count_and_past_revisions() {
    let (_d, s) = open_tmp().await;
    for i in 0..10 {
        s.put(
            format!("/reg/pods/{i:02}").as_bytes(),
            format!("v{i}").as_bytes(),
            0,
        )
        .await
        .unwrap();
    }
    s.put(b"/reg/podsX", b"outside", 0).await.unwrap();
    s.put(b"/reh", b"outside", 0).await.unwrap();
    let all = s.range(RangeRequest::prefix("/reg/pods/")).await.unwrap();
    assert_eq!(all.count, 10);
    assert_eq!(all.kvs.len(), 10);
    assert!(!all.more);
    assert_eq!(all.revision, 12);
    let page = s
        .range(RangeRequest::prefix("/reg/pods/").with_limit(3))
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 3);
    assert!(page.more);
    assert_eq!(page.count, 10);
    assert_eq!(page.kvs[2].key, b"/reg/pods/02");
    // Continue after the last key.
    let mut next = RangeRequest::prefix("/reg/pods/").with_limit(100);
    next.key = [page.kvs[2].key.clone(), vec![0]].concat();
    let rest = s.range(next).await.unwrap();
    assert_eq!(rest.kvs.len(), 7);
    let keys_only = s
        .range(RangeRequest {
            keys_only: true,
            ..RangeRequest::prefix("/reg/")
        })
        .await
        .unwrap();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(keys_only.count, 11);
    let counted = s
        .range(RangeRequest {
            count_only: true,
            ..RangeRequest::prefix("/reg/")
        })
        .await
        .unwrap();
    assert_eq!((counted.count, counted.kvs.len()), (11, 0));

    // The past: overwrite and delete, then read as it was.
    s.put(b"/reg/pods/00", b"new", 0).await.unwrap();
    s.delete(b"/reg/pods/01").await.unwrap();
    let then = s
        .range(RangeRequest::prefix("/reg/pods/").at_revision(12))
        .await
        .unwrap();
    assert_eq!(then.count, 10);
    assert_eq!(then.kvs[0].value, b"v0");
    assert_eq!(then.kvs[1].value, b"v1");
    assert_eq!(then.revision, 14);
    let now = s.range(RangeRequest::prefix("/reg/pods/")).await.unwrap();
    assert_eq!(now.count, 9);
    assert_eq!(now.kvs[0].value, b"new");
    let early = s
        .range(RangeRequest::prefix("/reg/pods/").at_revision(3))
        .await
        .unwrap();
    assert_eq!(early.count, 3);
    let one = s
        .range(RangeRequest::key("/reg/pods/01").at_revision(13))
        .await
        .unwrap();
    assert_eq!(one.kvs[0].value, b"v1");
    let gone = s
        .range(RangeRequest::key("/reg/pods/01").at_revision(14))
        .await
        .unwrap();
    assert!(gone.kvs.is_empty());
    assert!(matches!(
        s.range(RangeRequest::prefix("/reg/").at_revision(99)).await,
        Err(Error::FutureRevision {
            requested: 99,
            current: 14
        })
    ));
}

#[tokio::test]
async fn transactions_compare_and_act_atomically() {
    let (_d, s) = open_tmp().await;
    let created = s
        .txn(TxnRequest {
            compare: vec![Compare::absent("/k")],
            success: vec![Op::Put {
                key: b"/k".to_vec(),
                value: b"1".to_vec(),
                lease: 0,
            }],
            failure: vec![Op::Range(RangeRequest::key("/k"))],
        })
        .await
        .unwrap();
    assert!(created.succeeded);
    let rev = created.revision;
    // A second create fails and returns the current object.
    let again = s
        .txn(TxnRequest {
            compare: vec![Compare::absent("/k")],
            success: vec![Op::Put {
                key: b"/k".to_vec(),
                value: b"2".to_vec(),
                lease: 0,
            }],
            failure: vec![Op::Range(RangeRequest::key("/k"))],
        })
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(again.revision, rev);
    match &again.responses[0] {
        OpResponse::Range(r) => assert_eq!(r.kvs[0].value, b"1"),
        other => panic!("unexpected {other:?}"),
    }
    // Optimistic concurrency: stale mod_revision loses.
    let update = |expected: i64, v: &'static [u8]| TxnRequest {
        compare: vec![Compare::mod_revision_is("/k", expected)],
        success: vec![Op::Put {
            key: b"/k".to_vec(),
            value: v.to_vec(),
            lease: 0,
        }],
        failure: vec![],
    };
    assert!(s.txn(update(rev, b"a")).await.unwrap().succeeded);
    assert!(!s.txn(update(rev, b"b")).await.unwrap().succeeded);
    assert_eq!(s.get(b"/k").await.unwrap().unwrap().value, b"a");
    // All operations of one transaction share one revision; reads see earlier writes.
    let multi = s
        .txn(TxnRequest {
            compare: vec![],
            success: vec![
                Op::Put {
                    key: b"/m/1".to_vec(),
                    value: b"x".to_vec(),
                    lease: 0,
                },
                Op::Put {
                    key: b"/m/2".to_vec(),
                    value: b"y".to_vec(),
                    lease: 0,
                },
                Op::Range(RangeRequest::prefix("/m/")),
            ],
            failure: vec![],
        })
        .await
        .unwrap();
    match &multi.responses[2] {
        OpResponse::Range(before) => assert_eq!(before.count, 2),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(multi.revision, s.current_revision());
    assert_eq!(
        s.get(b"/m/1").await.unwrap().unwrap().mod_revision,
        multi.revision
    );
    // A key is written at most once per transaction, as in etcd; nothing is applied.
    let twice = TxnRequest {
        success: vec![
            Op::Put {
                key: b"/m/3".to_vec(),
                value: b"x".to_vec(),
                lease: 0,
            },
            Op::DeleteRange {
                key: b"/m/".to_vec(),
                range_end: prefix_end(b"/m/"),
            },
        ],
        ..Default::default()
    };
    assert!(matches!(s.txn(twice).await, Err(Error::InvalidArgument(_))));
    assert!(s.get(b"/m/3").await.unwrap().is_none());
    let deleted = s
        .txn(TxnRequest {
            success: vec![
                Op::DeleteRange {
                    key: b"/m/".to_vec(),
                    range_end: prefix_end(b"/m/"),
                },
                Op::Range(RangeRequest::prefix("/m/")),
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    match (&deleted.responses[0], &deleted.responses[1]) {
        (OpResponse::Delete { deleted }, OpResponse::Range(after)) => {
            assert_eq!(deleted.len(), 2);
            assert_eq!(after.count, 0);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Value comparison.
    let by_value = s
        .txn(TxnRequest {
            compare: vec![Compare {
                key: b"/k".to_vec(),
                op: CompareOp::Equal,
                target: CompareTarget::Value(b"a".to_vec()),
            }],
            success: vec![Op::Delete {
                key: b"/k".to_vec(),
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(by_value.succeeded);
    assert!(s.get(b"/k").await.unwrap().is_none());
}

#[tokio::test]
async fn bad_input_is_refused_with_clear_errors() {
    let (_d, s) = open_tmp().await;
    assert_eq!(s.put(b"", b"v", 0).await.unwrap_err(), Error::EmptyKey);
    let big = vec![0u8; MAX_VALUE_BYTES + 1];
    assert!(matches!(
        s.put(b"/big", &big, 0).await,
        Err(Error::ValueTooLarge { .. })
    ));
    let many = TxnRequest {
        success: (0..=MAX_TXN_OPS)
            .map(|i| Op::Delete {
                key: format!("/x{i}").into_bytes(),
            })
            .collect(),
        ..Default::default()
    };
    assert!(matches!(s.txn(many).await, Err(Error::TxnTooLarge(_))));
    let heavy = TxnRequest {
        success: (0..3)
            .map(|i| Op::Put {
                key: format!("/h{i}").into_bytes(),
                value: vec![1; MAX_VALUE_BYTES],
                lease: 0,
            })
            .collect(),
        ..Default::default()
    };
    assert!(matches!(s.txn(heavy).await, Err(Error::TxnTooLarge(_))));
    assert_eq!(
        s.put(b"/l", b"v", 12345).await.unwrap_err(),
        Error::LeaseNotFound(12345)
    );
    assert!(matches!(
        s.lease_grant(0).await,
        Err(Error::InvalidArgument(_))
    ));
    // Nothing of the refused writes was stored.
    assert_eq!(s.current_revision(), 0);
    assert_eq!(s.range(RangeRequest::prefix("/")).await.unwrap().count, 0);
}

#[tokio::test]
async fn watch_replays_history_then_follows_live_changes_in_order() {
    let (_d, s) = open_tmp().await;
    s.put(b"/w/a", b"1", 0).await.unwrap(); // rev 1
    s.put(b"/other", b"x", 0).await.unwrap(); // rev 2
    s.put(b"/w/a", b"2", 0).await.unwrap(); // rev 3
    let mut w = s.watch(WatchRequest::prefix("/w/", 1)).await.unwrap();
    let e1 = next_event(&mut w).await;
    assert_eq!(
        (e1.kind, e1.kv.mod_revision, e1.prev_kv.is_none()),
        (EventKind::Put, 1, true)
    );
    let e2 = next_event(&mut w).await;
    assert_eq!(e2.kv.mod_revision, 3);
    assert_eq!(e2.prev_kv.unwrap().value, b"1");
    s.delete(b"/w/a").await.unwrap(); // rev 4
    s.put(b"/other", b"y", 0).await.unwrap(); // rev 5, not watched
    s.put(b"/w/b", b"1", 0).await.unwrap(); // rev 6
    let e3 = next_event(&mut w).await;
    assert_eq!(
        (e3.kind, e3.kv.mod_revision, e3.kv.version),
        (EventKind::Delete, 4, 0)
    );
    assert_eq!(e3.prev_kv.unwrap().value, b"2");
    let e4 = next_event(&mut w).await;
    assert_eq!(
        (e4.kv.key.as_slice(), e4.kv.mod_revision),
        (&b"/w/b"[..], 6)
    );
    // From now on only: start 0.
    let mut fresh = s.watch(WatchRequest::prefix("/w/", 0)).await.unwrap();
    s.put(b"/w/c", b"1", 0).await.unwrap();
    assert_eq!(next_event(&mut fresh).await.kv.mod_revision, 7);
}

#[tokio::test]
async fn many_concurrent_writes_give_a_gap_free_ordered_watch() {
    let (_d, s) = open_tmp().await;
    let mut w = s.watch(WatchRequest::prefix("/c/", 0)).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            for i in 0..50 {
                revs.push(
                    s.put(format!("/c/{t}/{i}").as_bytes(), b"v", 0)
                        .await
                        .unwrap()
                        .revision,
                );
            }
            revs
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(
            revs.windows(2).all(|p| p[0] < p[1]),
            "one client's revisions increase"
        );
        acked.extend(revs);
    }
    acked.sort();
    assert_eq!(acked, (1..=800).collect::<Vec<i64>>());
    for expected in 1..=800 {
        assert_eq!(next_event(&mut w).await.kv.mod_revision, expected);
    }
    assert_eq!(
        s.range(RangeRequest::prefix("/c/")).await.unwrap().count,
        800
    );
}

#[tokio::test]
async fn compaction_drops_history_and_old_watches_get_compacted() {
    let (_d, s) = open_tmp().await;
    for i in 0..20 {
        s.put(b"/k", format!("{i}").as_bytes(), 0).await.unwrap();
    }
    s.put(b"/gone", b"x", 0).await.unwrap(); // 21
    s.delete(b"/gone").await.unwrap(); // 22
    s.compact(15).await.unwrap();
    assert_eq!(s.compacted_revision(), 15);
    assert!(matches!(
        s.watch(WatchRequest::prefix("/", 10)).await,
        Err(Error::Compacted {
            requested: 10,
            compacted: 15
        })
    ));
    assert!(matches!(
        s.watch(WatchRequest::prefix("/", 15)).await,
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        s.range(RangeRequest::key("/k").at_revision(14)).await,
        Err(Error::Compacted { .. })
    ));
    // At the compaction point and after, reads still work.
    assert_eq!(
        s.range(RangeRequest::key("/k").at_revision(15))
            .await
            .unwrap()
            .kvs[0]
            .value,
        b"14"
    );
    assert_eq!(
        s.range(RangeRequest::key("/k").at_revision(17))
            .await
            .unwrap()
            .kvs[0]
            .value,
        b"16"
    );
    let mut w = s.watch(WatchRequest::prefix("/", 16)).await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.mod_revision, 16);
    assert!(matches!(s.compact(10).await, Err(Error::Compacted { .. })));
    assert!(matches!(
        s.compact(100).await,
        Err(Error::FutureRevision { .. })
    ));
    s.compact(22).await.unwrap();
    assert!(s
        .range(RangeRequest::key("/gone").at_revision(22))
        .await
        .unwrap()
        .kvs
        .is_empty());
    assert_eq!(s.get(b"/k").await.unwrap().unwrap().value, b"19");
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_cancelled_not_buffered_forever() {
    let (_d, s) = open_tmp().await;
    let mut slow = s.watch(WatchRequest::prefix("/s/", 0)).await.unwrap();
    // One revision per put: more revisions than the watcher's channel holds.
    let n = pikube_raft::watch::WATCH_CHANNEL_CAPACITY + 64;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(16) {
                s.put(format!("/s/{i}").as_bytes(), b"v", 0).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The stored events were delivered up to the channel capacity, then the watcher ends
    // with WatchLagged.
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), slow.next())
            .await
            .unwrap()
        {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => {
                assert_eq!(e, Error::WatchLagged);
                break;
            }
            None => panic!("stream ended without an error"),
        }
    }
    assert!(seen >= pikube_raft::watch::WATCH_CHANNEL_CAPACITY);
    assert!(slow.next().await.is_none());
    // Writes go on.
    s.put(b"/s/after", b"v", 0).await.unwrap();
}

#[tokio::test]
async fn leases_expire_and_delete_their_keys() {
    let (_d, s) = open_tmp().await;
    let lease = s.lease_grant(1).await.unwrap();
    s.put(b"/lease/a", b"1", lease.id).await.unwrap();
    s.put(b"/lease/b", b"1", lease.id).await.unwrap();
    s.put(b"/lease/c", b"1", 0).await.unwrap();
    assert_eq!(s.get(b"/lease/a").await.unwrap().unwrap().lease, lease.id);
    let mut w = s.watch(WatchRequest::prefix("/lease/", 0)).await.unwrap();
    let first = next_event(&mut w).await;
    assert_eq!(first.kind, EventKind::Delete);
    let second = next_event(&mut w).await;
    assert_eq!(second.kind, EventKind::Delete);
    assert_eq!(
        first.kv.mod_revision, second.kv.mod_revision,
        "one revision for the whole expiry"
    );
    assert_eq!(
        s.range(RangeRequest::prefix("/lease/"))
            .await
            .unwrap()
            .count,
        1
    );
    assert_eq!(
        s.lease_keep_alive(lease.id).await.unwrap_err(),
        Error::LeaseNotFound(lease.id)
    );

    // Keep-alive holds a lease; revoke ends it at once.
    let kept = s.lease_grant(1).await.unwrap();
    s.put(b"/lease/k", b"1", kept.id).await.unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        s.lease_keep_alive(kept.id).await.unwrap();
    }
    assert!(s.get(b"/lease/k").await.unwrap().is_some());
    s.lease_revoke(kept.id).await.unwrap();
    assert!(s.get(b"/lease/k").await.unwrap().is_none());
    assert_eq!(
        s.lease_revoke(kept.id).await.unwrap_err(),
        Error::LeaseNotFound(kept.id)
    );
}

#[tokio::test]
async fn data_survives_reopen_and_foreign_or_damaged_dirs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let s = Store::open(Config::single_node(&path)).await.unwrap();
    let cluster = s.cluster_id().to_string();
    for i in 0..100 {
        s.put(format!("/p/{i}").as_bytes(), b"v", 0).await.unwrap();
    }
    s.compact(50).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(s.put(b"/p/x", b"v", 0).await.unwrap_err(), Error::Shutdown);
    drop(s);

    let s = Store::open(Config::single_node(&path)).await.unwrap();
    assert_eq!(s.current_revision(), 100);
    assert_eq!(s.compacted_revision(), 50);
    assert_eq!(
        s.range(RangeRequest::prefix("/p/")).await.unwrap().count,
        100
    );
    assert_eq!(s.put(b"/p/next", b"v", 0).await.unwrap().revision, 101);
    s.shutdown().await.unwrap();
    drop(s);

    let other = Config {
        cluster_id: Some("another".into()),
        ..Config::single_node(&path)
    };
    assert!(matches!(
        Store::open(other).await,
        Err(Error::ForeignCluster(_))
    ));
    let same = Config {
        cluster_id: Some(cluster),
        ..Config::single_node(&path)
    };
    Store::open(same).await.unwrap().shutdown().await.unwrap();
    let wrong_node = Config {
        node_id: 7,
        ..Config::single_node(&path)
    };
    assert!(matches!(
        Store::open(wrong_node).await,
        Err(Error::ForeignCluster(_))
    ));

    // A directory with foreign content is not taken over.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("something"), b"data").unwrap();
    assert!(matches!(
        Store::open(Config::single_node(&foreign)).await,
        Err(Error::Corrupt(_))
    ));
    assert_eq!(std::fs::read(foreign.join("something")).unwrap(), b"data");

    // A damaged identity file is refused, not reset.
    std::fs::write(path.join(IDENTITY_FILE), b"{not json").unwrap();
    assert!(matches!(
        Store::open(Config::single_node(&path)).await,
        Err(Error::Corrupt(_))
    ));

    // A database whose files were lost is refused, not silently recreated empty...
    let lost = dir.path().join("lost");
    let s = Store::open(Config::single_node(&lost)).await.unwrap();
    s.put(b"/x", b"1", 0).await.unwrap();
    s.shutdown().await.unwrap();
    drop(s);
    std::fs::remove_dir_all(lost.join("db")).unwrap();
    std::fs::create_dir_all(lost.join("db")).unwrap();
    assert!(matches!(
        Store::open(Config::single_node(&lost)).await,
        Err(Error::Corrupt(_))
    ));
}

#[tokio::test]
async fn a_saved_snapshot_restores_into_a_new_store_with_history() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(Config::single_node(dir.path().join("a")))
        .await
        .unwrap();
    let first = s.put(b"/k", b"1", 0).await.unwrap();
    s.put(b"/k", b"2", 0).await.unwrap();
    s.put(b"/other", b"x", 0).await.unwrap();
    let lease = s.lease_grant(600).await.unwrap();
    s.put(b"/leased", b"l", lease.id).await.unwrap();
    let file = dir.path().join("snap.db");
    let at = s.save_snapshot(&file).await.unwrap();
    assert_eq!(at, s.current_revision());
    s.put(b"/after", b"not in the snapshot", 0).await.unwrap();
    let cluster = s.cluster_id().to_string();
    s.shutdown().await.unwrap();
    drop(s);

    // Only into an empty directory.
    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"mine").unwrap();
    let err = Store::restore(&Config::single_node(&busy), &file)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(busy.join("keep")).unwrap(), b"mine");
    // A file that is not a snapshot is refused.
    std::fs::write(dir.path().join("junk"), b"junk").unwrap();
    let fresh = Config::single_node(dir.path().join("junk-target"));
    assert!(matches!(
        Store::restore(&fresh, dir.path().join("junk")).await,
        Err(Error::Corrupt(_))
    ));

    let config = Config::single_node(dir.path().join("b"));
    Store::restore(&config, &file).await.unwrap();
    let r = Store::open(config).await.unwrap();
    assert_eq!(r.cluster_id(), cluster);
    assert_eq!(r.current_revision(), at);
    assert_eq!(r.get(b"/k").await.unwrap().unwrap().value, b"2");
    assert!(r.get(b"/after").await.unwrap().is_none());
    // History came along: a past revision reads as it was, a watch replays from it.
    let old = r
        .range(RangeRequest::key(b"/k".to_vec()).at_revision(first.revision))
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    let mut w = r
        .watch(WatchRequest::prefix(b"/k".to_vec(), first.revision))
        .await
        .unwrap();
    assert_eq!(next_event(&mut w).await.kv.value, b"1");
    // Leases came along and the new cluster goes on from the restored revision.
    r.lease_keep_alive(lease.id).await.unwrap();
    let next = r.put(b"/new", b"n", 0).await.unwrap();
    assert_eq!(next.revision, at + 1);
    r.shutdown().await.unwrap();
}
