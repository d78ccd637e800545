//! zstd compression of one backup copy: multithreaded, written behind, and proved by a
//! round trip that runs while the copy is compressed instead of after it.
//!
//! A [`Compressor`] is an [`std::io::Write`]: the raw copy's bytes go in, in order, and the
//! compressed stream goes to the output file. Behind it:
//!
//! - the encoder runs on `zstd_workers()` threads (one zstd frame, `Encoder::multithread`),
//!   with the frame's content checksum (XXH64 of the input, checked by every decoder);
//! - a checker thread follows the output file as it grows (`pread` behind the writer, so the
//!   only buffer is the page cache: memory does not grow with the file), hashes the stored
//!   bytes (the manifest's SHA-256 is the hash of what was read back from the file),
//!   decompresses them and hashes the result, and asks the kernel to start writing back each
//!   range it has read (`sync_file_range`), so the final fsync only waits for the tail;
//! - [`Compressor::finish`] ends the frame, fsyncs and returns both hashes. The raw SHA-256 it
//!   returns is the hash of the decompressed stored bytes: the caller compares it with its own
//!   hash of the copy ([`compress_file`] does), and a difference is a failed verification.
//!
//! Wiring it into the copy (the copy's tee): the copy hashes the raw bytes while it copies
//! and hands the same bytes, in order, to `&mut Compressor` as its `Write` tee; after the
//! copy, `finish()` and compare `Compressed::raw_sha256` with the copy's hash.
//! `copy.rs` does exactly that for every path (after the backup API or VACUUM INTO, the
//! finished file is read once into the tee). [`compress_file`] drives it from a finished copy
//! on disk; tests use it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::archive;
use crate::jobs::JobError;

/// At most this many zstd worker threads, whatever the machine has.
const MAX_WORKERS: u32 = 4;
/// The checker starts write-back of the output in ranges of this size.
const WRITE_BEHIND: u64 = 8 << 20;
/// Read size when a copy on disk feeds the compressor.
const CHUNK: usize = 1 << 20;

/// What a finished compression stored and proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Compressed {
    /// Size and SHA-256 (hex) of the compressed file, as read back from it.
    pub stored_bytes: u64,
    pub stored_sha256: String,
    /// Size and SHA-256 (hex) of what the stored file decompresses to.
    pub raw_bytes: u64,
    pub raw_sha256: String,
}

/// zstd worker threads for this machine: every core, at most [`MAX_WORKERS`].
pub(super) fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(MAX_WORKERS))
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

/// How far the writer got, shared with the checker.
#[derive(Default)]
struct Progress {
    state: Mutex<(u64, bool)>, // (bytes written to the file, writer done or gone)
    moved: Condvar,
}

impl Progress {
    fn publish(&self, written: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = written;
        self.moved.notify_one();
    }

    /// The writer is done (finished, or gone): the checker reads to what was written.
    fn end(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.moved.notify_one();
    }

    /// Block until the file holds more than `pos` bytes or the writer is done; the bytes
    /// written so far.
    fn beyond(&self, pos: u64) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 <= pos && !s.1 {
            s = self.moved.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0
    }
}

/// The encoder's output: the file, publishing each write to the checker.
struct FileSink {
    file: File,
    written: u64,
    progress: Arc<Progress>,
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.progress.publish(self.written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The checker's input: the output file read behind the writer, hashed as it is read.
struct Tail {
    file: File,
    pos: u64,
    synced: u64,
    progress: Arc<Progress>,
    hash: Sha256,
}

impl Read for Tail {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let written = self.progress.beyond(self.pos);
        if written <= self.pos || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(written - self.pos).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ends at {} bytes, {written} were written", self.pos),
            ));
        }
        self.hash.update(&buf[..n]);
        self.pos += n as u64;
        if self.pos - self.synced >= WRITE_BEHIND {
            write_behind(&self.file, self.synced, self.pos - self.synced);
            self.synced = self.pos;
        }
        Ok(n)
    }
}

/// Start the write-back of `len` bytes at `offset` without waiting for it: a hint, so the
/// final fsync has little left to do and never queues a whole file at once.
fn write_behind(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor this function borrows; no memory is
    // passed. Its failure only loses the hint.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

pub(super) type Wrap = Box<dyn FnOnce(Box<dyn Write + Send>) -> Box<dyn Write + Send>>;

/// Streaming zstd compressor of one backup copy into one file; see the module doc.
pub(super) struct Compressor {
    enc: Option<zstd::stream::write::Encoder<'static, Box<dyn Write + Send>>>,
    file: File,
    path: PathBuf,
    progress: Arc<Progress>,
    checker: Option<JoinHandle<io::Result<Compressed>>>,
}

impl Compressor {
    /// Compress into `out` (a new, empty file at `path`) at `level`. `size`, when known, is
    /// recorded in the frame header (the exact number of bytes that will be written).
    pub(super) fn new(
        out: &File,
        path: &Path,
        level: i32,
        size: Option<u64>,
    ) -> Result<Compressor, JobError> {
        Self::with_sink(out, path, level, size, Box::new(|w| w))
    }

    /// As `new`, with `wrap` between the encoder and the file (tests corrupt bytes there).
    fn with_sink(
        out: &File,
        path: &Path,
        level: i32,
        size: Option<u64>,
        wrap: Wrap,
    ) -> Result<Compressor, JobError> {
        let io = |what: &str| {
            let context = format!("{}: {what}", path.display());
            move |source| JobError::Io { context, source }
        };
        let file = out.try_clone().map_err(io("open"))?;
        let progress = Arc::new(Progress::default());
        let sink = FileSink {
            file: out.try_clone().map_err(io("open"))?,
            written: 0,
            progress: progress.clone(),
        };
        let mut enc =
            zstd::stream::write::Encoder::new(wrap(Box::new(sink)), level).map_err(io("zstd"))?;
        enc.multithread(zstd_workers())
            .map_err(io("zstd workers"))?;
        enc.include_checksum(true).map_err(io("zstd"))?;
        if size.is_some() {
            enc.set_pledged_src_size(size).map_err(io("zstd"))?;
        }
        let tail = Tail {
            file: File::open(path).map_err(io("open for the round trip"))?,
            pos: 0,
            synced: 0,
            progress: progress.clone(),
            hash: Sha256::new(),
        };
        let checker = std::thread::Builder::new()
            .name("zstd-check".into())
            .spawn(move || round_trip(tail))
            .map_err(io("start the round-trip thread"))?;
        Ok(Compressor {
            enc: Some(enc),
            file,
            path: path.to_path_buf(),
            progress,
            checker: Some(checker),
        })
    }

    /// End the frame, fsync the file and wait for the round trip. Errors: `JobError::Io`
    /// when the file could not be written, `JobError::VerifyFailed` when the stored bytes do
    /// not decompress (damaged frame, wrong content checksum).
    pub(super) fn finish(mut self) -> Result<Compressed, JobError> {
        let shown = self.path.display().to_string();
        let io = |what: &str| {
            let context = format!("{shown}: {what}");
            move |source| JobError::Io { context, source }
        };
        let enc = self.enc.take().expect("finish runs once");
        let written = enc.finish().and_then(|mut w| w.flush());
        self.progress.end();
        written.map_err(io("write"))?;
        // The checker reads the tail while the file syncs.
        let synced = self.file.sync_all();
        let checked = self
            .checker
            .take()
            .expect("finish runs once")
            .join()
            .expect("round-trip thread");
        synced.map_err(io("fsync"))?;
        checked.map_err(|e| {
            JobError::VerifyFailed(format!(
                "{shown}: the compressed copy does not decompress ({e})"
            ))
        })
    }
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.enc.as_mut().expect("not finished").write(buf)
    }

    /// Ends the current zstd job early (costs ratio and parallelism): only [`finish`] is
    /// needed to end the stream.
    fn flush(&mut self) -> io::Result<()> {
        self.enc.as_mut().expect("not finished").flush()
    }
}

impl Drop for Compressor {
    /// Dropped unfinished (an error elsewhere): the checker sees the end and stops.
    fn drop(&mut self) {
        self.enc = None;
        self.progress.end();
        if let Some(checker) = self.checker.take() {
            let _ = checker.join();
        }
    }
}

/// The checker thread: decompress the file as it grows, hashing both sides.
fn round_trip(tail: Tail) -> io::Result<Compressed> {
    let mut dec = zstd::stream::read::Decoder::new(tail)?;
    let mut raw = Sha256::new();
    let mut raw_bytes = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = dec.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.update(&buf[..n]);
        raw_bytes += n as u64;
    }
    // Bytes after the last frame would be read here, so the stored hash covers them too.
    let mut rest = dec.finish();
    let extra = io::copy(&mut rest, &mut io::sink())?;
    if extra > 0 {
        return Err(io::Error::other(format!(
            "{extra} bytes after the end of the zstd stream"
        )));
    }
    let tail = rest.into_inner();
    Ok(Compressed {
        stored_bytes: tail.pos,
        stored_sha256: archive::hex(&tail.hash.finalize()),
        raw_bytes,
        raw_sha256: archive::hex(&raw.finalize()),
    })
}

/// Compress the finished copy `from` into `out` (a new file at `to`), reading it once and
/// hashing it on the way; `checkpoint` runs between chunks (cancel). The round trip must
/// give back the same SHA-256, or this is a `VerifyFailed`.
#[cfg(test)]
pub(super) fn compress_file(
    from: &Path,
    out: &File,
    to: &Path,
    level: i32,
    checkpoint: &mut dyn FnMut() -> Result<(), JobError>,
) -> Result<Compressed, JobError> {
    compress_file_with(from, out, to, level, checkpoint, Box::new(|w| w))
}

#[cfg(test)]
pub(super) fn compress_file_with(
    from: &Path,
    out: &File,
    to: &Path,
    level: i32,
    checkpoint: &mut dyn FnMut() -> Result<(), JobError>,
    wrap: Wrap,
) -> Result<Compressed, JobError> {
    let io = |path: &Path, what: &str| {
        let context = format!("{}: {what}", path.display());
        move |source| JobError::Io { context, source }
    };
    let mut input = File::open(from).map_err(io(from, "open"))?;
    let size = input.metadata().map_err(io(from, "stat"))?.len();
    let mut zst = Compressor::with_sink(out, to, level, Some(size), wrap)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut read = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io(from, "read"))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        hash.update(&buf[..n]);
        zst.write_all(&buf[..n]).map_err(io(to, "write"))?;
        checkpoint()?;
    }
    if read != size {
        return Err(JobError::Io {
            context: format!("{}: changed while compressed", from.display()),
            source: io::ErrorKind::UnexpectedEof.into(),
        });
    }
    let done = zst.finish()?;
    let raw = archive::hex(&hash.finalize());
    if done.raw_sha256 != raw || done.raw_bytes != read {
        return Err(JobError::VerifyFailed(format!(
            "{}: the compressed copy decompresses to other bytes than the copy ({} bytes, \
             SHA-256 {}; the copy: {read} bytes, {raw})",
            to.display(),
            done.raw_bytes,
            done.raw_sha256
        )));
    }
    Ok(done)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Pseudo-random but compressible bytes (a database-like mix of text and numbers).
    pub(in crate::jobs::backup) fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(
                format!("row {} user{} hello world; ", x % 100_000, x % 97).as_bytes(),
            );
        }
        out.truncate(len);
        out
    }

    fn setup(len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("copy.db");
        let bytes = sample(len);
        std::fs::write(&raw, &bytes).unwrap();
        (dir, raw, bytes)
    }

    fn no_cancel() -> impl FnMut() -> Result<(), JobError> {
        || Ok(())
    }

    /// Flips one bit of the stream at `at` on its way to the file.
    pub(in crate::jobs::backup) struct FlipBit {
        pub inner: Box<dyn Write + Send>,
        pub seen: u64,
        pub at: u64,
    }

    impl Write for FlipBit {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut b = buf.to_vec();
            if (self.seen..self.seen + b.len() as u64).contains(&self.at) {
                b[(self.at - self.seen) as usize] ^= 0x10;
            }
            let n = self.inner.write(&b)?;
            self.seen += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    #[test]
    fn round_trip_gives_the_hashes_of_both_sides() {
        let (dir, raw, bytes) = setup(24 << 20);
        let to = dir.path().join("copy.db.zst");
        let out = archive::create_private(&to).unwrap();
        let done = compress_file(&raw, &out, &to, 3, &mut no_cancel()).unwrap();
        let stored = std::fs::read(&to).unwrap();
        assert_eq!(done.stored_bytes, stored.len() as u64);
        assert_eq!(done.stored_sha256, archive::hex(&Sha256::digest(&stored)));
        assert_eq!(done.raw_bytes, bytes.len() as u64);
        assert_eq!(done.raw_sha256, archive::hex(&Sha256::digest(&bytes)));
        assert!(stored.len() < bytes.len() / 3, "{} bytes", stored.len());
        // One frame (the workers split the input into jobs, not frames), with its size.
        let frame = zstd::zstd_safe::find_frame_compressed_size(&stored).unwrap();
        assert_eq!(frame, stored.len());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&stored).unwrap(),
            Some(bytes.len() as u64)
        );
        assert_eq!(zstd::decode_all(&stored[..]).unwrap(), bytes);
    }

    #[test]
    fn a_flipped_bit_in_the_stored_stream_fails_the_round_trip() {
        let (dir, raw, _) = setup(12 << 20);
        for at in [5u64, 4096, 200_000] {
            let to = dir.path().join(format!("flip-{at}.zst"));
            let out = archive::create_private(&to).unwrap();
            let wrap: Wrap = Box::new(move |inner| Box::new(FlipBit { inner, seen: 0, at }));
            let err = compress_file_with(&raw, &out, &to, 3, &mut no_cancel(), wrap).unwrap_err();
            match err {
                JobError::VerifyFailed(msg) => assert!(msg.contains("flip-"), "{msg}"),
                other => panic!("flip at {at}: not a verification failure: {other}"),
            }
        }
    }

    #[test]
    fn the_tee_shape_works_with_writes_of_any_size_and_an_empty_input() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample(3 << 20);
        let to = dir.path().join("tee.zst");
        let out = archive::create_private(&to).unwrap();
        let mut zst = Compressor::new(&out, &to, 1, None).unwrap();
        let mut rest = &bytes[..];
        let mut step = 1;
        while !rest.is_empty() {
            let n = step.min(rest.len());
            zst.write_all(&rest[..n]).unwrap();
            rest = &rest[n..];
            step = step * 3 + 1;
        }
        let done = zst.finish().unwrap();
        assert_eq!(done.raw_sha256, archive::hex(&Sha256::digest(&bytes)));
        assert_eq!(
            zstd::decode_all(&std::fs::read(&to).unwrap()[..]).unwrap(),
            bytes
        );

        let to = dir.path().join("empty.zst");
        let out = archive::create_private(&to).unwrap();
        let done = Compressor::new(&out, &to, 3, None)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(done.raw_bytes, 0);
        assert_eq!(done.raw_sha256, archive::hex(&Sha256::digest(b"")));
    }

    #[test]
    fn cancel_stops_the_compression_and_the_checker() {
        let (dir, raw, _) = setup(8 << 20);
        let to = dir.path().join("cancel.zst");
        let out = archive::create_private(&to).unwrap();
        let mut calls = 0;
        let mut cancel = || {
            calls += 1;
            if calls == 3 {
                Err(JobError::Cancelled)
            } else {
                Ok(())
            }
        };
        let err = compress_file(&raw, &out, &to, 3, &mut cancel).unwrap_err();
        assert!(matches!(err, JobError::Cancelled), "{err}");
        assert_eq!(calls, 3);
    }
}
