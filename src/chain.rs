//! Incremental backup chains on disk: the delta file format, the page-hash index kept beside
//! a chain, which points a chain has and which of them can be rebuilt, and applying deltas
//! to an image. `jobs::backup::incremental` writes; `restore` and `backups list` read.
//!
//! A chain starts at a full backup (its *base*); each incremental run adds a *point*: a delta
//! file `{series}-{UTC YYYYMMDD-HHMMSS}.delta[.zst]` holding the pages of the database that
//! differ from the previous point (`prev`: the base or an earlier delta), the new page count
//! and the SHA-256 of the whole image at that point. The image of a point is the base's
//! plain bytes with every delta from the base to it applied in order; each step is checked
//! (file SHA-256 from the manifest, the trailer's sequence) and the final image against its
//! SHA-256, so a restore never yields an image that matches no point.
//!
//! Delta file (before zstd): `LKDELTA1`, page size (u32 LE), then one record per changed
//! page (page number u32 LE ≥ 1, the page), then the trailer: u32 0, page count (u64),
//! sequence (u64), pages changed (u64), the image's SHA-256 (32 bytes), `LKDEND01`.
//! Page 1 is stored with the journal-mode bytes of a rollback-journal file (18, 19 = 1), as
//! full backups are: every image is one self-contained file.
//!
//! Page-hash index `{point file}.pages`, written temp + fsync + rename: `LKPAGES1`, page size
//! (u32), page count (u64), the point file's SHA-256 as the manifest has it (64 hex bytes),
//! then 16 bytes (xxh3-128, LE) per page. It describes that point only; a missing or stale
//! index is rebuilt by building the point's image and hashing it.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{self, ArchiveError, Entry, Manifest};

const DELTA_MAGIC: &[u8; 8] = b"LKDELTA1";
const DELTA_END: &[u8; 8] = b"LKDEND01";
const INDEX_MAGIC: &[u8; 8] = b"LKPAGES1";
const INDEX_SUFFIX: &str = ".pages";
const TIME_FORMAT: &str = "%Y%m%d-%H%M%S";

/// What the manifest records about one delta (`manifest.json`, `deltas`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaEntry {
    pub file: String,
    pub series: String,
    pub database: String,
    pub created_at: DateTime<Utc>,
    /// The full backup the chain starts from (its file name).
    pub base: String,
    /// 1 for the first point after the base.
    pub sequence: u64,
    /// The point this one applies to: the base or the previous delta (file name).
    pub prev: String,
    /// Pages of the image at this point, and their size.
    pub page_count: u64,
    pub page_size: u64,
    /// Pages read from the snapshot, and pages written to this delta.
    pub pages_scanned: u64,
    pub pages_changed: u64,
    /// SHA-256 of the whole database image at this point.
    pub image_sha256: String,
    /// Size and SHA-256 of the delta file as stored.
    pub size: u64,
    pub sha256: String,
    pub compressed: bool,
    pub duration_ms: u64,
}

/// The parts of a delta file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeltaName {
    pub series: String,
    pub time: DateTime<Utc>,
    pub compressed: bool,
}

impl DeltaName {
    pub(crate) fn file_name(&self) -> String {
        format!(
            "{}-{}.delta{}",
            self.series,
            self.time.format(TIME_FORMAT),
            if self.compressed { ".zst" } else { "" }
        )
    }

    pub(crate) fn parse(name: &str) -> Option<DeltaName> {
        let (rest, compressed) = match name.strip_suffix(".zst") {
            Some(r) => (r, true),
            None => (name, false),
        };
        let rest = rest.strip_suffix(".delta")?;
        if rest.len() < 17 || !rest.is_char_boundary(rest.len() - 15) {
            return None;
        }
        let (series, stamp) = rest.split_at(rest.len() - 15);
        let series = series.strip_suffix('-').filter(|s| !s.is_empty())?;
        let naive = NaiveDateTime::parse_from_str(stamp, TIME_FORMAT).ok()?;
        Some(DeltaName {
            series: series.to_string(),
            time: Utc.from_utc_datetime(&naive),
            compressed,
        })
    }
}

/// The page-hash index file of the point stored as `point_file`.
pub(crate) fn index_path(dir: &Path, point_file: &str) -> PathBuf {
    dir.join(format!("{point_file}{INDEX_SUFFIX}"))
}

/// Whether `name` is a page-hash index (never a backup).
pub(crate) fn is_index(name: &str) -> bool {
    name.ends_with(INDEX_SUFFIX)
}

/// Page 1 as an image stores it: a rollback-journal file (header bytes 18 and 19 = 1), like
/// every full backup; other pages unchanged.
pub(crate) fn normalize_page(pgno: u32, page: &mut [u8]) {
    if pgno == 1 && page.len() > 19 && page[18] == 2 && page[19] == 2 {
        page[18] = 1;
        page[19] = 1;
    }
}

pub(crate) fn page_hash(page: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(page)
}

/// The page hashes of one point.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PageIndex {
    pub page_size: u32,
    /// The point's file SHA-256 (as in the manifest): an index of another file is stale.
    pub point_sha256: String,
    pub hashes: Vec<u128>,
}

impl PageIndex {
    pub(crate) fn write(&self, path: &Path) -> Result<(), ArchiveError> {
        let mut bytes = Vec::with_capacity(84 + self.hashes.len() * 16);
        bytes.extend_from_slice(INDEX_MAGIC);
        bytes.extend_from_slice(&self.page_size.to_le_bytes());
        bytes.extend_from_slice(&(self.hashes.len() as u64).to_le_bytes());
        let mut sha = [b'0'; 64];
        let given = self.point_sha256.as_bytes();
        sha[..given.len().min(64)].copy_from_slice(&given[..given.len().min(64)]);
        bytes.extend_from_slice(&sha);
        for h in &self.hashes {
            bytes.extend_from_slice(&h.to_le_bytes());
        }
        archive::write_atomic(path, &bytes)
    }

    /// The index at `path` when it is whole and describes the file with `point_sha256`.
    pub(crate) fn read(path: &Path, point_sha256: &str) -> Option<PageIndex> {
        let bytes = crate::safe_fs::read_regular(path).ok()?;
        if bytes.len() < 84 || &bytes[..8] != INDEX_MAGIC {
            return None;
        }
        let page_size = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
        let count = u64::from_le_bytes(bytes[12..20].try_into().ok()?) as usize;
        let sha = std::str::from_utf8(&bytes[20..84]).ok()?;
        if sha != point_sha256 || bytes.len() != 84 + count.checked_mul(16)? {
            return None;
        }
        let hashes = bytes[84..]
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect();
        Some(PageIndex {
            page_size,
            point_sha256: point_sha256.to_string(),
            hashes,
        })
    }
}

/// Counts the bytes written through it and hashes them (the delta file's SHA-256).
struct Counted<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Sink {
    Plain(Counted<BufWriter<File>>),
    Zstd(zstd::stream::Encoder<'static, Counted<BufWriter<File>>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// Writes one delta file; [`DeltaWriter::finish`] adds the trailer, fsyncs and returns the
/// file's size and SHA-256.
pub(crate) struct DeltaWriter {
    sink: Sink,
    page_size: u32,
    changed: u64,
}

/// What a finished delta file holds.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub size: u64,
    pub sha256: String,
}

impl DeltaWriter {
    pub(crate) fn new(
        file: File,
        page_size: u32,
        zstd_level: Option<i32>,
    ) -> io::Result<DeltaWriter> {
        let counted = Counted {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        };
        let mut sink = match zstd_level {
            None => Sink::Plain(counted),
            Some(level) => Sink::Zstd(zstd::stream::Encoder::new(counted, level)?),
        };
        sink.write_all(DELTA_MAGIC)?;
        sink.write_all(&page_size.to_le_bytes())?;
        Ok(DeltaWriter {
            sink,
            page_size,
            changed: 0,
        })
    }

    pub(crate) fn page(&mut self, pgno: u32, data: &[u8]) -> io::Result<()> {
        if data.len() != self.page_size as usize || pgno == 0 {
            return Err(io::Error::other(format!(
                "page {pgno} has {} bytes, the page size is {}",
                data.len(),
                self.page_size
            )));
        }
        self.sink.write_all(&pgno.to_le_bytes())?;
        self.sink.write_all(data)?;
        self.changed += 1;
        Ok(())
    }

    pub(crate) fn finish(
        mut self,
        page_count: u64,
        sequence: u64,
        image_sha256: &[u8; 32],
    ) -> io::Result<Written> {
        let mut t = Vec::with_capacity(68);
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(&page_count.to_le_bytes());
        t.extend_from_slice(&sequence.to_le_bytes());
        t.extend_from_slice(&self.changed.to_le_bytes());
        t.extend_from_slice(image_sha256);
        t.extend_from_slice(DELTA_END);
        self.sink.write_all(&t)?;
        let counted = match self.sink {
            Sink::Plain(c) => c,
            Sink::Zstd(e) => e.finish()?,
        };
        let file = counted.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(Written {
            size: counted.bytes,
            sha256: archive::hex(&counted.hash.finalize()),
        })
    }
}

/// What a delta's trailer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub page_count: u64,
    pub sequence: u64,
    pub changed: u64,
    pub image_sha256: String,
}

fn bad(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: not a whole delta file ({what})", path.display()),
    )
}

/// A delta file read page by page: its header on open, then each record, then the trailer
/// (checked: end mark, and the number of records it says).
struct DeltaReader<'p> {
    path: &'p Path,
    r: Box<dyn Read>,
    page_size: u32,
    page: Vec<u8>,
    records: u64,
}

impl<'p> DeltaReader<'p> {
    fn open(path: &'p Path, compressed: bool) -> io::Result<DeltaReader<'p>> {
        let file = File::open(path)?;
        let mut r: Box<dyn Read> = if compressed {
            Box::new(zstd::stream::Decoder::new(file)?)
        } else {
            Box::new(BufReader::with_capacity(1 << 20, file))
        };
        let mut head = [0u8; 12];
        r.read_exact(&mut head)
            .map_err(|_| bad(path, "no header"))?;
        if &head[..8] != DELTA_MAGIC {
            return Err(bad(path, "wrong magic"));
        }
        let page_size = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if !(512..=65536).contains(&page_size) {
            return Err(bad(path, "page size"));
        }
        Ok(DeltaReader {
            path,
            r,
            page_size,
            page: vec![0u8; page_size as usize],
            records: 0,
        })
    }

    /// The next page record (page number, bytes); None at the trailer.
    fn next_page(&mut self) -> io::Result<Option<(u32, &[u8])>> {
        let mut n = [0u8; 4];
        self.r
            .read_exact(&mut n)
            .map_err(|_| bad(self.path, "cut short"))?;
        let pgno = u32::from_le_bytes(n);
        if pgno == 0 {
            return Ok(None);
        }
        self.r
            .read_exact(&mut self.page)
            .map_err(|_| bad(self.path, "cut short in a page"))?;
        self.records += 1;
        Ok(Some((pgno, &self.page)))
    }

    /// After the last record: the trailer.
    fn trailer(mut self) -> io::Result<Trailer> {
        let mut t = [0u8; 64];
        self.r
            .read_exact(&mut t)
            .map_err(|_| bad(self.path, "no trailer"))?;
        if &t[56..64] != DELTA_END {
            return Err(bad(self.path, "no end mark"));
        }
        let trailer = Trailer {
            page_count: u64::from_le_bytes(t[0..8].try_into().expect("8")),
            sequence: u64::from_le_bytes(t[8..16].try_into().expect("8")),
            changed: u64::from_le_bytes(t[16..24].try_into().expect("8")),
            image_sha256: archive::hex(&t[24..56]),
        };
        if trailer.changed != self.records {
            return Err(bad(self.path, "page count of the records"));
        }
        Ok(trailer)
    }
}

/// Write the pages of the delta at `path` into `image` (a plain database file) and cut it to
/// the delta's page count: one step, what [`apply_all`] must equal.
#[cfg(test)]
fn apply_delta(path: &Path, compressed: bool, image: &File) -> io::Result<Trailer> {
    let mut d = DeltaReader::open(path, compressed)?;
    let page_size = u64::from(d.page_size);
    while let Some((pgno, page)) = d.next_page()? {
        image.write_all_at(page, (u64::from(pgno) - 1) * page_size)?;
    }
    let trailer = d.trailer()?;
    image.set_len(trailer.page_count * page_size)?;
    Ok(trailer)
}

/// A point of a chain: its full backup, or one of its deltas.
#[derive(Debug, Clone)]
pub(crate) enum Point {
    Full(Entry),
    Delta(DeltaEntry),
}

impl Point {
    pub(crate) fn file(&self) -> &str {
        match self {
            Point::Full(e) => &e.file,
            Point::Delta(d) => &d.file,
        }
    }
    pub(crate) fn sha256(&self) -> &str {
        match self {
            Point::Full(e) => &e.sha256,
            Point::Delta(d) => &d.sha256,
        }
    }
}

/// The way from a chain's base to one of its points, as far as it is whole.
#[derive(Debug, Clone)]
pub(crate) struct Way {
    pub base: Entry,
    /// The deltas to apply, in order; all present with their recorded size.
    pub deltas: Vec<DeltaEntry>,
    /// The point asked for could not be reached: the first link that is missing or damaged,
    /// and why. `deltas` then ends at the last good point before it.
    pub broken: Option<(String, String)>,
}

/// How a point's file looks on disk: present with the size the manifest records, or why not.
fn file_state(dir: &Path, file: &str, size: u64) -> Result<(), String> {
    match fs::symlink_metadata(dir.join(file)) {
        Ok(m) if m.is_file() && m.len() == size => Ok(()),
        Ok(m) if m.is_file() => Err(format!(
            "its size ({} bytes) is not the size recorded in the manifest ({size})",
            m.len()
        )),
        Ok(_) => Err("not a regular file".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err("missing".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The links from `target`'s base to `target` (a delta of `manifest`), following `prev`;
/// when one is missing (from the manifest or the directory), the way stops at the point
/// before it and `broken` names it. None when the base itself is not there.
pub(crate) fn way_to(dir: &Path, manifest: &Manifest, target: &DeltaEntry) -> Option<Way> {
    let base = manifest
        .get(&target.base)
        .filter(|e| file_state(dir, &e.file, e.size).is_ok())?
        .clone();
    // Walk back from the target to the base by `prev`.
    let mut back = vec![target.clone()];
    let mut missing_prev = None;
    while let Some(last) = back.last() {
        if last.prev == base.file {
            break;
        }
        match manifest
            .deltas
            .iter()
            .find(|d| d.file == last.prev && d.base == base.file)
        {
            Some(d) => back.push(d.clone()),
            None => {
                missing_prev = Some(last.prev.clone());
                break;
            }
        }
    }
    back.reverse();
    let mut deltas = Vec::new();
    let mut broken = missing_prev.map(|f| (f, "missing from the manifest".to_string()));
    if broken.is_none() {
        for d in back {
            if let Err(why) = file_state(dir, &d.file, d.size) {
                broken = Some((d.file.clone(), why));
                break;
            }
            deltas.push(d);
        }
    }
    Some(Way {
        base,
        deltas,
        broken,
    })
}

/// The deltas of `database`'s `series` in the manifest, oldest first.
pub(crate) fn deltas_of<'a>(
    manifest: &'a Manifest,
    database: &'a str,
    series: &'a str,
) -> impl Iterator<Item = &'a DeltaEntry> + 'a {
    let mut v: Vec<&DeltaEntry> = manifest
        .deltas
        .iter()
        .filter(move |d| d.database == database && d.series == series)
        .collect();
    v.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.sequence.cmp(&b.sequence))
    });
    v.into_iter()
}

/// Open `full`'s plain bytes (decompressing a `.zst`).
pub(crate) fn open_full(dir: &Path, full: &Entry) -> io::Result<Box<dyn Read>> {
    let f = File::open(dir.join(&full.file))?;
    Ok(if full.compressed {
        Box::new(zstd::stream::Decoder::new(f)?)
    } else {
        Box::new(BufReader::with_capacity(1 << 20, f))
    })
}

/// Apply `deltas` (in chain order) to the plain image open as `image` (the base's bytes),
/// checking each trailer against its manifest entry, and with `check_files` each file's
/// SHA-256 first (a caller that has just checked them passes false); returns the last
/// trailer (None when there were no deltas).
///
/// Each page is written once, from the newest delta that holds it: the deltas are read
/// newest first and a page already written is skipped, as is a page beyond the last point's
/// page count; the image is then cut to that count. A page no delta holds is the base's: a
/// point writes every page beyond its previous point's count, so a page that was cut off and
/// grew back is always in a later delta; a point whose page size differs from its previous
/// one holds every page, and deltas older than it (of the other page size) are not read.
pub(crate) fn apply_all(
    dir: &Path,
    deltas: &[DeltaEntry],
    image: &File,
    check_files: bool,
) -> io::Result<Option<Trailer>> {
    let Some(last) = deltas.last() else {
        return Ok(None);
    };
    let final_size = last.page_size;
    let final_count = last.page_count;
    let mut done = vec![false; final_count as usize + 1];
    let mut last_trailer = None;
    for d in deltas.iter().rev() {
        let path = dir.join(&d.file);
        if check_files {
            let sha = archive::sha256_file(&path).map_err(io::Error::other)?;
            if sha != d.sha256 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: SHA-256 {sha} is not the manifest's {}",
                        path.display(),
                        d.sha256
                    ),
                ));
            }
        }
        if d.page_size != final_size {
            // A newer point changed the page size and holds every page.
            break;
        }
        let mut r = DeltaReader::open(&path, d.compressed)?;
        if u64::from(r.page_size) != d.page_size {
            return Err(bad(&path, "page size differs from its manifest entry"));
        }
        while let Some((pgno, page)) = r.next_page()? {
            let i = pgno as usize;
            if i < done.len() && !done[i] {
                image.write_all_at(page, (u64::from(pgno) - 1) * final_size)?;
                done[i] = true;
            }
        }
        let t = r.trailer()?;
        if t.sequence != d.sequence
            || t.image_sha256 != d.image_sha256
            || t.page_count != d.page_count
        {
            return Err(bad(&path, "trailer does not match its manifest entry"));
        }
        last_trailer.get_or_insert(t);
    }
    image.set_len(final_count * final_size)?;
    Ok(last_trailer)
}

/// SHA-256 and page hashes of the plain database file at `path`.
pub(crate) fn hash_image(path: &Path, page_size: u32) -> io::Result<(String, Vec<u128>)> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    let mut page = vec![0u8; page_size as usize];
    let mut sha = Sha256::new();
    let mut hashes = Vec::new();
    loop {
        match r.read_exact(&mut page) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        sha.update(&page);
        hashes.push(page_hash(&page));
    }
    Ok((archive::hex(&sha.finalize()), hashes))
}

/// The page size a plain database image starts with (header bytes 16-17; 1 means 65536).
pub(crate) fn image_page_size(path: &Path) -> io::Result<u32> {
    let mut head = [0u8; 18];
    File::open(path)?.read_exact(&mut head)?;
    Ok(match u16::from_be_bytes([head[16], head[17]]) {
        1 => 65536,
        n => n as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_names_round_trip_and_are_no_backup_names() {
        let t = Utc.with_ymd_and_hms(2026, 12, 6, 14, 5, 0).unwrap();
        for compressed in [false, true] {
            let n = DeltaName {
                series: "chat-app".into(),
                time: t,
                compressed,
            };
            let text = n.file_name();
            assert_eq!(DeltaName::parse(&text), Some(n));
            assert_eq!(archive::BackupName::parse(&text), None);
        }
        assert_eq!(
            DeltaName::parse("chat-20261206-140500.delta")
                .unwrap()
                .series,
            "chat"
        );
        assert_eq!(DeltaName::parse("chat-20261206-140500.db"), None);
        assert!(is_index("chat-20261206-140500.delta.zst.pages"));
    }

    #[test]
    fn a_delta_applies_its_pages_and_cuts_the_image() {
        let dir = tempfile::tempdir().unwrap();
        for level in [None, Some(3)] {
            let img = dir.path().join(format!("img{level:?}"));
            fs::write(&img, vec![7u8; 4 * 512]).unwrap();
            let dpath = dir.path().join(format!("d{level:?}"));
            let mut w = DeltaWriter::new(File::create(&dpath).unwrap(), 512, level).unwrap();
            w.page(2, &[1u8; 512]).unwrap();
            assert!(w.page(3, &[1u8; 100]).is_err());
            let sha = [9u8; 32];
            let written = w.finish(3, 4, &sha).unwrap();
            assert_eq!(written.size, fs::metadata(&dpath).unwrap().len());
            assert_eq!(written.sha256, archive::sha256_file(&dpath).unwrap());
            let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            let t = apply_delta(&dpath, level.is_some(), &f).unwrap();
            assert_eq!((t.page_count, t.sequence, t.changed), (3, 4, 1));
            assert_eq!(t.image_sha256, archive::hex(&sha));
            let bytes = fs::read(&img).unwrap();
            assert_eq!(bytes.len(), 3 * 512);
            assert!(bytes[512..1024].iter().all(|&b| b == 1));
            assert!(bytes[1024..].iter().all(|&b| b == 7));
            // Cut short: refused, never applied as if whole.
            let all = fs::read(&dpath).unwrap();
            fs::write(&dpath, &all[..all.len() - 10]).unwrap();
            assert!(apply_delta(&dpath, level.is_some(), &f).is_err());
        }
    }

    #[test]
    fn an_index_of_another_file_or_cut_short_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pages");
        let sha = "a".repeat(64);
        let idx = PageIndex {
            page_size: 4096,
            point_sha256: sha.clone(),
            hashes: vec![1, 2, u128::MAX],
        };
        idx.write(&p).unwrap();
        assert_eq!(PageIndex::read(&p, &sha), Some(idx));
        assert_eq!(PageIndex::read(&p, &"b".repeat(64)), None);
        let bytes = fs::read(&p).unwrap();
        fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(PageIndex::read(&p, &sha), None);
    }

    /// Newest-first application gives the image that applying each delta in turn gives,
    /// through a shrink and a regrowth of the file.
    #[test]
    fn apply_all_writes_each_page_once_and_equals_applying_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let ps = 512usize;
        let base: Vec<u8> = (0..8).flat_map(|p| vec![p as u8; ps]).collect();
        // (page count after the point, pages written: (pgno, fill byte)).
        let steps: [(u64, Vec<(u32, u8)>); 4] = [
            (8, vec![(2, 20), (5, 50)]),
            (4, vec![(1, 11), (2, 21)]),
            (6, vec![(5, 51), (6, 61)]),
            (6, vec![(2, 22), (6, 62)]),
        ];
        let mut entries = Vec::new();
        for (i, (count, pages)) in steps.iter().enumerate() {
            let file = format!("d{i}.delta.zst");
            let mut w =
                DeltaWriter::new(File::create(dir.path().join(&file)).unwrap(), 512, Some(1))
                    .unwrap();
            for (pgno, fill) in pages {
                w.page(*pgno, &vec![*fill; ps]).unwrap();
            }
            let written = w.finish(*count, i as u64 + 1, &[i as u8; 32]).unwrap();
            entries.push(DeltaEntry {
                file,
                series: "s".into(),
                database: "d".into(),
                created_at: Utc::now(),
                base: "b".into(),
                sequence: i as u64 + 1,
                prev: String::new(),
                page_count: *count,
                page_size: 512,
                pages_scanned: *count,
                pages_changed: pages.len() as u64,
                image_sha256: archive::hex(&[i as u8; 32]),
                size: written.size,
                sha256: written.sha256,
                compressed: true,
                duration_ms: 0,
            });
        }
        let one_by_one = dir.path().join("a");
        fs::write(&one_by_one, &base).unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&one_by_one)
            .unwrap();
        for e in &entries {
            apply_delta(&dir.path().join(&e.file), true, &f).unwrap();
        }
        let all = dir.path().join("b");
        fs::write(&all, &base).unwrap();
        let f = fs::OpenOptions::new().write(true).open(&all).unwrap();
        let t = apply_all(dir.path(), &entries, &f, true).unwrap().unwrap();
        assert_eq!(t.sequence, 4);
        let got = fs::read(&all).unwrap();
        assert_eq!(got, fs::read(&one_by_one).unwrap());
        let fills: Vec<u8> = got.chunks(ps).map(|p| p[0]).collect();
        assert_eq!(fills, vec![11, 22, 2, 3, 51, 62]);
    }
}
