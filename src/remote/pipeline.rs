//! The streaming pipeline of one copy: the verified local file → zstd (unless already
//! compressed) → age encryption → SHA-256 of the stored bytes → a multipart upload in 8 MiB
//! parts, at most two in flight; memory stays bounded whatever the file's size. The object is
//! then read back, streaming, and its SHA-256 and size compared. Both run under the remote's
//! `rate_limit` when it has one (`Pace`). `download` is the reverse for restore: to a temp
//! file, checked against the manifest's SHA-256, then decrypted and decompressed.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::str::FromStr;
use std::time::{Duration, Instant};

use object_store::WriteMultipart;
use sha2::{Digest, Sha256};

use super::store::{RemoteError, Store};
use crate::domain::ExitCode;

/// Size of one part of a multipart upload.
pub(super) const PART: usize = 8 << 20;
/// Parts in flight at once.
const IN_FLIGHT: usize = 2;

/// One object stored and checked.
#[derive(Debug, Clone)]
pub(crate) struct Uploaded {
    /// Bytes stored (encrypted).
    pub size: u64,
    /// SHA-256 of the stored bytes, checked by reading them back.
    pub sha256: String,
}

/// The end of the pipeline: hashes what is stored and feeds the multipart upload.
struct Parts<'a> {
    store: &'a Store,
    upload: Option<WriteMultipart>,
    hasher: Sha256,
    size: u64,
    failed: Option<object_store::Error>,
    pace: Pace,
}

/// The remote's `rate_limit`: how long to wait so that the bytes moved since `start` stay
/// under the rate. The pipeline then works in short bursts with idle time between them, which
/// also leaves the CPU to the app (benches/RESULTS.md: on a 2-vCPU VM an upload keeping both
/// vCPUs busy made every app fsync wait, whatever the upload's priority).
struct Pace {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Pace {
    fn new(store: &Store) -> Pace {
        Pace {
            rate: store.remote.rate_limit,
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// `n` more bytes moved: the time to wait before the next ones (zero when on pace).
    fn wait_after(&mut self, n: usize) -> Duration {
        self.bytes += n as u64;
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        due.saturating_sub(self.start.elapsed())
    }
}

impl Write for Parts<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let w = self.upload.as_mut().expect("upload open");
        if let Err(e) = self.store.block_on(w.wait_for_capacity(IN_FLIGHT)) {
            let msg = e.to_string();
            self.failed = Some(e);
            return Err(io::Error::other(msg));
        }
        // A full part is spawned as an upload task: on the store's runtime, never the
        // caller's (`backups push` has none; a job's blocking thread has the daemon's).
        let _rt = self.store.rt.enter();
        w.write(buf);
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        let wait = self.pace.wait_after(buf.len());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn recipients(store: &Store) -> Result<Vec<age::x25519::Recipient>, RemoteError> {
    store
        .remote
        .recipients
        .iter()
        .map(|r| {
            age::x25519::Recipient::from_str(r).map_err(|e| {
                store
                    .other("reading encrypt_to", e.to_string(), ExitCode::Config)
                    .of_kind(super::Kind::Keys)
            })
        })
        .collect()
}

/// Upload `src` as `key`, compressing first when `compress`, and check what was stored.
/// The bytes read from `src` must be the verified backup (`src_sha256`, the local manifest's):
/// a file changed or damaged since is not stored (the upload is aborted).
/// The work runs on a thread of its own at the upload's lower priority (`priority`).
pub(super) fn upload(
    store: &Store,
    key: &str,
    src: &Path,
    src_sha256: &str,
    compress: bool,
) -> Result<Uploaded, RemoteError> {
    super::priority::in_background(|| upload_here(store, key, src, src_sha256, compress))
}

fn upload_here(
    store: &Store,
    key: &str,
    src: &Path,
    src_sha256: &str,
    compress: bool,
) -> Result<Uploaded, RemoteError> {
    let what = format!("uploading {key}");
    let recipients = recipients(store)?;
    let file = File::open(src)
        .map_err(|e| store.other(&what, format!("{}: {e}", src.display()), ExitCode::NoInput))?;
    // The local file's bytes hashed as they enter the pipeline.
    let mut input = crate::archive::Sha256Reader::new(file);
    let path = Store::path(key);
    let upload = store
        .block_on(store.inner.put_multipart(&path))
        .map_err(|e| store.error(&what, &e))?;
    let mut parts = Parts {
        store,
        upload: Some(WriteMultipart::new_with_chunk_size(upload, PART)),
        hasher: Sha256::new(),
        size: 0,
        failed: None,
        pace: Pace::new(store),
    };
    let streamed = stream(&mut input, &mut parts, &recipients, compress);
    let Parts {
        upload,
        hasher,
        size,
        failed,
        ..
    } = parts;
    let upload = upload.expect("upload open");
    if let Err(e) = streamed {
        let _ = store.block_on(upload.abort());
        return Err(match failed {
            Some(f) => store.error(&what, &f),
            None => store.other(&what, e.to_string(), ExitCode::IoErr),
        });
    }
    let read = input.hex();
    if read != src_sha256 {
        let _ = store.block_on(upload.abort());
        return Err(store
            .other(
                &what,
                format!(
                    "{}: SHA-256 {read} is not the {src_sha256} recorded when it was verified: the local backup changed or was damaged since, and is not stored; take a new backup",
                    src.display()
                ),
                ExitCode::DataErr,
            )
            .of_kind(super::Kind::Damaged));
    }
    store
        .block_on(upload.finish())
        .map_err(|e| store.error(&what, &e))?;
    let sha256 = crate::archive::hex(&hasher.finalize());
    let (got_sha, got_size) = read_back(store, key)?;
    if got_sha != sha256 || got_size != size {
        return Err(store.other(
            format!("checking {key}"),
            format!("the stored object differs from what was sent ({got_size} bytes, sha256 {got_sha}; sent {size} bytes, sha256 {sha256})"),
            ExitCode::DataErr,
        ).of_kind(super::Kind::Damaged));
    }
    Ok(Uploaded { size, sha256 })
}

/// file → [zstd] → age → `out`.
fn stream(
    input: &mut impl Read,
    out: &mut Parts<'_>,
    recipients: &[age::x25519::Recipient],
    compress: bool,
) -> io::Result<()> {
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(io::Error::other)?;
    let mut sealed = enc.wrap_output(out)?;
    if compress {
        let mut z = zstd::Encoder::new(&mut sealed, 3)?;
        io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut z)?;
        z.finish()?;
    } else {
        io::copy(&mut BufReader::with_capacity(1 << 20, input), &mut sealed)?;
    }
    sealed.finish()?;
    Ok(())
}

/// SHA-256 and size of an object, streamed.
pub(crate) fn read_back(store: &Store, key: &str) -> Result<(String, u64), RemoteError> {
    use futures::StreamExt;
    let what = format!("reading back {key}");
    store.block_on(async {
        let got = store
            .inner
            .get(&Store::path(key))
            .await
            .map_err(|e| store.error(&what, &e))?;
        let mut s = got.into_stream();
        let mut h = Sha256::new();
        let mut n = 0u64;
        let mut pace = Pace::new(store);
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| store.error(&what, &e))?;
            h.update(&chunk);
            n += chunk.len() as u64;
            let wait = pace.wait_after(chunk.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        Ok((crate::archive::hex(&h.finalize()), n))
    })
}

/// What one download took, after fetching (download and SHA-256 of the stored bytes):
/// decrypt, the time inside the age reader; decode, the rest of the pass (decompressing and
/// writing to `out`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Downloaded {
    pub decrypt: Duration,
    pub decode: Duration,
}

/// A reader that adds the time spent in its reads to a shared total.
struct Timed<R> {
    inner: R,
    spent: Rc<Cell<Duration>>,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = Instant::now();
        let n = self.inner.read(buf);
        self.spent.set(self.spent.get() + t.elapsed());
        n
    }
}

/// Download `copy` into `tmp` (created here, 0600), checking the stored bytes against the
/// manifest's SHA-256; then decrypt with `identities` and write the local backup file it was
/// made from into `out` (decompressing what the upload compressed), checked against the
/// source's SHA-256. Nothing is decrypted unless the stored bytes are the recorded ones.
pub(crate) fn download(
    store: &Store,
    database: &str,
    copy: &super::Copy,
    tmp: &Path,
    identities: &[Box<dyn age::Identity>],
    out: &mut dyn Write,
) -> Result<Downloaded, RemoteError> {
    let clock = Instant::now();
    fetch_checked(store, database, copy, tmp)?;
    let fetch = clock.elapsed();
    let key = store.key(database, &copy.object);
    let what = format!("downloading {key}");
    let damaged = |step: &str, e: String| {
        store
            .other(format!("{step} {key}"), e, ExitCode::DataErr)
            .of_kind(super::Kind::Damaged)
    };
    let input = File::open(tmp).map_err(|e| store.other(&what, e.to_string(), ExitCode::IoErr))?;
    let dec = age::Decryptor::new(BufReader::new(input))
        .map_err(|e| damaged("decrypting", e.to_string()))?;
    let plain = dec
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| {
            damaged(
                "decrypting",
                format!("{e} (is --identity the key whose recipient is in encrypt_to?)"),
            )
        })?;
    let decrypting = Rc::new(Cell::new(Duration::ZERO));
    let plain = Timed {
        inner: plain,
        spent: decrypting.clone(),
    };
    let mut h = Sha256::new();
    let mut reader: Box<dyn Read> = if copy.local_file.ends_with(".zst") {
        Box::new(plain)
    } else {
        Box::new(zstd::Decoder::new(plain).map_err(|e| damaged("decompressing", e.to_string()))?)
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = reader
            .read(&mut buf)
            .map_err(|e| damaged("decrypting and decompressing", e.to_string()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k])
            .map_err(|e| store.other(&what, e.to_string(), ExitCode::IoErr))?;
    }
    let local = crate::archive::hex(&h.finalize());
    if local != copy.source_sha256 {
        return Err(damaged(
            "checking",
            format!(
                "the decrypted copy's SHA-256 {local} is not its backup's {}",
                copy.source_sha256
            ),
        ));
    }
    let decrypt = decrypting.get();
    Ok(Downloaded {
        decrypt,
        decode: clock.elapsed().saturating_sub(fetch + decrypt),
    })
}

/// Stream the object of `copy` into the new file `tmp`; its SHA-256 must be the manifest's.
fn fetch_checked(
    store: &Store,
    database: &str,
    copy: &super::Copy,
    tmp: &Path,
) -> Result<(), RemoteError> {
    use futures::StreamExt;
    let key = store.key(database, &copy.object);
    let what = format!("downloading {key}");
    let mut file = crate::archive::create_private(tmp)
        .map_err(|e| store.other(&what, e.to_string(), ExitCode::CantCreate))?;
    let got = store.block_on(async {
        let got = store
            .inner
            .get(&Store::path(&key))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => store.other(
                    &what,
                    "the manifest lists it but it is not in the store (deleted by hand?)",
                    ExitCode::DataErr,
                ),
                e => store.error(&what, &e),
            })?;
        let mut s = got.into_stream();
        let mut h = Sha256::new();
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| store.error(&what, &e))?;
            h.update(&chunk);
            file.write_all(&chunk).map_err(|e| {
                store.other(&what, format!("{}: {e}", tmp.display()), ExitCode::IoErr)
            })?;
        }
        Ok::<_, RemoteError>(crate::archive::hex(&h.finalize()))
    })?;
    if got != copy.sha256 {
        return Err(store.other(
            format!("checking {key}"),
            format!(
                "SHA-256 {got} is not the recorded {}: the object was changed or damaged in the store",
                copy.sha256
            ),
            ExitCode::DataErr,
        ));
    }
    Ok(())
}
