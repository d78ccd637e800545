//! SQLite's WAL file format, read only: the wal-index header in `-shm`, the WAL header and its
//! frames with their salts and cumulative checksums (<https://sqlite.org/fileformat2.html>,
//! section 4, and `wal.c`), and the page size in a database header.
//!
//! Nothing here takes a lock: the caller holds the locks that make what it reads stable (see
//! `jobs::backup::filecopy`). Every structure read is checked the way SQLite checks it (the
//! two header copies and their checksum, the salts, the checksum chain), so a torn or stale
//! read is an error, never a wrong page.

use std::collections::HashMap;
use std::ffi::{c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::os::fd::BorrowedFd;

use rusqlite::{ffi, Connection};

/// `WALINDEX_MAX_VERSION`, the only wal-index version there is.
const WALINDEX_VERSION: u32 = 3_007_000;
/// The WAL file format version (`WAL_MAX_VERSION`).
const WAL_VERSION: u32 = 3_007_000;
const WAL_MAGIC: u32 = 0x377f_0682;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;
/// One copy of `WalIndexHdr` (48 bytes), then the second copy, then `WalCkptInfo`.
const SHM_HDR: usize = 48;
const SHM_READ: usize = 2 * SHM_HDR + 4;

/// Why a WAL or its index cannot be used: each names what did not hold.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WalError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, WalError> {
    Err(WalError::Invalid(msg.into()))
}

/// The wal-index header a reader starting now would use (both copies equal, initialised,
/// checksum right), and the checkpointer's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexHeader {
    /// Last valid committed frame: the snapshot ends here.
    pub mx_frame: u32,
    /// Database size in pages at `mx_frame` (0 while the WAL holds no frame).
    pub n_page: u32,
    pub page_size: u32,
    /// Checksum chain values after frame `mx_frame`.
    pub frame_cksum: [u32; 2],
    /// The WAL header's salts, as the bytes stored in the file.
    pub salt: [u8; 8],
    /// Checksums of the WAL are computed on big-endian words.
    pub big_endian_cksum: bool,
    /// Frames already copied into the database file.
    pub n_backfill: u32,
}

/// Parse the start of the wal-index (native byte order, as SQLite maps it).
fn parse_index_header(b: &[u8; SHM_READ]) -> Result<IndexHeader, WalError> {
    let (h1, h2) = (&b[..SHM_HDR], &b[SHM_HDR..2 * SHM_HDR]);
    if h1 != h2 {
        return invalid("the two copies of the wal-index header differ (a write in progress)");
    }
    let ne = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    if ne(0) != WALINDEX_VERSION {
        return invalid(format!("unknown wal-index version {}", ne(0)));
    }
    if h1[12] == 0 {
        return invalid("the wal-index is not initialised");
    }
    let sum = checksum(&h1[..40], None, Order::Native);
    if sum != [ne(40), ne(44)] {
        return invalid("wal-index header checksum mismatch");
    }
    let sz = u32::from(u16::from_ne_bytes([h1[14], h1[15]]));
    let page_size = (sz & 0xfe00) + ((sz & 1) << 16);
    Ok(IndexHeader {
        mx_frame: ne(16),
        n_page: ne(20),
        page_size,
        frame_cksum: [ne(24), ne(28)],
        salt: h1[32..40].try_into().expect("8 bytes"),
        big_endian_cksum: h1[13] != 0,
        n_backfill: ne(2 * SHM_HDR),
    })
}

#[derive(Debug, Clone, Copy)]
enum Order {
    Native,
    Big,
    Little,
}

/// SQLite's WAL checksum (`walChecksumBytes`): the input as 32-bit words in `order`, two at a
/// time, `s1 += x0 + s2; s2 += x1 + s1`, continuing from `start`.
fn checksum(data: &[u8], start: Option<[u32; 2]>, order: Order) -> [u32; 2] {
    debug_assert!(data.len().is_multiple_of(8));
    let [mut s1, mut s2] = start.unwrap_or([0, 0]);
    let word = |c: &[u8]| -> u32 {
        let w: [u8; 4] = c.try_into().expect("4 bytes");
        match order {
            Order::Native => u32::from_ne_bytes(w),
            Order::Big => u32::from_be_bytes(w),
            Order::Little => u32::from_le_bytes(w),
        }
    };
    for pair in data.chunks_exact(8) {
        s1 = s1.wrapping_add(word(&pair[..4])).wrapping_add(s2);
        s2 = s2.wrapping_add(word(&pair[4..])).wrapping_add(s1);
    }
    [s1, s2]
}

fn be(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

/// Where the newest copy of a page up to the snapshot's end is in the WAL, and the checksum
/// chain around it, so it can be checked again when it is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame {
    /// 1-based frame number.
    pub index: u32,
    before: [u32; 2],
    after: [u32; 2],
}

/// The WAL's frames 1..=`mx_frame`, validated: the newest frame of each page.
#[derive(Debug)]
pub(crate) struct WalMap {
    pub page_size: u32,
    /// Database size in pages at the snapshot's end (the last commit frame's).
    pub n_page: u32,
    pages: HashMap<u32, Frame>,
    salt: [u8; 8],
    order: Order,
}

impl WalMap {
    /// The frame holding page `pgno` (1-based) in the snapshot, if the WAL has it.
    pub(crate) fn frame_of(&self, pgno: u32) -> Option<Frame> {
        self.pages.get(&pgno).copied()
    }

    /// Pages the WAL holds for the snapshot.
    pub(crate) fn len(&self) -> usize {
        self.pages.len()
    }

    /// Read `frame`'s page into `out` (one page) and check it is still the frame scanned:
    /// same salts, same checksum chain. `Ok(false)` when the WAL was rewritten since (a
    /// checkpoint restarted it), `out` then holds nothing usable.
    pub(crate) fn read_page(
        &self,
        wal: BorrowedFd<'_>,
        frame: Frame,
        out: &mut [u8],
    ) -> Result<bool, WalError> {
        let size = self.page_size as usize;
        debug_assert_eq!(out.len(), size);
        let offset = WAL_HEADER as u64 + u64::from(frame.index - 1) * (FRAME_HEADER + size) as u64;
        // A short read: the WAL was truncated since the scan.
        let read = |buf: &mut [u8], at: u64| match pread_exact(wal, buf, at) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(source) => Err(WalError::Io {
                what: "reading a WAL frame",
                source,
            }),
        };
        let mut head = [0u8; FRAME_HEADER];
        if !read(&mut head, offset)? || !read(out, offset + FRAME_HEADER as u64)? {
            return Ok(false);
        }
        if head[8..16] != self.salt {
            return Ok(false);
        }
        let sum = checksum(&head[..8], Some(frame.before), self.order);
        let sum = checksum(out, Some(sum), self.order);
        Ok(sum == frame.after && [be(&head, 16), be(&head, 20)] == frame.after)
    }
}

/// Read and validate the WAL header and frames 1..=`hdr.mx_frame` (`hdr.mx_frame > 0`): salts
/// equal to the index's, the checksum chain unbroken and equal to the index's at the end, the
/// last frame a commit of `hdr.n_page` pages. Reads the WAL sequentially in large blocks.
pub(crate) fn scan(wal: BorrowedFd<'_>, hdr: &IndexHeader) -> Result<WalMap, WalError> {
    let io = |what| move |source| WalError::Io { what, source };
    let mut h = [0u8; WAL_HEADER];
    pread_exact(wal, &mut h, 0).map_err(io("reading the WAL header"))?;
    let magic = be(&h, 0);
    if magic & !1 != WAL_MAGIC {
        return invalid(format!("not a WAL file (magic {magic:#x})"));
    }
    let order = if magic & 1 == 1 {
        Order::Big
    } else {
        Order::Little
    };
    if (magic & 1 == 1) != hdr.big_endian_cksum {
        return invalid("the WAL and its index disagree on the checksum byte order");
    }
    if be(&h, 4) != WAL_VERSION {
        return invalid(format!("unknown WAL format version {}", be(&h, 4)));
    }
    if be(&h, 8) != hdr.page_size {
        return invalid(format!(
            "WAL page size {} differs from the index's {}",
            be(&h, 8),
            hdr.page_size
        ));
    }
    if h[16..24] != hdr.salt {
        return invalid("WAL salts differ from the index's (the WAL was restarted)");
    }
    let mut sum = checksum(&h[..24], None, order);
    if sum != [be(&h, 24), be(&h, 28)] {
        return invalid("WAL header checksum mismatch");
    }
    let size = hdr.page_size as usize;
    let frame_len = FRAME_HEADER + size;
    let per_block = ((1 << 20) / frame_len).max(1);
    let mut buf = vec![0u8; per_block * frame_len];
    let mut pages = HashMap::new();
    let mut last_commit = 0u32;
    let mut n = 0u32;
    while n < hdr.mx_frame {
        let count = (per_block as u32).min(hdr.mx_frame - n) as usize;
        let block = &mut buf[..count * frame_len];
        let offset = WAL_HEADER as u64 + u64::from(n) * frame_len as u64;
        pread_exact(wal, block, offset).map_err(io("reading WAL frames"))?;
        for f in block.chunks_exact(frame_len) {
            n += 1;
            let (head, data) = f.split_at(FRAME_HEADER);
            if head[8..16] != hdr.salt {
                return invalid(format!("WAL frame {n}: salts differ"));
            }
            let before = sum;
            sum = checksum(data, Some(checksum(&head[..8], Some(sum), order)), order);
            if sum != [be(head, 16), be(head, 20)] {
                return invalid(format!("WAL frame {n}: checksum mismatch"));
            }
            let pgno = be(head, 0);
            if pgno == 0 {
                return invalid(format!("WAL frame {n}: page number 0"));
            }
            pages.insert(
                pgno,
                Frame {
                    index: n,
                    before,
                    after: sum,
                },
            );
            last_commit = be(head, 4);
        }
    }
    if last_commit == 0 {
        return invalid(format!(
            "WAL frame {}: the snapshot's end is not a commit",
            hdr.mx_frame
        ));
    }
    if last_commit != hdr.n_page {
        return invalid(format!(
            "the last commit holds {last_commit} pages, the index says {}",
            hdr.n_page
        ));
    }
    if sum != hdr.frame_cksum {
        return invalid("the checksum chain ends elsewhere than the index says");
    }
    // Pages past the snapshot's size (a commit that shrank the file) are not part of it.
    pages.retain(|&p, _| p <= last_commit);
    Ok(WalMap {
        page_size: hdr.page_size,
        n_page: last_commit,
        pages,
        salt: hdr.salt,
        order,
    })
}

/// Fill `buf` from `fd` at `offset` (an error at end of file).
pub(crate) fn pread_exact(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    let got = pread_full(fd, buf, offset)?;
    if got < buf.len() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Fill `buf` from `fd` at `offset`; returns the bytes read (fewer at end of file).
pub(crate) fn pread_full(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    offset: u64,
) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::pread(fd, &mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// The files SQLite holds open for one schema of a connection, through its default unix VFS:
/// their descriptors, borrowed for as long as the connection is.
///
/// Why SQLite's own descriptors: its locks are POSIX record locks, which belong to the
/// process and are ALL released when the process closes ANY descriptor of the file. Opening
/// and closing the database file or `-shm` ourselves would silently drop the connection's
/// read lock (and the shm's dead-man switch) while it reads. So nothing here opens a file.
pub(crate) struct Handles<'c> {
    file: *mut ffi::sqlite3_file,
    /// The database file.
    pub db: BorrowedFd<'c>,
    /// The WAL, when SQLite has it open.
    pub wal: Option<BorrowedFd<'c>>,
    _conn: PhantomData<&'c Connection>,
}

/// The descriptor `h` of a unix VFS file object: it follows three pointers in `struct
/// unixFile` (the bundled SQLite is the one we build; `sqlite::fleet`'s unit test checks the
/// layout against a file we know).
///
/// # Safety
/// `file` is a live `unixFile` of the unix VFS.
unsafe fn unix_fd(file: *mut ffi::sqlite3_file) -> c_int {
    *(file.cast::<u8>())
        .add(3 * std::mem::size_of::<*const c_void>())
        .cast::<c_int>()
}

/// SQLite's files for `schema` (`main` or an attachment's alias), if they are opened by the
/// default `unix` VFS.
pub(crate) fn handles<'c>(conn: &'c Connection, schema: &str) -> Option<Handles<'c>> {
    let schema = CString::new(schema).ok()?;
    let mut vfs: *mut ffi::sqlite3_vfs = std::ptr::null_mut();
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    let mut jrnl: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: the connection is open (borrowed for 'c); each file control writes one pointer
    // to its argument; the file objects live as long as the connection keeps the schema
    // attached, which the borrow of `conn` guarantees for what is returned.
    unsafe {
        let db = conn.handle();
        let name = schema.as_ptr();
        if ffi::sqlite3_file_control(
            db,
            name,
            ffi::SQLITE_FCNTL_VFS_POINTER,
            (&raw mut vfs).cast(),
        ) != ffi::SQLITE_OK
            || vfs.is_null()
            || CStr::from_ptr((*vfs).zName).to_bytes() != b"unix"
        {
            return None;
        }
        if ffi::sqlite3_file_control(
            db,
            name,
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        ) != ffi::SQLITE_OK
            || file.is_null()
            || (*file).pMethods.is_null()
        {
            return None;
        }
        let h = unix_fd(file);
        if h < 0 {
            return None;
        }
        let wal = if ffi::sqlite3_file_control(
            db,
            name,
            ffi::SQLITE_FCNTL_JOURNAL_POINTER,
            (&raw mut jrnl).cast(),
        ) == ffi::SQLITE_OK
            && !jrnl.is_null()
            && !(*jrnl).pMethods.is_null()
        {
            let w = unix_fd(jrnl);
            (w >= 0).then(|| BorrowedFd::borrow_raw(w))
        } else {
            None
        };
        Some(Handles {
            file,
            db: BorrowedFd::borrow_raw(h),
            wal,
            _conn: PhantomData,
        })
    }
}

impl Handles<'_> {
    /// The wal-index header as a reader starting now would see it, read from SQLite's own
    /// mapping of `-shm` (the VFS's `xShmMap`, region 0). Call while the connection is in WAL
    /// mode and has read the database.
    pub(crate) fn index_header(&self) -> Result<IndexHeader, WalError> {
        let mut b = [0u8; SHM_READ];
        // SAFETY: `file` is the connection's live database file object (see `handles`);
        // xShmMap (io methods version >= 2) maps region 0 of the wal-index, or returns
        // nothing when it does not exist yet; the mapping stays while the connection is open.
        // Other processes write it concurrently: the bytes are read volatile and then
        // validated the way SQLite validates them (two equal copies, checksum).
        unsafe {
            let methods = (*self.file).pMethods;
            if (*methods).iVersion < 2 {
                return invalid("the VFS has no shared memory");
            }
            let Some(map) = (*methods).xShmMap else {
                return invalid("the VFS has no shared memory");
            };
            let mut p: *mut c_void = std::ptr::null_mut();
            let rc = map(self.file, 0, 32768, 0, &raw mut p);
            if rc != ffi::SQLITE_OK || p.is_null() {
                return invalid(format!("the wal-index is not mapped (code {rc})"));
            }
            let src = p.cast::<u8>();
            for (i, byte) in b.iter_mut().enumerate() {
                *byte = std::ptr::read_volatile(src.add(i));
            }
        }
        parse_index_header(&b)
    }
}

/// The page size in a database header (bytes 16-17, big-endian, 1 meaning 65536), checked to
/// be a power of two from 512 to 65536.
pub(crate) fn db_page_size(header: &[u8]) -> Option<u32> {
    if header.len() < 100 || &header[..16] != b"SQLite format 3\0" {
        return None;
    }
    let raw = u32::from(u16::from_be_bytes([header[16], header[17]]));
    let size = if raw == 1 { 65536 } else { raw };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}

/// The page holding the lock bytes at 1 GiB (`PENDING_BYTE`): never written by SQLite, so a
/// database larger than 1 GiB may have no copy of it anywhere.
pub(crate) fn lock_byte_page(page_size: u32) -> u32 {
    0x4000_0000 / page_size + 1
}

/// Set a database header's read and write versions (bytes 18-19) to 1, rollback journal: the
/// copy of a WAL database then opens without a `-wal` or `-shm` beside it.
pub(crate) fn set_rollback_journal(header: &mut [u8]) {
    header[18] = 1;
    header[19] = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    fn wal_db(dir: &std::path::Path) -> (std::path::PathBuf, Connection) {
        let p = dir.join("w.db");
        let c = Connection::open(&p).unwrap();
        c.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
             INSERT INTO t SELECT randomblob(900) FROM n;
             DELETE FROM t WHERE rowid % 3 = 0;",
        )
        .unwrap();
        (p, c)
    }

    #[test]
    fn scans_a_live_wal_to_the_index_end() {
        let dir = tempfile::tempdir().unwrap();
        let (_p, c) = wal_db(dir.path());
        let h = handles(&c, "main").unwrap();
        let hdr = h.index_header().unwrap();
        assert!(hdr.mx_frame > 3, "{hdr:?}");
        assert_eq!(hdr.page_size, 4096);
        let pages: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert_eq!(hdr.n_page, pages);
        let wal = h.wal.unwrap();
        let map = scan(wal, &hdr).unwrap();
        assert_eq!(map.n_page, pages);
        // Every page of a database created in the WAL is in it; each reads back valid.
        let mut page = vec![0u8; 4096];
        for pgno in 1..=pages {
            let f = map.frame_of(pgno).unwrap();
            assert!(map.read_page(wal, f, &mut page).unwrap());
        }
        assert_eq!(
            db_page_size(&{
                map.read_page(wal, map.frame_of(1).unwrap(), &mut page)
                    .unwrap();
                page.clone()
            }),
            Some(4096)
        );
    }

    #[test]
    fn a_damaged_frame_or_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p, c) = wal_db(dir.path());
        let hdr = handles(&c, "main").unwrap().index_header().unwrap();
        // One byte of one page's data flipped in the middle of the WAL.
        let walp = crate::db_files::sidecar(&p, "-wal");
        let wal = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&walp)
            .unwrap();
        let at = WAL_HEADER as u64 + 2 * (FRAME_HEADER as u64 + 4096) + 100;
        let mut b = [0u8; 1];
        wal.read_exact_at(&mut b, at).unwrap();
        wal.write_all_at(&[b[0] ^ 0x40], at).unwrap();
        let err = scan(wal.as_fd(), &hdr).unwrap_err().to_string();
        assert!(err.contains("frame 3: checksum mismatch"), "{err}");
        // An index header claiming another end is refused too.
        wal.write_all_at(&b, at).unwrap();
        let short = IndexHeader {
            mx_frame: hdr.mx_frame - 1,
            ..hdr.clone()
        };
        assert!(scan(wal.as_fd(), &short).is_err());
        assert!(scan(wal.as_fd(), &hdr).is_ok());
    }

    #[test]
    fn checksum_matches_sqlite_for_the_wal_header() {
        // A WAL header written by SQLite carries its own checksum: recomputing it must agree.
        let dir = tempfile::tempdir().unwrap();
        let (p, _c) = wal_db(dir.path());
        let mut h = [0u8; WAL_HEADER];
        File::open(crate::db_files::sidecar(&p, "-wal"))
            .unwrap()
            .read_exact_at(&mut h, 0)
            .unwrap();
        let order = if be(&h, 0) & 1 == 1 {
            Order::Big
        } else {
            Order::Little
        };
        assert_eq!(checksum(&h[..24], None, order), [be(&h, 24), be(&h, 28)]);
    }
}
