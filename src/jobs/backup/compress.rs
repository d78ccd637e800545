//! zstd compression of one backup copy on every core, proved by a round trip that follows the
//! compressed file as it is written.
//!
//! A [`Compressor`] follows the raw copy on disk (`follow.rs`): the copy writes its bytes to
//! the raw file and publishes how far it is final ([`Compressor::written`]); it never waits
//! for the compression, so the copy runs at file speed and its snapshot is released as soon
//! as the bytes are out. Behind it:
//!
//! - a feeder thread reads the raw file behind the copy (`pread`: the page cache is the only
//!   buffer, memory does not grow with the file), hashes it (SHA-256: the manifest's
//!   `raw_sha256`; the raw file is read once, for both) and feeds the encoder, which runs on
//!   `zstd_workers()` threads (one zstd frame, `Encoder::multithread`) with the frame's
//!   content checksum (XXH64 of the encoder's input);
//! - a checker thread follows the compressed file as it grows (`pread` behind the writer),
//!   hashes the stored bytes (SHA-256: the manifest's hash is of what was read back from the
//!   file), decompresses them, and has each range it has read written back behind it
//!   (`writeback.rs`: at most two windows queued), so the final fsync only waits for the tail;
//! - [`Compressor::finish`] waits for the end of the frame, fsyncs, waits for the round trip,
//!   and requires the frame to carry its content checksum, the decoder to have accepted it,
//!   and the decompressed size to be the bytes fed: a damaged or truncated frame, or other
//!   bytes, is a failed verification.
//!
//! The proof: the decoder checks the frame's XXH64 against what it decompressed, and that
//! checksum was computed by the encoder over exactly the bytes the feeder hashed into
//! `raw_sha256`. So the stored file decompresses to the bytes of that SHA-256 with no hash of
//! our own over the decompressed side (an XXH3-128 of both sides did the same work again).
//! Beyond the compression the round trip costs one decompression and the SHA-256 of the
//! (smaller) stored file, on whichever core is free.
//!
//! [`compress_file`] drives it from a finished copy on disk; tests use it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::follow::{read_behind, EndOnDrop, Written, CHUNK};
use super::writeback::{Flusher, WINDOW};
use crate::archive;
use crate::jobs::JobError;
use crate::progress::Progress as Bar;

/// At most this many zstd worker threads, whatever the machine has.
const MAX_WORKERS: u32 = 4;

/// What a finished compression stored and proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Compressed {
    /// Size and SHA-256 (hex) of the compressed file, as read back from it.
    pub stored_bytes: u64,
    pub stored_sha256: String,
    /// Size and SHA-256 (hex) of what the stored file decompresses to: the raw file as the
    /// feeder read it.
    pub raw_bytes: u64,
    pub raw_sha256: String,
    /// When the frame was complete, and when the round trip was (since `new`).
    pub compressed_after: Duration,
    pub checked_after: Duration,
}

/// Whether the job was cancelled: asked between chunks by the feeder.
pub(super) type Cancel = Box<dyn Fn() -> bool + Send>;

/// zstd worker threads for this machine: every core, at most [`MAX_WORKERS`].
pub(super) fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(MAX_WORKERS))
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

/// The encoder's output: the file, publishing each write to the checker.
struct FileSink {
    file: File,
    written: u64,
    progress: Arc<Written>,
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
    /// Write-back of the output, started for each range the checker has read.
    flusher: Flusher,
    progress: Arc<Written>,
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
        if self.pos - self.synced >= WINDOW {
            // Start its write-back (at most two windows queued): the final fsync then has
            // little left, and an app's commit does not wait behind the output.
            self.flusher
                .write_behind(self.synced, self.pos - self.synced);
            self.synced = self.pos;
        }
        Ok(n)
    }
}

pub(super) type Wrap = Box<dyn FnOnce(Box<dyn Write + Send>) -> Box<dyn Write + Send>>;

type Encoder = zstd::stream::write::Encoder<'static, Box<dyn Write + Send>>;

/// Why the feeder stopped early.
enum FeedError {
    /// Reading the raw copy failed (or it ended before the bytes the copy published).
    Read(io::Error),
    /// Compressing into the output file failed.
    Write(io::Error),
    Cancelled,
}

/// What the feeder shares with the compressor: a stop request, and how far it compressed
/// (for the progress line).
#[derive(Default)]
struct FeedState {
    stop: AtomicBool,
    done: AtomicU64,
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

/// Streaming zstd compressor of one backup copy into one file; see the module doc.
pub(super) struct Compressor {
    /// How far the raw copy is final: published by the copy, followed by the feeder.
    raw: Arc<Written>,
    raw_path: PathBuf,
    state: Arc<FeedState>,
    feeder: Option<JoinHandle<Result<(u64, String), FeedError>>>,
    started: Instant,
    checker: Option<JoinHandle<io::Result<RoundTrip>>>,
    file: File,
    path: PathBuf,
    label: String,
}

impl Compressor {
    /// Compress the raw copy being written at `raw` into `out` (a new, empty file at `path`)
    /// at `level`, following it as the copy publishes through [`Compressor::written`].
    /// `size`, when known, is recorded in the frame header (the exact number of bytes that
    /// will be published). `label` names the copy on the progress line.
    pub(super) fn new(
        raw: &Path,
        out: &File,
        path: &Path,
        level: i32,
        size: Option<u64>,
        label: &str,
        cancel: Cancel,
    ) -> Result<Compressor, JobError> {
        Self::with_sink(raw, out, path, level, size, label, cancel, Box::new(|w| w))
    }

    /// As `new`, with `wrap` between the encoder and the file (tests corrupt bytes there).
    #[allow(clippy::too_many_arguments)]
    fn with_sink(
        raw: &Path,
        out: &File,
        path: &Path,
        level: i32,
        size: Option<u64>,
        label: &str,
        cancel: Cancel,
        wrap: Wrap,
    ) -> Result<Compressor, JobError> {
        let io = |p: &Path, what: &str| {
            let context = format!("{}: {what}", p.display());
            move |source| JobError::Io { context, source }
        };
        let file = out.try_clone().map_err(io(path, "open"))?;
        let started = Instant::now();
        let written = Arc::new(Written::default());
        let sink = FileSink {
            file: out.try_clone().map_err(io(path, "open"))?,
            written: 0,
            progress: written.clone(),
        };
        let mut enc = Encoder::new(wrap(Box::new(sink)), level).map_err(io(path, "zstd"))?;
        enc.multithread(zstd_workers())
            .map_err(io(path, "zstd workers"))?;
        enc.include_checksum(true).map_err(io(path, "zstd"))?;
        if size.is_some() {
            enc.set_pledged_src_size(size).map_err(io(path, "zstd"))?;
        }
        let input = File::open(raw).map_err(io(raw, "open for compression"))?;
        let read_back = File::open(path).map_err(io(path, "open for the round trip"))?;
        let tail = Tail {
            flusher: Flusher::start(&read_back),
            file: read_back,
            pos: 0,
            synced: 0,
            progress: written.clone(),
            hash: Sha256::new(),
        };
        let checker = std::thread::Builder::new()
            .name("zstd-check".into())
            .spawn(move || round_trip(tail))
            .map_err(io(path, "start the round-trip thread"))?;
        let raw_progress = Arc::new(Written::default());
        let state = Arc::new(FeedState::default());
        let feeder = {
            let (raw_progress, state) = (raw_progress.clone(), state.clone());
            let ended = EndOnDrop(written);
            std::thread::Builder::new()
                .name("zstd-feed".into())
                .spawn(move || {
                    let _ended = ended;
                    feed(&input, &raw_progress, enc, &state, &cancel)
                })
        };
        let feeder = match feeder {
            Ok(f) => f,
            Err(e) => {
                // The encoder and the sink went with the closure: the checker sees the end.
                let _ = checker.join();
                return Err(io(path, "start the compression thread")(e));
            }
        };
        Ok(Compressor {
            raw: raw_progress,
            raw_path: raw.to_path_buf(),
            state,
            feeder: Some(feeder),
            started,
            checker: Some(checker),
            file,
            path: path.to_path_buf(),
            label: label.to_string(),
        })
    }

    /// Where the copy publishes how far the raw file is final (in order, never beyond what
    /// is in the file).
    pub(super) fn written(&self) -> &Written {
        &self.raw
    }

    /// The raw copy is complete: wait for the end of the frame, fsync the file and wait for
    /// the round trip. Errors: `JobError::Io` when the raw copy could not be read or the file
    /// written, `JobError::Cancelled`, `JobError::VerifyFailed` when the stored bytes do not
    /// decompress (damaged or truncated frame, wrong or missing content checksum) or
    /// decompress to another size than the bytes fed.
    pub(super) fn finish(mut self) -> Result<Compressed, JobError> {
        let shown = self.path.display().to_string();
        let io = |what: &str| {
            let context = format!("{shown}: {what}");
            move |source| JobError::Io { context, source }
        };
        self.raw.end();
        let bar = Bar::counted(
            format!("backup {} zstd:", self.label),
            "MiB compressed",
            self.raw.beyond(u64::MAX) >> 20,
        );
        if let Some(b) = bar.handle() {
            b.set_position(self.state.done.load(Ordering::Relaxed) >> 20);
            *self.state.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(b);
        }
        let fed = self
            .feeder
            .take()
            .expect("finish runs once")
            .join()
            .expect("compression thread");
        drop(bar);
        let compressed_after = self.started.elapsed();
        // The checker reads the tail while the file syncs.
        let synced = match fed {
            Ok(_) => self.file.sync_all(),
            Err(_) => Ok(()),
        };
        let checked = self
            .checker
            .take()
            .expect("finish runs once")
            .join()
            .expect("round-trip thread");
        let checked_after = self.started.elapsed();
        let (fed, raw_sha256) = match fed {
            Ok(f) => f,
            Err(FeedError::Cancelled) => return Err(JobError::Cancelled),
            Err(FeedError::Read(source)) => {
                return Err(JobError::Io {
                    context: format!("{}: read for compression", self.raw_path.display()),
                    source,
                })
            }
            Err(FeedError::Write(e)) => return Err(io("write")(e)),
        };
        synced.map_err(io("fsync"))?;
        let rt = checked.map_err(|e| {
            JobError::VerifyFailed(format!(
                "{shown}: the compressed copy does not decompress ({e})"
            ))
        })?;
        if !rt.checksummed {
            return Err(JobError::VerifyFailed(format!(
                "{shown}: the compressed copy's frame carries no content checksum, so its \
                 round trip proves nothing"
            )));
        }
        if rt.raw_bytes != fed {
            return Err(JobError::VerifyFailed(format!(
                "{shown}: the compressed copy decompresses to {} bytes, the copy has {fed}",
                rt.raw_bytes
            )));
        }
        Ok(Compressed {
            stored_bytes: rt.stored_bytes,
            stored_sha256: rt.stored_sha256,
            raw_bytes: rt.raw_bytes,
            raw_sha256,
            compressed_after,
            checked_after,
        })
    }
}

impl Drop for Compressor {
    /// Dropped unfinished (an error elsewhere): the feeder stops at its next chunk, and the
    /// checker sees the end.
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        self.raw.end();
        if let Some(feeder) = self.feeder.take() {
            let _ = feeder.join();
        }
        if let Some(checker) = self.checker.take() {
            let _ = checker.join();
        }
    }
}

/// The feeder thread: read the raw copy behind the copy, hash it and feed it to the encoder,
/// to the end the copy published; the bytes compressed and their SHA-256.
fn feed(
    input: &File,
    raw: &Written,
    mut enc: Encoder,
    state: &FeedState,
    cancel: &Cancel,
) -> Result<(u64, String), FeedError> {
    let mut hash = Sha256::new();
    let mut failed = None;
    let mut bar_at = 0u64;
    let stop = || state.stop.load(Ordering::Relaxed) || cancel();
    let read = read_behind(input, raw, stop, |chunk| {
        if failed.is_some() {
            return;
        }
        hash.update(chunk);
        if let Err(e) = enc.write_all(chunk) {
            failed = Some(e);
            state.stop.store(true, Ordering::Relaxed);
            return;
        }
        bar_at += chunk.len() as u64;
        state.done.store(bar_at, Ordering::Relaxed);
        if let Some(b) = &*state.bar.lock().unwrap_or_else(|e| e.into_inner()) {
            b.set_position(bar_at >> 20);
        }
    });
    if let Some(e) = failed {
        return Err(FeedError::Write(e));
    }
    let pos = match read {
        Ok(pos) => pos,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(FeedError::Cancelled),
        Err(e) => return Err(FeedError::Read(e)),
    };
    enc.finish()
        .and_then(|mut w| w.flush())
        .map_err(FeedError::Write)?;
    Ok((pos, archive::hex(&hash.finalize())))
}

/// What the checker read and decompressed.
struct RoundTrip {
    stored_bytes: u64,
    stored_sha256: String,
    raw_bytes: u64,
    /// The first frame's header announces a content checksum (which the decoder then
    /// checked).
    checksummed: bool,
}

/// The checker thread: decompress the file as it grows (the decoder checks the frame's
/// content checksum), hashing the stored side.
fn round_trip(tail: Tail) -> io::Result<RoundTrip> {
    let mut dec = zstd::stream::read::Decoder::new(tail)?;
    let mut raw_bytes = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = dec.read(&mut buf)?;
        if n == 0 {
            break;
        }
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
    // Magic (4 bytes), then the frame header descriptor: bit 2 is Content_Checksum_flag.
    let mut head = [0u8; 5];
    let checksummed = tail.pos >= 5
        && tail.file.read_exact_at(&mut head, 0).is_ok()
        && head[..4] == zstd::zstd_safe::MAGICNUMBER.to_le_bytes()
        && head[4] & 0x04 != 0;
    Ok(RoundTrip {
        stored_bytes: tail.pos,
        stored_sha256: archive::hex(&tail.hash.finalize()),
        raw_bytes,
        checksummed,
    })
}

/// Compress the finished copy `from` into `out` (a new file at `to`), publishing its bytes to
/// the compressor in chunks as a copy would; `checkpoint` runs between chunks (cancel).
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
    let size = std::fs::metadata(from)
        .map_err(|source| JobError::Io {
            context: format!("{}: stat", from.display()),
            source,
        })?
        .len();
    let zst = Compressor::with_sink(
        from,
        out,
        to,
        level,
        Some(size),
        "test",
        Box::new(|| false),
        wrap,
    )?;
    let mut published = 0u64;
    while published < size {
        published = (published + CHUNK as u64).min(size);
        zst.written().publish(published);
        checkpoint()?;
    }
    zst.finish()
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

    /// Stores only the first `keep` bytes of the stream (and says it wrote them all).
    struct Truncate {
        inner: Box<dyn Write + Send>,
        seen: u64,
        keep: u64,
    }

    impl Write for Truncate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = usize::try_from(self.keep.saturating_sub(self.seen)).unwrap_or(usize::MAX);
            self.inner.write_all(&buf[..room.min(buf.len())])?;
            self.seen += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    fn verify_failed(err: JobError, what: &str) -> String {
        match err {
            JobError::VerifyFailed(msg) => msg,
            other => panic!("{what}: not a verification failure: {other}"),
        }
    }

    #[test]
    fn round_trip_gives_the_hashes_of_both_sides() {
        let (dir, raw, bytes) = setup(24 << 20);
        let to = dir.path().join("copy.db.zst");
        let out = archive::create_private(&to).unwrap();
        let done = compress_file(&raw, &out, &to, 3, &mut no_cancel()).unwrap();
        let raw_sha = done.raw_sha256.clone();
        let stored = std::fs::read(&to).unwrap();
        assert_eq!(done.stored_bytes, stored.len() as u64);
        assert_eq!(done.stored_sha256, archive::hex(&Sha256::digest(&stored)));
        assert_eq!(done.raw_bytes, bytes.len() as u64);
        assert_eq!(raw_sha, archive::hex(&Sha256::digest(&bytes)));
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
            let msg = verify_failed(err, &format!("flip at {at}"));
            assert!(msg.contains("flip-"), "{msg}");
        }
    }

    /// A frame cut short (the end of the stream lost: the last job, the checksum, or only
    /// its last byte) does not decompress, and says so.
    #[test]
    fn a_truncated_frame_fails_the_round_trip() {
        let (dir, raw, _) = setup(4 << 20);
        let to = dir.path().join("whole.zst");
        let out = archive::create_private(&to).unwrap();
        let done = compress_file(&raw, &out, &to, 3, &mut no_cancel()).unwrap();
        // The workers' output does not depend on their timing: every run stores these bytes.
        let whole = done.stored_bytes;
        for keep in [0u64, 1000, whole / 2, whole - 4, whole - 1] {
            let to = dir.path().join(format!("cut-{keep}.zst"));
            let out = archive::create_private(&to).unwrap();
            let wrap: Wrap = Box::new(move |inner| {
                Box::new(Truncate {
                    inner,
                    seen: 0,
                    keep,
                })
            });
            let err = compress_file_with(&raw, &out, &to, 3, &mut no_cancel(), wrap).unwrap_err();
            let msg = verify_failed(err, &format!("cut at {keep}"));
            assert!(msg.contains("does not decompress"), "cut at {keep}: {msg}");
            assert_eq!(std::fs::metadata(&to).unwrap().len(), keep);
        }
    }

    /// A frame without its content checksum proves nothing (the decoder would have nothing
    /// to check the decompressed bytes against): refused, even though it decompresses.
    #[test]
    fn a_frame_without_its_content_checksum_fails_the_round_trip() {
        let (dir, raw, _) = setup(2 << 20);
        let to = dir.path().join("no-sum.zst");
        let out = archive::create_private(&to).unwrap();
        // Clear Content_Checksum_flag in the frame header and drop the 4 checksum bytes.
        let wrap: Wrap = Box::new(|inner| {
            Box::new(NoChecksum {
                inner,
                seen: Vec::new(),
            })
        });
        let err = compress_file_with(&raw, &out, &to, 3, &mut no_cancel(), wrap).unwrap_err();
        let msg = verify_failed(err, "no checksum");
        assert!(msg.contains("carries no content checksum"), "{msg}");
        let stored = std::fs::read(&to).unwrap();
        assert_eq!(
            zstd::decode_all(&stored[..]).unwrap(),
            std::fs::read(&raw).unwrap()
        );
    }

    /// Rewrites a whole one-frame stream as the same frame without its content checksum
    /// (buffers everything, writes it at flush).
    struct NoChecksum {
        inner: Box<dyn Write + Send>,
        seen: Vec<u8>,
    }

    impl Write for NoChecksum {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.seen.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            if self.seen.len() > 8 {
                let mut b = std::mem::take(&mut self.seen);
                b[4] &= !0x04;
                b.truncate(b.len() - 4);
                self.inner.write_all(&b)?;
            }
            self.inner.flush()
        }
    }

    /// The compressor hashes what it read behind the writer: written and published in odd
    /// pieces while it runs, the raw SHA-256 is the file's, and the stored file decompresses
    /// to it. A writer that publishes more than the file holds cannot be compressed.
    #[test]
    fn the_raw_hash_is_of_the_file_read_behind_the_writer() {
        let (dir, _, bytes) = setup(7 << 20);
        let raw = dir.path().join("growing.db");
        let mut file = File::create(&raw).unwrap();
        let to = dir.path().join("growing.zst");
        let out = archive::create_private(&to).unwrap();
        let zst = Compressor::new(&raw, &out, &to, 3, None, "t", Box::new(|| false)).unwrap();
        let (mut done, mut step) = (0usize, 1usize);
        while done < bytes.len() {
            let n = step.min(bytes.len() - done);
            file.write_all(&bytes[done..done + n]).unwrap();
            done += n;
            zst.written().publish(done as u64);
            step = if step > 2 << 20 { 100 } else { step * 7 + 3 };
        }
        let c = zst.finish().unwrap();
        assert_eq!(c.raw_bytes, bytes.len() as u64);
        assert_eq!(c.raw_sha256, archive::hex(&Sha256::digest(&bytes)));
        assert_eq!(
            zstd::decode_all(&std::fs::read(&to).unwrap()[..]).unwrap(),
            bytes
        );

        let to = dir.path().join("long.zst");
        let out = archive::create_private(&to).unwrap();
        let zst = Compressor::new(&raw, &out, &to, 3, None, "t", Box::new(|| false)).unwrap();
        zst.written().publish(bytes.len() as u64 + 4);
        match zst.finish().unwrap_err() {
            JobError::Io { context, source } => {
                assert!(
                    context.contains("growing.db: read for compression"),
                    "{context}"
                );
                assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
            }
            other => panic!("not a read error: {other}"),
        }
    }

    #[test]
    fn an_empty_input_compresses_to_an_empty_frame() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let to = dir.path().join("empty.zst");
        let out = archive::create_private(&to).unwrap();
        let done = Compressor::new(&empty, &out, &to, 3, None, "t", Box::new(|| false))
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(done.raw_bytes, 0);
        assert_eq!(done.raw_sha256, archive::hex(&Sha256::digest(b"")));
        assert!(zstd::decode_all(&std::fs::read(&to).unwrap()[..])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn cancel_stops_the_compression_and_the_checker() {
        let (dir, raw, bytes) = setup(8 << 20);
        // Between the copy's chunks: the compressor is dropped unfinished.
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

        // While it compresses after the copy: the feeder asks between chunks.
        let to = dir.path().join("cancel2.zst");
        let out = archive::create_private(&to).unwrap();
        let asked = Arc::new(AtomicU64::new(0));
        let counted = asked.clone();
        let cancel: Cancel = Box::new(move || counted.fetch_add(1, Ordering::Relaxed) >= 2);
        let zst = Compressor::new(&raw, &out, &to, 3, None, "t", cancel).unwrap();
        zst.written().publish(bytes.len() as u64);
        let err = zst.finish().unwrap_err();
        assert!(matches!(err, JobError::Cancelled), "{err}");
        assert_eq!(
            asked.load(Ordering::Relaxed),
            3,
            "stopped at the third chunk"
        );
    }
}
