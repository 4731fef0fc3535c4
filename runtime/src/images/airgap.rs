//! The air-gap image directory (`<data-dir>/agent/images/`, as k3s's): at agent start
//! every tarball in it is imported, except one that is unchanged since its last import
//! (same size and mtime) and whose images CRI still reports with the same ids. What was
//! imported is remembered in a small JSON state file; it is only a cache, so a missing
//! or damaged one means "import everything", never a failed start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::archive::Compression;
use super::{cri_image_id, import, CriImage, Imported};
use crate::cri::{unix_channel, v1 as cri};
use crate::Error;

/// Name of the state file the agent keeps in `<data-dir>/agent/`.
pub const STATE_FILE: &str = "image-import.json";

/// What [`import_dir`] did, per file of the directory.
#[derive(Debug, Default)]
pub struct DirImport {
    /// Image names imported from new or changed tarballs, in file-name order.
    pub imported: Vec<String>,
    /// Tarballs not imported again: unchanged, and their images still in containerd.
    pub unchanged: Vec<PathBuf>,
    /// Files that are not tarballs of a supported format, with the reason.
    pub skipped: Vec<(PathBuf, &'static str)>,
    /// Tarballs whose import failed, with the error (the others are still imported).
    pub failed: Vec<(PathBuf, Error)>,
}

/// Size, modification and change times and inode of a tarball: what "unchanged"
/// compares. The change time catches a file replaced with its size and mtime kept
/// (`cp -p`, `rsync -a`), which no one can set back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    mtime_ns: u64,
    #[serde(default)]
    ctime_ns: u64,
    #[serde(default)]
    inode: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        use std::os::unix::fs::MetadataExt;
        let ctime_ns = u64::try_from(meta.ctime())
            .unwrap_or_default()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(meta.ctime_nsec()).unwrap_or_default());
        Stamp {
            size: meta.len(),
            mtime_ns,
            ctime_ns,
            inode: meta.ino(),
        }
    }
}

/// One imported tarball in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    #[serde(flatten)]
    stamp: Stamp,
    images: Vec<Imported>,
}

/// The state file: imported tarballs by file name.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    tarballs: BTreeMap<String, Record>,
}

impl State {
    /// The state at `path`; empty (with a warning unless it is just absent) when it
    /// cannot be read or parsed.
    fn load(path: &Path) -> State {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the image import state; importing every tarball");
                return State::default();
            }
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "damaged image import state ignored; importing every tarball");
            State::default()
        })
    }

    /// Writes the state atomically (temp file, then rename).
    fn save(&self, path: &Path) -> Result<(), Error> {
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Config(format!("state: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(|e| Error::io("write", &tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path, e))
    }

    /// The record of `name` when the file still has the stamp it had at its import.
    fn unchanged(&self, name: &str, stamp: Stamp) -> Option<&Record> {
        self.tarballs.get(name).filter(|r| r.stamp == stamp)
    }
}

/// Whether every image of `record` is still what CRI reports under its name.
fn still_present(record: &Record, seen: &[CriImage]) -> bool {
    record.images.len() == seen.len()
        && record.images.iter().zip(seen).all(|(want, seen)| {
            matches!(seen, CriImage::Id(id) if !want.id.is_empty() && *id == want.id)
        })
}

/// A file of the directory: its name, and its format and stamp or why it is skipped.
type Listed = (PathBuf, String, Result<(Compression, Stamp), &'static str>);

/// The regular files of `dir`, sorted by name; none when it does not exist.
fn list(dir: &Path) -> Result<Vec<Listed>, Error> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut files = Vec::new();
    for entry in read {
        let path = entry.map_err(|e| Error::io("list", dir, e))?.path();
        // Follows symlinks, as k3s does.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let kind = Compression::of(&name).map(|c| (c, Stamp::of(&meta)));
        files.push((path, name, kind));
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// Imports the air-gap directory `dir` (plain `.tar`, `.tar.gz`/`.tgz`,
/// `.tar.zst`/`.tzst` files, in name order) into the containerd at `socket`. With a
/// `state` file, tarballs unchanged since their recorded import whose images CRI still
/// has are left alone, and the file is updated. Fails only when the directory cannot
/// be listed or containerd not reached; a bad tarball is reported in
/// [`DirImport::failed`] and does not stop the others.
pub async fn import_dir(
    socket: &Path,
    dir: &Path,
    state: Option<&Path>,
) -> Result<DirImport, Error> {
    let list_dir = dir.to_path_buf();
    let state_path = state.map(Path::to_path_buf);
    let (files, old) = tokio::task::spawn_blocking(move || {
        let old = state_path.as_deref().map(State::load).unwrap_or_default();
        list(&list_dir).map(|files| (files, old))
    })
    .await
    .map_err(|e| Error::Config(format!("list {}: {e}", dir.display())))??;
    let mut report = DirImport::default();
    if files.is_empty() && old.tarballs.is_empty() {
        return Ok(report);
    }
    let channel = unix_channel(socket).await?;
    let mut client = cri::image_service_client::ImageServiceClient::new(channel.clone());
    let mut new = State::default();
    for (path, name, kind) in files {
        let stamp = match kind {
            Ok((_, stamp)) => stamp,
            Err(reason) => {
                tracing::info!(file = %path.display(), reason, "skipping file in the air-gap image directory");
                report.skipped.push((path, reason));
                continue;
            }
        };
        if let Some(record) = old.unchanged(&name, stamp) {
            let mut seen = Vec::new();
            for image in &record.images {
                // An unanswered check means "import again", not a failed start.
                let id = cri_image_id(&mut client, &image.name).await;
                seen.push(id.unwrap_or(CriImage::Absent));
            }
            if still_present(record, &seen) {
                tracing::info!(tar = %path.display(), "air-gap image tarball unchanged since its import; not imported again");
                new.tarballs.insert(name, record.clone());
                report.unchanged.push(path);
                continue;
            }
        }
        match import(&channel, &path).await {
            Ok(images) => {
                report
                    .imported
                    .extend(images.iter().map(|i| i.name.clone()));
                new.tarballs.insert(name, Record { stamp, images });
            }
            Err(e) => {
                tracing::error!(tar = %path.display(), error = %e, "image import failed");
                report.failed.push((path, e));
            }
        }
    }
    if let Some(path) = state.filter(|_| new != old) {
        let path = path.to_path_buf();
        let saved = tokio::task::spawn_blocking(move || new.save(&path)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the image import state"),
            Err(e) => tracing::warn!(error = %e, "cannot save the image import state"),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size: u64, mtime_ns: u64, ids: &[(&str, &str)]) -> Record {
        Record {
            stamp: Stamp {
                size,
                mtime_ns,
                ..Default::default()
            },
            images: ids
                .iter()
                .map(|(n, i)| Imported {
                    name: n.to_string(),
                    id: i.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn unchanged_needs_the_same_size_times_and_inode() {
        let mut state = State::default();
        state
            .tarballs
            .insert("a.tar.gz".into(), record(10, 5, &[("x", "sha256:1")]));
        let same = Stamp {
            size: 10,
            mtime_ns: 5,
            ..Default::default()
        };
        assert!(state.unchanged("a.tar.gz", same).is_some());
        assert!(state
            .unchanged("a.tar.gz", Stamp { size: 11, ..same })
            .is_none());
        assert!(state
            .unchanged(
                "a.tar.gz",
                Stamp {
                    mtime_ns: 6,
                    ..same
                }
            )
            .is_none());
        assert!(state
            .unchanged(
                "a.tar.gz",
                Stamp {
                    ctime_ns: 7,
                    ..same
                }
            )
            .is_none());
        assert!(state
            .unchanged("a.tar.gz", Stamp { inode: 9, ..same })
            .is_none());
        assert!(state.unchanged("b.tar", same).is_none());
    }

    #[test]
    fn images_must_still_have_their_ids() {
        let r = record(1, 1, &[("x", "sha256:1"), ("y", "sha256:2")]);
        let id = |s: &str| CriImage::Id(s.to_string());
        assert!(still_present(&r, &[id("sha256:1"), id("sha256:2")]));
        assert!(!still_present(&r, &[id("sha256:1"), CriImage::Absent]));
        assert!(
            !still_present(&r, &[id("sha256:1"), id("sha256:3")]),
            "re-tagged"
        );
        assert!(!still_present(&r, &[id("sha256:1"), CriImage::NoCri]));
        let unknown = record(1, 1, &[("x", "")]);
        assert!(
            !still_present(&unknown, &[id("")]),
            "no recorded id: import again"
        );
    }

    #[test]
    fn state_round_trips_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        assert_eq!(State::load(&path), State::default(), "absent");
        let mut state = State::default();
        state
            .tarballs
            .insert("a.tar.zst".into(), record(7, 1 << 60, &[("x", "sha256:1")]));
        state.save(&path).unwrap();
        assert_eq!(State::load(&path), state);
        assert!(!dir.path().join("image-import.json.tmp").exists());
        for damaged in [&b"{\"tarballs\": {\"a\": 3"[..], b"\xff\xfe", b"[]"] {
            std::fs::write(&path, damaged).unwrap();
            assert_eq!(State::load(&path), State::default());
        }
        // A directory where the file should be: unreadable, still no error.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert_eq!(State::load(&path), State::default());
    }

    #[test]
    fn listing_sorts_and_classifies() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["b.tar", "a.tar.zst", "notes.txt", "c.tgz", "d.tar.bz2"] {
            std::fs::write(dir.path().join(f), b"xyz").unwrap();
        }
        std::fs::create_dir(dir.path().join("sub.tar")).unwrap();
        let files = list(dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|f| f.1.as_str()).collect();
        assert_eq!(
            names,
            ["a.tar.zst", "b.tar", "c.tgz", "d.tar.bz2", "notes.txt"]
        );
        assert!(matches!(
            files[0].2,
            Ok((Compression::Zstd, Stamp { size: 3, .. }))
        ));
        assert!(matches!(files[2].2, Ok((Compression::Gzip, _))));
        assert!(files[3].2.is_err() && files[4].2.is_err());
        assert!(list(&dir.path().join("absent")).unwrap().is_empty());
    }
}
