//! Crash safety with a real process: a writer process is killed with SIGKILL while it is
//! writing; every write it had acknowledged must be there after a restart.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use pikube_raft::*;

const CHILD_ENV: &str = "PIKUBE_STORE_CRASH_DIR";

/// Runs only as the child of the test below: writes until killed, printing each
/// acknowledged key.
#[tokio::test]
#[ignore = "child process of sigkill_during_writes_loses_no_acknowledged_write"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(Config::single_node(dir)).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for w in 0..16 {
        let store = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/crash/{w}/{i}");
                let r = store.put(key.as_bytes(), key.as_bytes(), 0).await.unwrap();
                if tx.send(format!("ACK {key} {}", r.revision)).is_err() {
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

#[tokio::test]
async fn sigkill_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let exe = std::env::current_exe().unwrap();
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let (key, rev) = rest.split_once(' ').unwrap();
            acked.push((key.to_string(), rev.parse::<i64>().unwrap()));
            if acked.len() == 1000 {
                child.0.kill().unwrap(); // SIGKILL in the middle of the writes
                break;
            }
        }
    }
    child.0.wait().unwrap();
    assert_eq!(
        acked.len(),
        1000,
        "the child acknowledged 1000 writes before it was killed"
    );

    let store = Store::open(Config::single_node(&path)).await.unwrap();
    let max_acked = acked.iter().map(|(_, r)| *r).max().unwrap();
    assert!(store.current_revision() >= max_acked);
    for (key, rev) in &acked {
        let kv = store
            .get(key.as_bytes())
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert_eq!(kv.value, key.as_bytes());
        assert_eq!(kv.mod_revision, *rev);
    }
    // Revisions after the restart carry on without reuse.
    let next = store.put(b"/after", b"v", 0).await.unwrap();
    assert_eq!(next.revision, store.current_revision());
    assert!(next.revision > max_acked);
    store.shutdown().await.unwrap();
}
