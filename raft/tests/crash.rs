//! Crash safety with a real process: a writer process is killed with SIGKILL while it is
//! writing; every write it had acknowledged must be there after a restart.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use pikube_raft::*;

const CHILD_ENV: &str = "PIKUBE_STORE_CRASH_DIR";
const DEFRAG_ENV: &str = "PIKUBE_STORE_CRASH_DEFRAG";

/// Runs only as the child of the test below: writes until killed, printing each
/// acknowledged key.
#[tokio::test]
#[ignore = "child process of sigkill_during_writes_loses_no_acknowledged_write"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    // With defragmentation: 20 keys per writer overwritten, compacted and defragmented
    // over and over while the writes go on.
    let defrag = std::env::var(DEFRAG_ENV).is_ok();
    let store = Store::open(Config::single_node(dir)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..16 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = match defrag {
                    true => format!("/crash/{w}/{}", i % 20),
                    false => format!("/crash/{w}/{i}"),
                };
                let value = format!("{key} {i} {}", "x".repeat(1000));
                let r = store
                    .put(key.as_bytes(), value.as_bytes(), 0)
                    .await
                    .unwrap();
                if tx.send(format!("ACK {key} {}", r.revision)).is_err() {
                    return;
                }
            }
        });
    }
    if defrag {
        let (store, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                match store.compact(store.current_revision()).await {
                    Ok(()) | Err(Error::Compacted { .. }) => {}
                    Err(e) => panic!("compaction failed: {e}"),
                }
                store.defragment().await.unwrap();
                if tx.send("DEFRAG".into()).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the child writer on `path` (with defragmentations when `defrag`), kills it with
/// SIGKILL once it acknowledged `acks` writes and finished `defrags` defragmentations,
/// and returns each key with the revision of its last acknowledged write.
fn write_until_killed(
    path: &std::path::Path,
    defrag: bool,
    acks: usize,
    defrags: usize,
) -> std::collections::HashMap<String, i64> {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if defrag {
        command.env(DEFRAG_ENV, "1");
    }
    let mut child = KillOnDrop(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (mut acked, mut n, mut done) = (std::collections::HashMap::new(), 0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line == "DEFRAG" {
            done += 1;
        } else if let Some(rest) = line.strip_prefix("ACK ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.insert(key.to_string(), rev.parse::<i64>().unwrap());
            n += 1;
        }
        if n >= acks && done >= defrags {
            child.0.kill().unwrap(); // SIGKILL in the middle of the writes
            break;
        }
    }
    child.0.wait().unwrap();
    assert!(
        n >= acks && done >= defrags,
        "the child acknowledged {n} writes and {done} defragmentations before it ended"
    );
    acked
}

/// Every acknowledged write is there (or a later one of the same key), and revisions
/// carry on without reuse.
async fn check_acknowledged(
    path: &std::path::Path,
    acked: &std::collections::HashMap<String, i64>,
) {
    let store = Store::open(Config::single_node(path)).await.unwrap();
    let max_acked = acked.values().copied().max().unwrap();
    assert!(store.current_revision() >= max_acked);
    for (key, rev) in acked {
        let kv = store
            .get(key.as_bytes())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert!(kv.value.starts_with(key.as_bytes()));
        assert!(
            kv.mod_revision >= *rev,
            "{key}: acknowledged revision {rev} lost"
        );
    }
    let next = store.put(b"/after", b"v", 0).await.unwrap();
    assert_eq!(next.revision, store.current_revision());
    assert!(next.revision > max_acked);
    store.shutdown().await.unwrap();
}

#[tokio::test]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let acked = write_until_killed(&path, false, 1000, 0);
    check_acknowledged(&path, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_defragmentations_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    for round in 0..3 {
        // Killed at a different point of a defragmentation each time, most likely.
        let acked = write_until_killed(&path, true, 1000 + round * 377, 2 + round);
        check_acknowledged(&path, &acked).await;
    }
}
