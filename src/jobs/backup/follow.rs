//! A file being written and the threads that read it behind its writer.
//!
//! The writer publishes how far the file is final ([`Written::publish`]) and never waits for
//! a reader; a reader blocks in [`Written::beyond`] until there is more, and `pread`s it back
//! from the page cache (memory does not grow with the file). The backup's copy writes its temp
//! file at file speed this way while its SHA-256 ([`HashBehind`]) or the zstd feeder
//! (`compress.rs`) follows: the copy's snapshot is released when its last byte is written,
//! and the checks of the copy start then, overlapping the rest of the hash and the fsync.
//!
//! What is hashed is what was read back from the file, the bytes every later reader (the
//! checks, the compressor, a restore) sees.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::archive;

/// Bytes read back per step.
pub(super) const CHUNK: usize = 1 << 20;

/// How far a file is final, shared by its writer and the threads that read behind it.
#[derive(Default)]
pub(super) struct Written {
    state: Mutex<(u64, bool)>, // (bytes final in the file, writer done or gone)
    moved: Condvar,
}

impl Written {
    /// The file's first `written` bytes are final.
    pub(super) fn publish(&self, written: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 = written;
        self.moved.notify_all();
    }

    /// The writer is done (finished, or gone): readers read to what was published.
    pub(super) fn end(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.moved.notify_all();
    }

    /// Block until more than `pos` bytes are final or the writer is done; the bytes final so
    /// far.
    pub(super) fn beyond(&self, pos: u64) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.0 <= pos && !s.1 {
            s = self.moved.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.0
    }
}

/// Ends a [`Written`] when dropped: its readers see the end however the writer stops.
pub(super) struct EndOnDrop(pub Arc<Written>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// What a reader behind the writer hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hashed {
    /// SHA-256 (hex) of the bytes read back.
    pub sha256: String,
    pub bytes: u64,
    /// How long the reader ran, from its start to its last byte.
    pub took: Duration,
}

/// SHA-256 of a file computed on its own thread, reading behind the writer; see the module
/// doc. Dropped unfinished (the copy failed), it stops at its next chunk.
pub(super) struct HashBehind {
    written: Arc<Written>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<io::Result<Hashed>>>,
}

impl HashBehind {
    /// Start hashing `file` (open for reading) as its writer publishes through
    /// [`HashBehind::written`].
    pub(super) fn start(file: File) -> io::Result<HashBehind> {
        let written = Arc::new(Written::default());
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (written, stop) = (written.clone(), stop.clone());
            std::thread::Builder::new()
                .name("copy-sha256".into())
                .spawn(move || {
                    let mut h = Sha256::new();
                    let started = Instant::now();
                    let bytes = read_behind(
                        &file,
                        &written,
                        || stop.load(Ordering::Relaxed),
                        |b| h.update(b),
                    )?;
                    Ok(Hashed {
                        sha256: archive::hex(&h.finalize()),
                        bytes,
                        took: started.elapsed(),
                    })
                })?
        };
        Ok(HashBehind {
            written,
            stop,
            handle: Some(handle),
        })
    }

    /// Where the writer publishes how far the file is final.
    pub(super) fn written(&self) -> &Written {
        &self.written
    }

    /// The writer is done: wait for the hash of everything it published.
    pub(super) fn finish(mut self) -> io::Result<Hashed> {
        self.written.end();
        self.handle
            .take()
            .expect("finish runs once")
            .join()
            .expect("hash thread")
    }
}

impl Drop for HashBehind {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.stop.store(true, Ordering::Relaxed);
            self.written.end();
            let _ = h.join();
        }
    }
}

/// Read `file` behind its writer to the end it publishes, handing each chunk to `each`; the
/// bytes read. A file shorter than what was published is an error (`UnexpectedEof`); `stop`
/// interrupts it between chunks (`Interrupted`).
pub(super) fn read_behind(
    file: &File,
    written: &Written,
    stop: impl Fn() -> bool,
    mut each: impl FnMut(&[u8]),
) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = 0u64;
    loop {
        let ready = written.beyond(pos);
        if stop() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if ready <= pos {
            return Ok(pos);
        }
        let n = usize::try_from(ready - pos).unwrap_or(CHUNK).min(CHUNK);
        file.read_exact_at(&mut buf[..n], pos)?;
        each(&buf[..n]);
        pos += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The writer runs ahead and behind the hash (odd sizes, pauses): the hash is that of
    /// the whole file, as `sha256sum` gives it.
    #[test]
    fn the_hash_of_a_file_written_while_the_hash_lags_is_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy.db");
        let mut out = File::create(&path).unwrap();
        let hash = HashBehind::start(File::open(&path).unwrap()).unwrap();
        let bytes = super::super::compress::tests::sample((9 << 20) + 12_345);
        let mut done = 0usize;
        let mut step = 1usize;
        while done < bytes.len() {
            let n = step.min(bytes.len() - done);
            out.write_all(&bytes[done..done + n]).unwrap();
            done += n;
            hash.written().publish(done as u64);
            step = step * 5 + 7;
            if step > 3 << 20 {
                step = 4096;
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let got = hash.finish().unwrap();
        assert_eq!(got.bytes, bytes.len() as u64);
        assert_eq!(got.sha256, archive::hex(&Sha256::digest(&bytes)));
        // What sha256sum(1) says of the file.
        let sum = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        let sum = String::from_utf8(sum.stdout).unwrap();
        assert_eq!(sum.split_whitespace().next().unwrap(), got.sha256);
    }

    /// A writer that publishes more than the file holds: the hash fails, it never hashes
    /// bytes that are not there.
    #[test]
    fn a_file_shorter_than_published_fails_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.db");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let hash = HashBehind::start(File::open(&path).unwrap()).unwrap();
        hash.written().publish(6000);
        let err = hash.finish().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// Dropped before the writer is done (the copy failed): the thread stops, nothing hangs.
    #[test]
    fn dropping_an_unfinished_hash_stops_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part.db");
        std::fs::write(&path, vec![1u8; 3 << 20]).unwrap();
        let hash = HashBehind::start(File::open(&path).unwrap()).unwrap();
        hash.written().publish(1 << 20);
        drop(hash);
    }
}
