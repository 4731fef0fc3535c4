//! The Raft log on disk: append-only segment files of length-prefixed, checksummed
//! records, one file per [`SEGMENT`] entries or about 2 MiB. Appends are buffered writes; [`Wal::sync`]
//! makes them durable with one `fdatasync` per touched file; dropping the log before a
//! snapshot deletes whole files. At open every record is checked: a torn record at the end
//! of the last file (a crash during a write) is cut off, anything else damaged is refused.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Entries per segment file, at most.
pub const SEGMENT: u64 = 8192;
/// Bytes after which the next append starts a new segment: a purge deletes whole files,
/// so what it leaves of the log is at most about this much.
const SEGMENT_BYTES: u64 = 2 << 20;
/// Bytes before each record: its length and its CRC-32.
const HEADER: usize = 8;
/// Largest record accepted when reading (a log entry is a few MiB at most).
const MAX_RECORD: u32 = 64 << 20;

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

struct Segment {
    path: PathBuf,
    file: Arc<File>,
    /// Index of the first entry.
    first: u64,
    /// Offset and length (header included) of each entry's record.
    records: Vec<(u64, u32)>,
    /// Bytes in use (the next record goes here).
    end: u64,
}

impl Segment {
    fn last(&self) -> Option<u64> {
        (!self.records.is_empty()).then(|| self.first + self.records.len() as u64 - 1)
    }
}

/// The log: segments by first index.
pub struct Wal {
    dir: PathBuf,
    segments: BTreeMap<u64, Segment>,
    /// Files written since the last sync.
    dirty: Vec<Arc<File>>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.log"))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync", dir, e))
}

/// What reading a segment file found.
struct Scanned {
    /// Offset and length of each good record.
    records: Vec<(u64, u32)>,
    /// End of the last good record.
    end: u64,
    /// Whether the file continued past it with something unreadable.
    torn: bool,
}

/// Reads a segment's records, checking each.
fn scan(path: &Path) -> Result<Scanned> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io("cannot read", path, e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while at + HEADER <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let crc = u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let end = at + HEADER + len as usize;
        if len > MAX_RECORD || end > bytes.len() || crc32fast::hash(&bytes[at + HEADER..end]) != crc
        {
            break;
        }
        records.push((at as u64, (HEADER + len as usize) as u32));
        at = end;
    }
    Ok(Scanned {
        records,
        end: at as u64,
        torn: at != bytes.len(),
    })
}

impl Wal {
    /// Opens (or creates) the log in `dir`, dropping segments wholly before `purged`
    /// (a purge a crash interrupted).
    pub fn open(dir: &Path, purged: Option<u64>) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))? {
            let entry = entry.map_err(|e| io("cannot read", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name.strip_suffix(".log") {
                let first = n.parse::<u64>().map_err(|_| {
                    Error::Corrupt(format!("{} is not a log segment", entry.path().display()))
                })?;
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = BTreeMap::new();
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first);
            let Scanned { records, end, torn } = scan(&path)?;
            let last = i + 1 == count;
            if torn && !last {
                return Err(Error::Corrupt(format!(
                    "log segment {} is damaged in its middle: refusing to lose committed entries",
                    path.display()
                )));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io("cannot open", &path, e))?;
            if torn {
                tracing::warn!(segment = %path.display(), at = end, "cutting a torn record off the log's end");
                file.set_len(end)
                    .map_err(|e| io("cannot truncate", &path, e))?;
                file.sync_all().map_err(|e| io("cannot sync", &path, e))?;
            }
            let seg = Segment {
                path,
                file: Arc::new(file),
                first,
                records,
                end,
            };
            if let Some(p) = purged {
                if seg.last().is_none_or(|l| l <= p) {
                    let _ = std::fs::remove_file(&seg.path);
                    continue;
                }
            }
            segments.insert(first, seg);
        }
        let mut expect: Option<u64> = None;
        for seg in segments.values() {
            if let Some(e) = expect {
                if seg.first != e {
                    return Err(Error::Corrupt(format!(
                        "log segment {} starts at entry {} but {e} was expected: a hole in the log",
                        seg.path.display(),
                        seg.first
                    )));
                }
            }
            expect = Some(seg.first + seg.records.len() as u64);
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            segments,
            dirty: Vec::new(),
        })
    }

    /// Index of the last entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.segments.values().rev().find_map(Segment::last)
    }

    /// Appends encoded entries; `index` is the first one's index and must follow the
    /// last entry (or start an empty log).
    pub fn append(&mut self, index: u64, payloads: &[Vec<u8>]) -> Result<()> {
        if let Some(last) = self.last_index() {
            if index != last + 1 {
                return Err(Error::Storage(format!(
                    "log append at {index} after entry {last}: not consecutive"
                )));
            }
        }
        let mut next = index;
        let mut pending = payloads;
        while !pending.is_empty() {
            let needs_new = match self.segments.values().next_back() {
                None => true,
                Some(s) => {
                    s.records.len() as u64 >= SEGMENT
                        || s.end >= SEGMENT_BYTES
                        || s.last().is_none()
                }
            };
            if needs_new {
                // An empty last segment may have been made for another first index.
                let empty: Vec<u64> = self
                    .segments
                    .iter()
                    .filter(|(_, s)| s.last().is_none())
                    .map(|(f, _)| *f)
                    .collect();
                for f in empty {
                    if let Some(seg) = self.segments.remove(&f) {
                        let _ = std::fs::remove_file(&seg.path);
                    }
                }
                self.new_segment(next)?;
            }
            let seg = self
                .segments
                .values_mut()
                .next_back()
                .ok_or_else(|| Error::Storage("log has no segment".into()))?;
            let room = (SEGMENT - seg.records.len() as u64) as usize;
            let (now, later) = pending.split_at(room.min(pending.len()));
            let mut buf = Vec::with_capacity(now.iter().map(|p| p.len() + HEADER).sum());
            for p in now {
                let at = seg.end + buf.len() as u64;
                buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
                buf.extend_from_slice(&crc32fast::hash(p).to_be_bytes());
                buf.extend_from_slice(p);
                seg.records.push((at, (p.len() + HEADER) as u32));
            }
            seg.file
                .write_all_at(&buf, seg.end)
                .map_err(|e| io("cannot write", &seg.path, e))?;
            seg.end += buf.len() as u64;
            if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &seg.file)) {
                self.dirty.push(seg.file.clone());
            }
            next += now.len() as u64;
            pending = later;
        }
        Ok(())
    }

    fn new_segment(&mut self, first: u64) -> Result<()> {
        let path = segment_path(&self.dir, first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io("cannot create", &path, e))?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                path,
                file: Arc::new(file),
                first,
                records: Vec::new(),
                end: 0,
            },
        );
        Ok(())
    }

    /// The files to `fdatasync` to make everything appended so far durable.
    pub fn take_dirty(&mut self) -> Vec<Arc<File>> {
        std::mem::take(&mut self.dirty)
    }

    /// The payloads of entries `from..=to` that are in the log.
    pub fn read(&self, from: u64, to: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if to < from {
            return Ok(out);
        }
        for seg in self.segments.range(..=to).map(|(_, s)| s) {
            let Some(last) = seg.last() else { continue };
            if last < from {
                continue;
            }
            let a = from.max(seg.first);
            let b = to.min(last);
            let (start, _) = seg.records[(a - seg.first) as usize];
            let (end_at, end_len) = seg.records[(b - seg.first) as usize];
            let mut buf = vec![0u8; (end_at + end_len as u64 - start) as usize];
            seg.file
                .read_exact_at(&mut buf, start)
                .map_err(|e| io("cannot read", &seg.path, e))?;
            for i in a..=b {
                let (at, len) = seg.records[(i - seg.first) as usize];
                let lo = (at - start) as usize + HEADER;
                let hi = (at - start) as usize + len as usize;
                out.push(buf[lo..hi].to_vec());
            }
        }
        Ok(out)
    }

    /// Removes the entries from `from` on (a new leader overwrote them).
    pub fn truncate(&mut self, from: u64) -> Result<()> {
        let later: Vec<u64> = self.segments.range(from..).map(|(f, _)| *f).collect();
        let removed = !later.is_empty();
        for first in later {
            if let Some(seg) = self.segments.remove(&first) {
                std::fs::remove_file(&seg.path).map_err(|e| io("cannot remove", &seg.path, e))?;
            }
        }
        if let Some(seg) = self.segments.values_mut().next_back() {
            if seg.last().is_some_and(|l| l >= from) {
                let keep = (from - seg.first) as usize;
                let end = seg.records[keep].0;
                seg.records.truncate(keep);
                seg.end = end;
                seg.file
                    .set_len(end)
                    .and_then(|_| seg.file.sync_all())
                    .map_err(|e| io("cannot truncate", &seg.path, e))?;
            }
        }
        if removed {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the segment files all of whose entries are at or before `upto`, keeping
    /// the one being written unless the whole log is purged (a follower that installed a
    /// snapshot newer than its log goes on from there).
    pub fn purge(&mut self, upto: u64) -> Result<()> {
        let Some(current) = self.segments.keys().next_back().copied() else {
            return Ok(());
        };
        let everything = self.last_index().is_none_or(|l| l <= upto);
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(first, s)| {
                (everything || **first != current) && s.last().is_none_or(|l| l <= upto)
            })
            .map(|(first, _)| *first)
            .collect();
        for first in done {
            if let Some(seg) = self.segments.remove(&first) {
                std::fs::remove_file(&seg.path).map_err(|e| io("cannot remove", &seg.path, e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i}").into_bytes()
    }

    fn fill(w: &mut Wal, from: u64, to: u64) {
        let p: Vec<Vec<u8>> = (from..=to).map(payload).collect();
        w.append(from, &p).unwrap();
        for f in w.take_dirty() {
            f.sync_data().unwrap();
        }
    }

    #[test]
    fn appends_read_back_across_segments_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), None).unwrap();
        fill(&mut w, 1, SEGMENT * 2 + 10);
        assert_eq!(w.last_index(), Some(SEGMENT * 2 + 10));
        let got = w.read(SEGMENT - 2, SEGMENT + 2).unwrap();
        assert_eq!(
            got,
            (SEGMENT - 2..=SEGMENT + 2).map(payload).collect::<Vec<_>>()
        );
        drop(w);
        let w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.last_index(), Some(SEGMENT * 2 + 10));
        assert_eq!(w.read(5, 5).unwrap(), vec![payload(5)]);
        assert!(w.append_check(SEGMENT * 2 + 12).is_err());
    }

    impl Wal {
        fn append_check(&self, index: u64) -> Result<()> {
            match self.last_index() {
                Some(l) if index != l + 1 => Err(Error::Storage("gap".into())),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn truncate_and_purge_keep_the_log_consecutive() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), None).unwrap();
        fill(&mut w, 1, SEGMENT * 3);
        w.truncate(SEGMENT + 5).unwrap();
        assert_eq!(w.last_index(), Some(SEGMENT + 4));
        fill(&mut w, SEGMENT + 5, SEGMENT + 7);
        assert_eq!(w.read(SEGMENT + 5, SEGMENT + 7).unwrap().len(), 3);
        w.purge(SEGMENT).unwrap();
        assert!(w.read(1, 3).unwrap().is_empty());
        assert_eq!(
            w.read(SEGMENT + 1, SEGMENT + 1).unwrap(),
            vec![payload(SEGMENT + 1)]
        );
        drop(w);
        let w = Wal::open(dir.path(), Some(SEGMENT)).unwrap();
        assert_eq!(w.last_index(), Some(SEGMENT + 7));
    }

    #[test]
    fn a_log_purged_past_its_end_goes_on_from_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), None).unwrap();
        fill(&mut w, 1, 20);
        w.purge(500).unwrap();
        assert_eq!(w.last_index(), None);
        fill(&mut w, 501, 505);
        assert_eq!(w.read(501, 505).unwrap().len(), 5);
        drop(w);
        let w = Wal::open(dir.path(), Some(500)).unwrap();
        assert_eq!(w.last_index(), Some(505));
        assert_eq!(w.read(503, 503).unwrap(), vec![payload(503)]);
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_damaged_middle_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Wal::open(dir.path(), None).unwrap();
        fill(&mut w, 1, 10);
        drop(w);
        let path = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(f);
        let mut w = Wal::open(dir.path(), None).unwrap();
        assert_eq!(w.last_index(), Some(10));
        fill(&mut w, 11, 11);
        assert_eq!(w.read(11, 11).unwrap(), vec![payload(11)]);
        drop(w);
        // A flipped byte in a segment that is not the last one is refused.
        let mut w = Wal::open(dir.path(), None).unwrap();
        fill(&mut w, 12, SEGMENT + 3);
        drop(w);
        let bytes = std::fs::read(&path).unwrap();
        let mut bad = bytes.clone();
        bad[20] ^= 0xff;
        std::fs::write(&path, bad).unwrap();
        assert!(matches!(
            Wal::open(dir.path(), None),
            Err(Error::Corrupt(_))
        ));
        std::fs::write(&path, bytes).unwrap();
        assert!(Wal::open(dir.path(), None).is_ok());
    }
}
