//! The file copy of a WAL database: the database file read in large blocks with the WAL's
//! frames up to the snapshot's end put in place of the pages they replace, written to the temp
//! file with write-behind. The copy never waits for a hash: it publishes how far the file is
//! final, and its SHA-256 (or the zstd feeder) reads it back behind it (`follow.rs`).
//!
//! Pinning the snapshot: connection A takes the write lock (`BEGIN IMMEDIATE`, honouring
//! busy_timeout), so the wal-index header in `-shm` is stable: it names the last committed
//! frame (`mxFrame`). The job's connection B then starts its read transaction, whose snapshot
//! is exactly that frame; the WAL's frames 1..=mxFrame are scanned and validated (salts,
//! checksum chain, the index's end) while A still holds the lock; A rolls back (writers waited
//! for that long only). While B reads:
//! - a reader on a read mark >= 1 stops any WAL restart, so frames 1..=mxFrame stay as
//!   scanned, and a checkpoint only backfills frames <= B's mark into the database file:
//!   pages this copy takes from the WAL anyway, or copies of the same content;
//! - a reader on read mark 0 (the WAL was wholly checkpointed when B started) reads only the
//!   database file, and no checkpoint may write it (that needs read lock 0 exclusively); the
//!   WAL may then be restarted and overwritten. Every WAL page is checked again when it is
//!   read (salts and checksum chain); one that changed proves this case, and the database file
//!   alone is the snapshot from then on (the frames already taken equal its content).
//!
//! Anything unexpected before the first byte is written (not WAL mode, another VFS, the lock
//! not free within busy_timeout, a WAL or index that does not validate, B's page count not the
//! index's) returns `Fallback` with the reason, and the caller uses SQLite's backup API.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::Connection;

use crate::jobs::{JobCtx, JobError};
use crate::sqlite::quote_ident;
use crate::sqlite::wal::{self, Handles, WalMap};

use super::follow::Written;
use super::writeback::{Flusher, WINDOW};
use super::{sql, Source};

/// Bytes read, substituted and written per step (a multiple of every page size). Measured
/// on the 2-core VM: 1 MiB copies 3-6x faster than 4 MiB blocks (64 KiB-1 MiB are alike).
const BLOCK: usize = 1 << 20;

/// Attempts at the write lock (each waiting up to busy_timeout) before the backup API is
/// used instead.
const LOCK_TRIES: u32 = 3;

/// What the file copy made.
#[derive(Debug)]
pub(super) struct Copied {
    pub page_count: u64,
    pub page_size: u64,
    /// Pages taken from the WAL.
    pub wal_pages: u64,
}

/// Where the source's snapshot is, pinned: B's read transaction is open while this exists.
/// The files are read through SQLite's own descriptors (see `wal::Handles`).
pub(super) struct Pinned<'c> {
    files: Handles<'c>,
    map: Option<WalMap>,
    page_size: u32,
    n_page: u32,
}

/// Copy the pinned snapshot of `source` into `out` (a new, empty temp file at `out_path`),
/// publishing to `written` how far it is final. The read transaction is ended before
/// returning, before any hash, fsync or check of the copy.
pub(super) fn copy(
    ctx: &JobCtx<'_>,
    source: &Source,
    pinned: Pinned<'_>,
    out: &File,
    out_path: &Path,
    written: &Written,
) -> Result<Copied, JobError> {
    let conn: &Connection = ctx.conn;
    let shown = source.path.display().to_string();
    let result = write_copy(ctx, source, &pinned, out, out_path, written);
    // The snapshot is released as soon as the bytes are out, before any fsync or check.
    let end = conn.execute_batch("COMMIT");
    let copied = result?;
    end.map_err(sql(format!("{shown}: end read transaction")))?;
    Ok(copied)
}

/// Pin the snapshot (see the module's doc): the job's connection is in a read transaction
/// on `source` when this returns `Ok(Ok(_))`, and [`copy`] ends it. `Ok(Err(reason))`: a
/// precondition does not hold (nothing pinned), use the backup API.
pub(super) fn pin<'c>(
    ctx: &'c JobCtx<'_>,
    source: &Source,
) -> Result<Result<Pinned<'c>, String>, JobError> {
    let conn: &Connection = ctx.conn;
    let schema = quote_ident(&source.schema);
    let shown = source.path.display().to_string();
    let mode: String = conn
        .query_row(&format!("PRAGMA {schema}.journal_mode"), [], |r| r.get(0))
        .map_err(sql(format!("{shown}: journal_mode")))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Ok(Err(format!("journal_mode is {mode}, not wal")));
    }
    let Some(id) = crate::sqlite::file_id(conn, &source.schema) else {
        return Ok(Err("not opened through SQLite's default unix VFS".into()));
    };
    // By path, symlinks allowed (a fleet's operator may have one above its fixed part): what
    // counts is that it is the very file the job's connection has open, checked below.
    let writer = match Connection::open_with_flags(
        crate::sqlite::uri(&source.path, "rw"),
        crate::sqlite::open_flags(),
    ) {
        Ok(c) => c,
        Err(e) => return Ok(Err(format!("cannot open a second connection ({e})"))),
    };
    writer
        .busy_timeout(ctx.config.daemon.busy_timeout)
        .map_err(sql(format!("{shown}: busy_timeout")))?;
    if crate::sqlite::file_id(&writer, "main") != Some(id) {
        return Ok(Err(
            "the path no longer names the file SQLite has open".into()
        ));
    }
    // A few tries: an app's checkpoint may hold the lock while it waits for readers.
    let mut tries = 0;
    while let Err(e) = writer.execute_batch("BEGIN IMMEDIATE") {
        tries += 1;
        if tries == LOCK_TRIES {
            return Ok(Err(format!(
                "the write lock stayed taken for {LOCK_TRIES} times busy_timeout ({e})"
            )));
        }
        ctx.checkpoint()?;
    }
    // Writers wait from here until the ROLLBACK below.
    if let Err(e) = conn.execute_batch("BEGIN") {
        let _ = writer.execute_batch("ROLLBACK");
        return Err(sql(format!("{shown}: begin read transaction"))(e));
    }
    let pinned = (|| -> Result<Result<Pinned<'c>, String>, JobError> {
        // B's first read: its snapshot is the WAL's end now, which A keeps still.
        let b_pages: i64 = conn
            .query_row(&format!("PRAGMA {schema}.page_count"), [], |r| r.get(0))
            .map_err(sql(format!("{shown}: page_count")))?;
        let Some(files) = wal::handles(conn, &source.schema) else {
            return Ok(Err("not opened through SQLite's default unix VFS".into()));
        };
        let hdr = match files.index_header() {
            Ok(h) => h,
            Err(e) => return Ok(Err(format!("wal-index: {e}"))),
        };
        let mut head = [0u8; 100];
        let db_len = rustix::fs::fstat(files.db)
            .map_err(|e| JobError::Io {
                context: format!("{shown}: stat"),
                source: e.into(),
            })?
            .st_size as u64;
        if db_len >= 100 {
            wal::pread_exact(files.db, &mut head, 0).map_err(|source| JobError::Io {
                context: format!("{shown}: read"),
                source,
            })?;
        }
        let (map, page_size, n_page) = if hdr.mx_frame == 0 {
            let Some(size) = wal::db_page_size(&head) else {
                return Ok(Err("no database header and no WAL frames".into()));
            };
            (None, size, (db_len / u64::from(size)) as u32)
        } else {
            let Some(walfd) = files.wal else {
                return Ok(Err("SQLite has no WAL open".into()));
            };
            if db_len >= 100 && wal::db_page_size(&head) != Some(hdr.page_size) {
                return Ok(Err("the database and WAL page sizes differ".into()));
            }
            match wal::scan(walfd, &hdr) {
                Ok(map) => {
                    let n = map.n_page;
                    (Some(map), hdr.page_size, n)
                }
                Err(e) => return Ok(Err(format!("WAL: {e}"))),
            }
        };
        tracing::debug!(
            "{shown}: snapshot pinned at WAL frame {} ({n_page} pages, {} backfilled, {} WAL \
             pages)",
            hdr.mx_frame,
            hdr.n_backfill,
            map.as_ref().map_or(0, WalMap::len)
        );
        if b_pages != i64::from(n_page) {
            return Ok(Err(format!(
                "the read snapshot has {b_pages} pages, the WAL index {n_page}"
            )));
        }
        Ok(Ok(Pinned {
            files,
            map,
            page_size,
            n_page,
        }))
    })();
    if !matches!(pinned, Ok(Ok(_))) {
        let _ = conn.execute_batch("COMMIT");
    }
    let _ = writer.execute_batch("ROLLBACK");
    drop(writer);
    pinned
}

/// The copy itself, in B's read transaction: read, substitute, write, publish to `written`
/// (its readers follow from the page cache; the copy never waits for them).
fn write_copy(
    ctx: &JobCtx<'_>,
    source: &Source,
    p: &Pinned<'_>,
    out: &File,
    out_path: &Path,
    written: &Written,
) -> Result<Copied, JobError> {
    let shown = source.path.display().to_string();
    let out_err = |what: &str| {
        let context = format!("{}: {what}", out_path.display());
        move |source| JobError::Io { context, source }
    };
    let page = p.page_size as usize;
    let total = u64::from(p.n_page) * page as u64;
    let bar = crate::progress::pages_bar(&source.series, u64::from(p.n_page));
    let mut from_wal = FromWal {
        valid: true,
        pages: 0,
        scratch: vec![0u8; page],
    };
    let flusher = Flusher::start(out);
    let mut buf = Vec::with_capacity(BLOCK);
    let mut offset = 0u64;
    let mut flushed = 0u64;
    while offset < total {
        ctx.checkpoint()?;
        let len = (total - offset).min(BLOCK as u64) as usize;
        buf.resize(len, 0);
        let got = wal::pread_full(p.files.db, &mut buf, offset).map_err(|source| JobError::Io {
            context: format!("{shown}: read"),
            source,
        })?;
        p.put_wal_pages(&mut buf, offset, got, &mut from_wal, &shown)?;
        if offset == 0 {
            wal::set_rollback_journal(&mut buf[..100]);
        }
        out.write_all_at(&buf, offset).map_err(out_err("write"))?;
        offset += len as u64;
        written.publish(offset);
        if offset - flushed >= WINDOW || offset == total {
            flusher.write_behind(flushed, offset - flushed);
            flushed = offset;
        }
        if let Some(bar) = &bar {
            bar.set_position(offset / page as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let len = out.metadata().map_err(out_err("stat"))?.len();
    if len != total {
        return Err(JobError::Io {
            context: format!("{}: wrote {len} bytes of {total}", out_path.display()),
            source: std::io::ErrorKind::WriteZero.into(),
        });
    }
    Ok(Copied {
        page_count: u64::from(p.n_page),
        page_size: u64::from(p.page_size),
        wal_pages: from_wal.pages,
    })
}

/// The WAL's part of the copy so far.
struct FromWal {
    /// False once the WAL was found restarted: the database file alone is the snapshot.
    valid: bool,
    /// Pages taken from the WAL.
    pages: u64,
    scratch: Vec<u8>,
}

impl Pinned<'_> {
    /// Put the snapshot's WAL frames in place of the pages they replace in `buf`, the block
    /// of the database file at `offset` of which `got` bytes were read (the rest, past the
    /// file's end, must come from the WAL, or be the lock-byte page).
    fn put_wal_pages(
        &self,
        buf: &mut [u8],
        offset: u64,
        got: usize,
        wal: &mut FromWal,
        shown: &str,
    ) -> Result<(), JobError> {
        let page = self.page_size as usize;
        let lock_page = wal::lock_byte_page(self.page_size);
        for (i, slot) in buf.chunks_exact_mut(page).enumerate() {
            let pgno = (offset / page as u64) as u32 + i as u32 + 1;
            let frame = if wal.valid {
                self.map.as_ref().and_then(|m| m.frame_of(pgno))
            } else {
                None
            };
            if let (Some(f), Some(map), Some(walf)) = (frame, &self.map, self.files.wal) {
                if map
                    .read_page(walf, f, &mut wal.scratch)
                    .map_err(|e| JobError::Io {
                        context: format!("{shown}-wal: {e}"),
                        source: std::io::Error::other(e.to_string()),
                    })?
                {
                    slot.copy_from_slice(&wal.scratch);
                    wal.pages += 1;
                    continue;
                }
                // Rewritten since the scan: only possible with the reader on read mark 0, so
                // the database file is the snapshot (see the module doc).
                tracing::debug!(
                    "{shown}: WAL restarted during the copy; the database file holds the snapshot"
                );
                wal.valid = false;
            }
            if i * page + page > got {
                if pgno == lock_page {
                    slot.fill(0);
                } else {
                    return Err(JobError::Io {
                        context: format!(
                            "{shown}: page {pgno} is neither in the database file nor in its WAL"
                        ),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
            }
        }
        Ok(())
    }
}
