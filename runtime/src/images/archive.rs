//! Reading image tarballs, plain or compressed (`.tar.gz`/`.tgz`, `.tar.zst`/`.tzst`, as
//! k3s accepts them in its air-gap directory), without holding them in memory: one
//! streaming pass indexes the tar's files (keeping the small ones and hashing the
//! non-blob ones), and a [`Cursor`] reads byte ranges of the (decompressed) tar
//! afterwards — by `pread` for a plain tar, by decompressing forward for a compressed
//! one (ranges read in increasing order cost one more pass in all). Blocking file I/O
//! and CPU work: run it in spawn_blocking.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};
use sha2::{Digest, Sha256};

use crate::Error;

/// Files up to this size are kept in memory by the indexing pass (manifests, configs,
/// index.json): the planner reads them without another pass over a compressed tar.
const SMALL_FILE: u64 = 64 << 10;
/// At most this many bytes of small files are kept per tarball.
const SMALL_BUDGET: u64 = 8 << 20;
/// Read buffer of the streaming passes.
const BUF: usize = 64 << 10;

/// How a tarball's bytes are compressed, from its file name (as k3s decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `.tar`
    None,
    /// `.tar.gz`, `.tgz` (one or more gzip members).
    Gzip,
    /// `.tar.zst`, `.tzst` (one or more zstd frames).
    Zstd,
}

impl Compression {
    /// The compression of an air-gap file by its name, or why the file is not imported.
    pub fn of(name: &str) -> Result<Compression, &'static str> {
        let name = name.to_ascii_lowercase();
        let ends = |suffixes: &[&str]| suffixes.iter().any(|s| name.ends_with(s));
        if ends(&[".tar"]) {
            Ok(Compression::None)
        } else if ends(&[".tar.gz", ".tgz"]) {
            Ok(Compression::Gzip)
        } else if ends(&[".tar.zst", ".tzst"]) {
            Ok(Compression::Zstd)
        } else if ends(&[".tar.bz2", ".tbz", ".tar.lz4", ".tlz4"]) {
            Err("compression not supported (use .tar, .tar.gz/.tgz or .tar.zst/.tzst)")
        } else if ends(&[".txt"]) {
            Err("image lists are pulled from a registry, which an air-gapped node has not")
        } else {
            Err("not an image tarball (.tar, .tar.gz/.tgz, .tar.zst/.tzst)")
        }
    }

    /// The decompressed bytes of `file`, streamed.
    fn reader(self, file: File) -> Box<dyn Read + Send> {
        let buffered = BufReader::with_capacity(BUF, file);
        match self {
            Compression::None => Box::new(buffered),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            Compression::Zstd => Box::new(ZstdFrames {
                source: buffered,
                decoder: FrameDecoder::new(),
                in_frame: false,
            }),
        }
    }
}

/// A zstd stream of any number of frames (ruzstd's StreamingDecoder reads one), with
/// skippable frames skipped, as the zstd tool does.
struct ZstdFrames<R> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.decoder.can_collect() < buf.len() && !self.decoder.is_finished() {
                    let want = buf.len() - self.decoder.can_collect();
                    self.decoder
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBytes(want))
                        .map_err(std::io::Error::other)?;
                }
                let n = self.decoder.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.in_frame = false;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = std::io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut std::io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

/// Reads byte ranges of a tarball's decompressed contents.
pub(crate) struct Cursor {
    path: PathBuf,
    compression: Compression,
    /// The plain file, or the decompressed stream and its position.
    open: Option<(Box<dyn Read + Send>, u64)>,
    file: Option<File>,
}

impl Cursor {
    /// A cursor on `path`; nothing is opened before the first read.
    pub fn new(path: &Path, compression: Compression) -> Cursor {
        Cursor {
            path: path.to_path_buf(),
            compression,
            open: None,
            file: None,
        }
    }

    /// Fills `buf` from `offset` of the decompressed tar. A compressed tar is
    /// decompressed forward from the last read, or again from the start when `offset`
    /// lies before it.
    pub fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        let read_err = |path: &Path, e| Error::io("read tar", path, e);
        if self.compression == Compression::None {
            let file = match &mut self.file {
                Some(f) => f,
                None => self.file.insert(open(&self.path)?),
            };
            return file
                .read_exact_at(buf, offset)
                .map_err(|e| read_err(&self.path, e));
        }
        let (stream, pos) = match &mut self.open {
            Some(open) if open.1 <= offset => open,
            slot => slot.insert((self.compression.reader(open(&self.path)?), 0)),
        };
        let gap = offset - *pos;
        let skipped = std::io::copy(&mut stream.take(gap), &mut std::io::sink())
            .map_err(|e| read_err(&self.path, e))?;
        if skipped < gap {
            return Err(read_err(
                &self.path,
                std::io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        let result = stream.read_exact(buf).map_err(|e| read_err(&self.path, e));
        *pos = offset + buf.len() as u64;
        if result.is_err() {
            self.open = None;
        }
        result
    }
}

fn open(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| Error::io("open", path, e))
}

/// One regular file of the tar.
struct TarFile {
    /// Offset of its data in the decompressed tar.
    offset: u64,
    size: u64,
    /// Its bytes, when small enough to keep.
    data: Option<Vec<u8>>,
    /// sha256 digest and first two bytes, for files outside `blobs/` (a docker archive
    /// names its layers and config by path, not digest).
    digest: Option<(String, [u8; 2])>,
}

/// The regular files of a tar, indexed by one streaming pass.
pub(crate) struct Entries {
    pub path: PathBuf,
    files: HashMap<String, TarFile>,
    cursor: RefCell<Cursor>,
}

impl Entries {
    /// Indexes the tarball at `path`.
    pub fn open(path: &Path, compression: Compression) -> Result<Entries, Error> {
        let read_err = |e| Error::io("read tar", path, e);
        let mut archive = tar::Archive::new(compression.reader(open(path)?));
        let mut files = HashMap::new();
        let mut kept = 0u64;
        let mut buf = vec![0; BUF];
        for entry in archive.entries().map_err(read_err)? {
            let mut entry = entry.map_err(read_err)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry
                .path()
                .map_err(read_err)?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let (offset, size) = (entry.raw_file_position(), entry.size());
            let keep = size <= SMALL_FILE && kept + size <= SMALL_BUDGET;
            let hash = !name.starts_with("blobs/");
            let mut file = TarFile {
                offset,
                size,
                data: None,
                digest: None,
            };
            if keep || hash {
                let mut hasher = Sha256::new();
                let mut data = Vec::new();
                let mut magic = [0u8; 2];
                let mut seen = 0usize;
                loop {
                    let n = entry.read(&mut buf).map_err(read_err)?;
                    if n == 0 {
                        break;
                    }
                    for (i, b) in buf[..n]
                        .iter()
                        .take(2usize.saturating_sub(seen))
                        .enumerate()
                    {
                        magic[seen + i] = *b;
                    }
                    seen += n;
                    if hash {
                        hasher.update(&buf[..n]);
                    }
                    if keep {
                        data.extend_from_slice(&buf[..n]);
                    }
                }
                if seen as u64 != size {
                    return Err(read_err(std::io::ErrorKind::UnexpectedEof.into()));
                }
                if keep {
                    kept += size;
                    file.data = Some(data);
                }
                if hash {
                    file.digest = Some((format!("sha256:{:x}", hasher.finalize()), magic));
                }
            }
            files.insert(name, file);
        }
        Ok(Entries {
            path: path.to_path_buf(),
            files,
            cursor: RefCell::new(Cursor::new(path, compression)),
        })
    }

    /// Whether the tar has a regular file of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// The data offset and size of a file.
    pub fn locate(&self, name: &str) -> Result<(u64, u64), Error> {
        self.get(name).map(|f| (f.offset, f.size))
    }

    fn get(&self, name: &str) -> Result<&TarFile, Error> {
        self.files
            .get(name)
            .ok_or_else(|| self.bad(format!("{name} missing")))
    }

    /// A malformed-tarball error naming this tarball.
    pub fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Tarball {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The bytes of a file of at most `max` bytes.
    pub fn read(&self, name: &str, max: u64) -> Result<Vec<u8>, Error> {
        let file = self.get(name)?;
        if let Some(data) = &file.data {
            return Ok(data.clone());
        }
        if file.size > max {
            return Err(self.bad(format!("{name} is {} bytes, too large", file.size)));
        }
        let mut buf = vec![0; file.size as usize];
        self.cursor
            .borrow_mut()
            .read_exact_at(&mut buf, file.offset)?;
        Ok(buf)
    }

    /// sha256 digest, size and first two bytes of a file: from the indexing pass for
    /// files outside `blobs/`, else streamed through the cursor.
    pub fn sha256(&self, name: &str) -> Result<(String, u64, [u8; 2]), Error> {
        let file = self.get(name)?;
        if let Some((digest, magic)) = &file.digest {
            return Ok((digest.clone(), file.size, *magic));
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0; BUF];
        let mut magic = [0u8; 2];
        let mut pos = 0u64;
        let mut cursor = self.cursor.borrow_mut();
        while pos < file.size {
            let want = (buf.len() as u64).min(file.size - pos) as usize;
            cursor.read_exact_at(&mut buf[..want], file.offset + pos)?;
            if pos == 0 && want >= 2 {
                magic = [buf[0], buf[1]];
            }
            hasher.update(&buf[..want]);
            pos += want as u64;
        }
        Ok((format!("sha256:{:x}", hasher.finalize()), file.size, magic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn formats_by_name() {
        for (name, want) in [
            ("a.tar", Compression::None),
            ("A.TAR", Compression::None),
            ("a.tar.gz", Compression::Gzip),
            ("a.tgz", Compression::Gzip),
            ("a.tar.zst", Compression::Zstd),
            ("a.tzst", Compression::Zstd),
        ] {
            assert_eq!(Compression::of(name), Ok(want), "{name}");
        }
        for (name, reason) in [
            ("a.tar.bz2", "compression not supported"),
            ("a.tar.lz4", "compression not supported"),
            ("images.txt", "registry"),
            ("README.md", "not an image tarball"),
            ("a.tar.gz.part", "not an image tarball"),
            ("tar", "not an image tarball"),
        ] {
            let err = Compression::of(name).unwrap_err();
            assert!(err.contains(reason), "{name}: {err}");
        }
    }

    /// A tar of the given files.
    fn tar_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ruzstd::encoding::compress(data, &mut out, ruzstd::encoding::CompressionLevel::Fastest);
        out
    }

    /// Writes `bytes` as `name` in a temp dir.
    fn file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    #[test]
    fn compressed_tars_index_and_read_like_plain_ones() {
        let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let tar = tar_bytes(&[
            ("index.json", b"{}"),
            ("blobs/sha256/aa", &big),
            ("layer.tar", b"\x1f\x8bzz"),
            ("blobs/sha256/bb", b"tail"),
        ]);
        // Two gzip members and two zstd frames with a skippable frame between them:
        // multi-part streams as pigz/pzstd write them.
        let half = tar.len() / 2;
        let gz = [gzip(&tar[..half]), gzip(&tar[half..])].concat();
        let skippable = [
            &0x184D_2A50u32.to_le_bytes()[..],
            &3u32.to_le_bytes(),
            b"xyz",
        ]
        .concat();
        let zst = [zstd(&tar[..half]), skippable, zstd(&tar[half..])].concat();
        for (name, bytes, compression) in [
            ("i.tar", tar.clone(), Compression::None),
            ("i.tar.gz", gz, Compression::Gzip),
            ("i.tar.zst", zst, Compression::Zstd),
        ] {
            let (_dir, path) = file(name, &bytes);
            let e = Entries::open(&path, compression).unwrap();
            assert_eq!(e.read("index.json", 10).unwrap(), b"{}", "{name}");
            // Not kept (too big): read through the cursor, forward then backward.
            assert_eq!(e.read("blobs/sha256/aa", u64::MAX).unwrap(), big, "{name}");
            assert_eq!(e.read("blobs/sha256/bb", 4).unwrap(), b"tail", "{name}");
            let (offset, size) = e.locate("blobs/sha256/aa").unwrap();
            let mut buf = vec![0; 8];
            e.cursor
                .borrow_mut()
                .read_exact_at(&mut buf, offset + size - 8)
                .unwrap();
            assert_eq!(buf, big[big.len() - 8..], "{name}");
            let err = e.read("blobs/sha256/aa", 100).unwrap_err();
            assert!(err.to_string().contains("too large"), "{err}");
            let (digest, size, magic) = e.sha256("layer.tar").unwrap();
            assert_eq!(
                digest,
                format!("sha256:{:x}", Sha256::digest(b"\x1f\x8bzz"))
            );
            assert_eq!((size, magic), (4, [0x1f, 0x8b]));
            let (digest, size, _) = e.sha256("blobs/sha256/aa").unwrap();
            assert_eq!(digest, format!("sha256:{:x}", Sha256::digest(&big)));
            assert_eq!(size, big.len() as u64);
            assert!(e
                .read("absent", 10)
                .unwrap_err()
                .to_string()
                .contains("missing"));
        }
    }

    #[test]
    fn damaged_compressed_tars_fail_naming_the_file() {
        let tar = tar_bytes(&[("index.json", b"{}"), ("blobs/sha256/aa", &[7u8; 100_000])]);
        let gz = gzip(&tar);
        let zst = zstd(&tar);
        for (name, bytes, compression) in [
            ("cut.tar.gz", gz[..gz.len() / 2].to_vec(), Compression::Gzip),
            (
                "cut.tar.zst",
                zst[..zst.len() / 2].to_vec(),
                Compression::Zstd,
            ),
            ("plain.tar.gz", tar.clone(), Compression::Gzip),
            ("plain.tar.zst", tar.clone(), Compression::Zstd),
            ("cut.tar", tar[..700].to_vec(), Compression::None),
        ] {
            let (_dir, path) = file(name, &bytes);
            let err = match Entries::open(&path, compression) {
                Ok(_) => panic!("{name} accepted"),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(name), "{err}");
        }
    }
}
