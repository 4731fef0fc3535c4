//! Container log rotation as kubelet's container log manager does it: every 10 s each
//! running container's log file is checked; one that reached `containerLogMaxSize` is
//! renamed to `<file>.<YYYYMMDD-hhmmss>` (UTC) and the runtime is asked to reopen it
//! (CRI `ReopenContainerLog`), so the container goes on writing to a fresh file that
//! `kubectl logs` reads. Older rotated files are gzipped, and only
//! `containerLogMaxFiles` files per container are kept (the current one, the latest
//! rotated one, the rest compressed), the oldest removed first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use pikube_runtime::cri::{v1 as cri, Cri};

/// How often the log files are checked (kubelet's containerLogMonitorInterval).
pub const PERIOD: Duration = Duration::from_secs(10);
/// Suffix of compressed rotated files.
const GZ: &str = ".gz";
/// Suffix of files being written (left over by a crash: removed).
const TMP: &str = ".tmp";

/// How big a container's log may grow and how many files of it are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Bytes after which the file is rotated (kubelet's containerLogMaxSize, 10Mi).
    pub max_size: u64,
    /// Files kept per container, the current one included (containerLogMaxFiles, 5; at
    /// least 2).
    pub max_files: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// The rotated files of `log` (`<log>.*`), sorted oldest first (their names end in
/// the time of rotation).
fn rotated(log: &Path) -> std::io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Gzips `path` into `<path>.gz` (through a temporary file) and removes it.
fn compress(path: &Path) -> std::io::Result<()> {
    let gz = PathBuf::from(format!("{}{GZ}", path.display()));
    let tmp = PathBuf::from(format!("{}{TMP}", gz.display()));
    let mut input = std::fs::File::open(path)?;
    let out = std::fs::File::create(&tmp)?;
    let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()?;
    std::fs::rename(&tmp, &gz)?;
    remove(path)
}

/// The file work before `log` is rotated: leftovers of an interrupted compression go,
/// then the oldest rotated files beyond `max_files - 2` (room for the file about to be
/// rotated and the new current one), then the rest is compressed.
pub fn prepare(log: &Path, policy: &Policy) -> std::io::Result<()> {
    let mut files = Vec::new();
    let all = rotated(log)?;
    for f in &all {
        let name = f.to_string_lossy();
        let compressed_exists = all
            .iter()
            .any(|o| o.to_string_lossy() == format!("{name}{GZ}"));
        if name.ends_with(TMP) || compressed_exists {
            remove(f)?;
        } else {
            files.push(f.clone());
        }
    }
    let keep = policy.max_files.saturating_sub(2);
    let excess = files.len().saturating_sub(keep);
    for f in files.drain(..excess) {
        remove(&f)?;
    }
    for f in files.iter().filter(|f| !f.to_string_lossy().ends_with(GZ)) {
        compress(f)?;
    }
    Ok(())
}

/// Renames `log` to `<log>.<YYYYMMDD-hhmmss>` of `now`; None when a file of that name
/// exists already (a second rotation within one second waits for the next check).
pub fn rename_latest(log: &Path, now: DateTime<Utc>) -> std::io::Result<Option<PathBuf>> {
    let to = PathBuf::from(format!("{}.{}", log.display(), now.format("%Y%m%d-%H%M%S")));
    if to.exists() || PathBuf::from(format!("{}{GZ}", to.display())).exists() {
        return Ok(None);
    }
    std::fs::rename(log, &to)?;
    Ok(Some(to))
}

/// Runs the file work of a rotation off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

async fn reopen(cri: &Cri, id: &str) -> Result<(), tonic::Status> {
    cri.runtime()
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.to_string(),
        })
        .await
        .map(|_| ())
}

/// Rotates the log of container `id` when it reached the policy's size.
async fn check(cri: &Cri, id: &str, policy: Policy) -> Result<(), String> {
    let (path, _) = super::logs::log_path(cri, id).await?;
    if path.is_empty() {
        return Ok(());
    }
    let log = PathBuf::from(path);
    let size = match tokio::fs::metadata(&log).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Removed from under the runtime: have it write a new one (as kubelet).
            return reopen(cri, id).await.map_err(|s| s.message().to_string());
        }
        Err(e) => return Err(e.to_string()),
    };
    if size < policy.max_size {
        return Ok(());
    }
    let file = log.clone();
    let Some(renamed) = blocking(move || {
        prepare(&file, &policy)?;
        rename_latest(&file, Utc::now())
    })
    .await
    .map_err(|e| e.to_string())?
    else {
        return Ok(());
    };
    if let Err(s) = reopen(cri, id).await {
        // The container still writes to the renamed file: give it its name back.
        let (from, to) = (renamed.clone(), log.clone());
        let _ = blocking(move || std::fs::rename(from, to)).await;
        return Err(format!("cannot reopen the log: {}", s.message()));
    }
    tracing::debug!(container = %id, log = %log.display(), rotated = %renamed.display(), "container log rotated");
    Ok(())
}

/// Checks the running containers' logs every [`PERIOD`] until the task is dropped.
pub async fn run(cri: Cri, policy: Policy) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let running = cri
            .runtime()
            .list_containers(cri::ListContainersRequest {
                filter: Some(cri::ContainerFilter {
                    state: Some(cri::ContainerStateValue {
                        state: cri::ContainerState::ContainerRunning as i32,
                    }),
                    ..Default::default()
                }),
            })
            .await;
        let containers = match running {
            Ok(r) => r.into_inner().containers,
            Err(s) => {
                tracing::debug!(error = %s.message(), "cannot list containers for log rotation");
                continue;
            }
        };
        for c in containers {
            if let Err(e) = check(&cri, &c.id, policy).await {
                tracing::warn!(container = %c.id, error = %e, "container log rotation failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotation_keeps_max_files_and_compresses_all_but_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let other = dir.path().join("1.log.20260101-000000");
        std::fs::write(&other, "another attempt's").unwrap();
        let policy = Policy {
            max_size: 1,
            max_files: 3,
        };
        let t0: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().unwrap();
        for i in 0..4 {
            std::fs::write(&log, format!("generation {i}\n")).unwrap();
            prepare(&log, &policy).unwrap();
            let at = t0 + chrono::Duration::seconds(i);
            assert!(rename_latest(&log, at).unwrap().is_some());
            // A second rotation within the same second waits.
            std::fs::write(&log, "x").unwrap();
            assert_eq!(rename_latest(&log, at).unwrap(), None);
        }
        // The current file, the latest rotated one, one compressed (3 in all); another
        // container's files are left alone.
        assert_eq!(
            names(dir.path()),
            [
                "0.log",
                "0.log.20261126-100002.gz",
                "0.log.20261126-100003",
                "1.log.20260101-000000"
            ]
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(
            std::fs::File::open(dir.path().join("0.log.20261126-100002.gz")).unwrap(),
        )
        .read_to_string(&mut text)
        .unwrap();
        assert_eq!(text, "generation 2\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("0.log.20261126-100003")).unwrap(),
            "generation 3\n"
        );
    }

    #[test]
    fn leftovers_of_an_interrupted_compression_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        for f in [
            "0.log.20260101-000000",
            "0.log.20260101-000000.gz",
            "0.log.20260101-000001.gz.tmp",
        ] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        prepare(&log, &Policy::default()).unwrap();
        assert_eq!(names(dir.path()), ["0.log.20260101-000000.gz"]);
    }
}
