//! Fleets: the files a wildcard `[[database]]` stanza matches, turned into members — at load
//! and on every tick of the fleet's timers — and proven again when a member's job opens them.
//!
//! The member rule (also in ARCHITECTURE.md and the example config): a file is a member when
//! it is a regular file reached from the pattern's fixed directory without a symlink, its
//! stem (the name without its last extension) is 1 to 200 bytes of UTF-8, is not `.` or
//! `..`, holds no control character and does not start with `-`; its name is the name
//! template with `{stem}` lower-cased and every other character than `a-z0-9_-` turned into
//! `-`, and must not start with `-`. Two files that make one name (`acme.db`, `ACME.db`), in
//! one fleet or in two, are both refused. Every path a template expands (`backup.dir`, a files
//! rule's `dir`, `attach`) must stay below the template's fixed part (the directories before
//! the first `{`), and no directory below that fixed part may be a symlink when it is used.

use std::path::{Path, PathBuf};

use super::model::*;
use super::raw::RawDatabase;
use super::validate::{database, is_db_name, Checker};
use super::KeyPath;

/// The longest stem a member may have: every file made from it (`<name>.lock`, a backup
/// `<stem>-YYYYMMDD-HHMMSS.db.zst`) must fit a file name's 255 bytes.
pub const MAX_STEM: usize = 200;

/// Glob characters that make a `path` a fleet.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Why a file a fleet's pattern matches is no member.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RejectKind {
    /// A symlink (file or directory): a fleet never follows one.
    Symlink,
    /// A directory, FIFO, socket or device where a database file was expected.
    NotAFile,
    /// Its stem or name breaks the member rule, or a template expands out of its place.
    BadName,
    /// Its name is that of a configured database or of a fleet.
    Taken,
    /// Another file makes the same member name: both are refused.
    Collision,
}

/// A file the scan found and refused, with the one line that says why and what to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejected {
    pub kind: RejectKind,
    pub path: PathBuf,
    pub reason: String,
}

impl Rejected {
    /// Log it (the daemon once per appearance; `run` and `check` on every load): at warn, but
    /// a directory or other non-file at info.
    pub fn log(&self, fleet: &str) {
        if self.kind == RejectKind::NotAFile {
            tracing::info!("fleet {fleet}: {}", self.reason);
        } else {
            tracing::warn!("fleet {fleet}: {}", self.reason);
        }
    }

    /// A file `status --check` reports: data that is not backed up because of its name.
    pub fn is_problem(&self) -> bool {
        matches!(
            self.kind,
            RejectKind::BadName | RejectKind::Taken | RejectKind::Collision
        )
    }
}

/// The directory a pattern starts in (the components before the first wildcard) and the
/// components below it.
pub fn split_pattern(pattern: &str) -> (PathBuf, Vec<String>) {
    let mut root = PathBuf::from("/");
    let mut rest = Vec::new();
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        if rest.is_empty() && !is_glob(part) {
            root.push(part);
        } else {
            rest.push(part.to_string());
        }
    }
    // The last component names the files even when it has no wildcard (`/srv/*/main.db`).
    if rest.is_empty() {
        if let Some(last) = root.file_name().map(|s| s.to_string_lossy().into_owned()) {
            rest.push(last);
            root.pop();
        }
    }
    (root, rest)
}

/// What is wrong with a stem as a member's, if anything (the member rule).
pub fn stem_problem(stem: &str) -> Option<String> {
    if stem.is_empty() {
        Some("its stem (the name without extension) is empty".into())
    } else if stem == "." || stem == ".." {
        Some(format!(
            "its stem {stem:?} would name a directory above its own in every path made from it"
        ))
    } else if stem.contains('/') || stem.chars().any(char::is_control) {
        Some(format!("its stem {stem:?} holds a control character"))
    } else if stem.starts_with('-') {
        Some(format!(
            "its stem {stem:?} starts with '-' (it would read as an option)"
        ))
    } else if stem.len() > MAX_STEM {
        Some(format!(
            "its stem is {} bytes long, more than {MAX_STEM} (the files made from it would not fit a file name)",
            stem.len()
        ))
    } else {
        None
    }
}

/// A fleet member's name: the template with `{stem}`, lower-cased, anything outside
/// `[a-z0-9_-]` replaced by `-`.
pub fn member_name(template: &str, stem: &str) -> String {
    fill(template, stem, "{name}")
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// What is wrong with a member name, if anything.
pub fn name_problem(name: &str) -> Option<String> {
    if !is_db_name(name) {
        Some(format!("its name {name:?} is not one of a-z0-9_-"))
    } else if name.starts_with('-') {
        Some(format!("its name {name:?} starts with '-' (it would read as an option); put a prefix in the name template, e.g. \"t-{{stem}}\""))
    } else {
        None
    }
}

/// `text` with every byte outside URL's unreserved set percent-encoded (a stem in a ping URL).
fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The stanza with `{stem}` and `{name}` filled in wherever a member needs its own value (in
/// ping URLs the stem is percent-encoded).
pub fn substitute(raw: &RawDatabase, stem: &str, name: &str, path: &str) -> RawDatabase {
    let fill = |s: &str| fill(s, stem, name);
    let url_stem = url_encode(stem);
    let url = |s: &str| self::fill(s, &url_stem, name);
    let mut r = raw.clone();
    r.name = name.to_string();
    r.path = path.to_string();
    for v in r.attach.values_mut() {
        *v = fill(v);
    }
    if let Some(b) = r.backup.as_mut() {
        b.dir = b.dir.as_deref().map(fill);
        b.ping = b.ping.as_deref().map(url);
    }
    if let Some(p) = r.prune.as_mut() {
        for f in &mut p.files {
            f.dir = fill(&f.dir);
        }
        p.ping = p.ping.as_deref().map(url);
    }
    if let Some(v) = r.vacuum.as_mut() {
        v.ping = v.ping.as_deref().map(url);
    }
    r
}

/// `template` with `{stem}` and `{name}` replaced in one pass (a stem holding the text
/// `{name}` stays as it is).
fn fill(template: &str, stem: &str, name: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{stem}") {
            out.push_str(stem);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{name}") {
            out.push_str(name);
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// A path for a message: control characters escaped, so one problem stays one line.
pub fn shown(path: &Path) -> String {
    path.to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The fixed part of a path template: its directories before the first `{`.
pub fn fixed_part(template: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in template.split('/').filter(|p| !p.is_empty()) {
        if part.contains('{') {
            break;
        }
        out.push(part);
    }
    out
}

/// Lexically: does `expanded` (the template filled in) stay below the template's fixed
/// part, every component below it a plain name (not `.`/`..`, no control character, at most
/// 255 bytes)? The reason if not.
pub fn confine_problem(template: &str, expanded: &str) -> Option<String> {
    let fixed = fixed_part(template);
    let fixed_n = fixed.components().count() - 1; // without the root
    let parts: Vec<&str> = expanded.split('/').filter(|p| !p.is_empty()).collect();
    let fixed_parts: Vec<String> = fixed
        .components()
        .skip(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let leaves = || {
        Some(format!(
            "{template:?} expands to {expanded:?}, which is not below {}",
            fixed.display()
        ))
    };
    if !expanded.starts_with('/') || parts.len() < fixed_n || parts[..fixed_n] != fixed_parts[..] {
        return leaves();
    }
    for p in &parts[fixed_n..] {
        if *p == "." || *p == ".." || p.chars().any(char::is_control) || p.len() > 255 {
            return leaves();
        }
    }
    None
}

/// Every path of `db` made from a template of `raw`: (key, template, expanded).
pub fn expansions(raw: &RawDatabase, db: &Database) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    if let (Some(t), Some(b)) = (
        raw.backup.as_ref().and_then(|b| b.dir.as_ref()),
        db.backup.as_ref(),
    ) {
        out.push(("backup.dir".into(), t.clone(), b.dir.clone()));
    }
    if let (Some(rp), Some(p)) = (raw.prune.as_ref(), db.prune.as_ref()) {
        for (i, (rf, f)) in rp.files.iter().zip(&p.files).enumerate() {
            out.push((
                format!("prune.files[{i}].dir"),
                rf.dir.clone(),
                f.dir.clone(),
            ));
        }
    }
    for a in &db.attach {
        if let Some(t) = raw.attach.get(&a.alias) {
            out.push((format!("attach.{}", a.alias), t.clone(), a.path.clone()));
        }
    }
    out.retain(|(_, t, _)| t.contains('{'));
    out
}

/// The member `path` (found by a scan, `id` its device and inode) of fleet `fleet` makes
/// under the name `name`: the template's stanza with the file's stem filled in, validated as a
/// plain database would be, every templated path kept below its fixed part. Err: why it is
/// none, one line.
pub fn member(
    fleet: &Fleet,
    daemon: &Daemon,
    stem: &str,
    name: &str,
    path: &Path,
    id: FileId,
) -> Result<Database, String> {
    let key = KeyPath::root().key("database").index(fleet.index);
    let text = path.to_string_lossy().into_owned();
    let raw = substitute(&fleet.raw, stem, name, &text);
    let mut c = Checker::default();
    let mut db = database(&mut c, &key, &raw, daemon);
    let escape = expansions(&fleet.raw, &db)
        .into_iter()
        .find_map(|(k, t, e)| {
            confine_problem(&t, &e.to_string_lossy()).map(|why| format!("{k}: {why}"))
        });
    if let Some(why) = escape.or_else(|| {
        c.problems
            .first()
            .map(|p| format!("{}: {}", p.key.describe(&[]), p.reason))
    }) {
        return Err(why);
    }
    db.fleet = Some(fleet.name.clone());
    db.keep_history = fleet.template.keep_history;
    db.scanned = Some(id);
    Ok(db)
}

/// Why a member's file cannot be used now.
#[derive(Debug)]
pub enum MemberError {
    /// It (or its directory) is gone, or was replaced by another file since the scan: nothing
    /// to do now, the next scan sees what is there.
    Gone(String),
    /// A symlink (or something other than the scanned file) where the scan found the file.
    Refused(String),
}

/// Open `name` below `dir` as an `O_PATH` descriptor, never through a symlink.
fn step(
    dir: &rustix::fd::OwnedFd,
    name: &str,
    last: bool,
) -> rustix::io::Result<rustix::fd::OwnedFd> {
    use rustix::fs::{openat, Mode, OFlags};
    let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !last {
        flags |= OFlags::DIRECTORY;
    }
    openat(dir, name, flags, Mode::empty())
}

/// Whether `name` below `dir` is a symlink (to say so when a step failed).
fn is_link(dir: &rustix::fd::OwnedFd, name: &str) -> bool {
    use rustix::fs::{statat, AtFlags, FileType};
    statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Symlink)
}

/// A member about to be opened: walk from the fleet's directory to its file without
/// following a symlink and check that it is still the file the scan found (device and
/// inode). Returns the path to open: the fleet's directory resolved, then the member's own
/// components, so it holds no symlink at all (SQLite's `SQLITE_OPEN_NOFOLLOW` refuses any).
pub fn verify_member(fleet: &Fleet, db: &Database) -> Result<PathBuf, MemberError> {
    use rustix::fs::{fstat, open, FileType, Mode, OFlags};
    let (root, _) = split_pattern(&fleet.raw.path);
    let shown = shown(&db.path);
    let rel = db.path.strip_prefix(&root).map_err(|_| {
        MemberError::Refused(format!(
            "{shown}: not below the fleet's directory {}",
            root.display()
        ))
    })?;
    let real_root = std::fs::canonicalize(&root).map_err(|e| {
        MemberError::Gone(format!(
            "skipped: the fleet's directory {} is gone ({e}) since the scan",
            root.display()
        ))
    })?;
    let mut dir = open(
        &real_root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| MemberError::Gone(format!("skipped: {}: {e}", root.display())))?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        match step(&dir, part, last) {
            Ok(fd) => dir = fd,
            Err(e) if e == rustix::io::Errno::NOENT => {
                return Err(MemberError::Gone(format!(
                    "skipped: {shown} is gone (deleted or moved since the fleet was scanned)"
                )));
            }
            Err(_) if is_link(&dir, part) => {
                return Err(MemberError::Refused(format!(
                    "{shown}: refused: {part:?} on its path is now a symlink (it was none when the \
                     fleet was scanned); a fleet never follows one"
                )));
            }
            Err(e) => {
                return Err(MemberError::Refused(format!(
                    "{shown}: cannot open {part:?}: {e}"
                )));
            }
        }
    }
    let st = fstat(&dir).map_err(|e| MemberError::Refused(format!("{shown}: {e}")))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Symlink => {
            return Err(MemberError::Refused(format!(
                "{shown}: refused: it is now a symlink (it was a file when the fleet was scanned); \
                 a fleet never follows one"
            )))
        }
        _ => {
            return Err(MemberError::Refused(format!(
                "{shown}: refused: it is no longer a regular file"
            )))
        }
    }
    let now = FileId {
        dev: st.st_dev,
        ino: st.st_ino,
    };
    if db.scanned.is_some_and(|s| s != now) {
        return Err(MemberError::Gone(format!(
            "skipped: {shown} was replaced by another file since the fleet was scanned; the next \
             scan takes it up"
        )));
    }
    Ok(real_root.join(rel))
}

/// At use: no directory below `fixed` on the way to `path` (nor `path` itself) is a symlink.
/// Parts that do not exist yet are fine (they are created as directories).
pub fn no_symlink_below(fixed: &Path, path: &Path) -> Result<(), String> {
    use rustix::fs::{open, Mode, OFlags};
    let Ok(rel) = path.strip_prefix(fixed) else {
        return Err(format!("{} is not below {}", shown(path), fixed.display()));
    };
    let Ok(mut dir) = open(
        fixed,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Ok(()); // created later, below a fixed directory the operator chose
    };
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    for (i, part) in parts.iter().enumerate() {
        match step(&dir, part, i + 1 == parts.len()) {
            Ok(fd) => dir = fd,
            Err(e) if e == rustix::io::Errno::NOENT => return Ok(()),
            Err(_) if is_link(&dir, part) => {
                return Err(format!(
                    "{}: refused: {part:?} below {} is a symlink; a fleet member's paths never \
                     follow one (remove the link)",
                    shown(path),
                    fixed.display()
                ));
            }
            Err(e) => return Err(format!("{}: {part:?}: {e}", shown(path))),
        }
    }
    if is_link_path(path) {
        return Err(format!(
            "{}: refused: it is a symlink; a fleet member's paths never follow one",
            shown(path)
        ));
    }
    Ok(())
}

fn is_link_path(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The paths of a member its `kind` of job uses, with the fixed part each must stay below.
pub fn confined_paths(
    fleet: &Fleet,
    db: &Database,
    kind: crate::domain::JobKind,
) -> Vec<(PathBuf, PathBuf)> {
    use crate::domain::JobKind;
    expansions(&fleet.raw, db)
        .into_iter()
        .filter(|(k, _, _)| match kind {
            JobKind::Backup | JobKind::Incremental => k == "backup.dir" || k.starts_with("attach."),
            JobKind::Prune => k.starts_with("prune.") || k.starts_with("attach."),
            JobKind::Vacuum => k.starts_with("attach."),
            JobKind::Drill => k == "backup.dir",
        })
        .map(|(_, t, e)| (fixed_part(&t), e))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_split_at_the_first_wildcard() {
        assert_eq!(
            split_pattern("/srv/t/*.db"),
            (PathBuf::from("/srv/t"), vec!["*.db".to_string()])
        );
        assert_eq!(
            split_pattern("/srv/t/*/main.db"),
            (PathBuf::from("/srv/t"), vec!["*".into(), "main.db".into()])
        );
    }

    #[test]
    fn expansions_stay_below_their_fixed_part() {
        assert_eq!(fixed_part("/b/inner/{stem}/x"), PathBuf::from("/b/inner"));
        assert!(confine_problem("/b/inner/{stem}", "/b/inner/acme").is_none());
        assert!(confine_problem("/b/inner/{stem}", "/b/inner/..").is_some());
        assert!(confine_problem("/b/inner/{stem}", "/b/inner/.").is_some());
        assert!(confine_problem("/b/inner/{stem}.d", "/b/inner/a\n.d").is_some());
        assert!(confine_problem("/b/{name}/{stem}", "/b/t-x/../../etc").is_some());
        assert!(confine_problem("/b/x{stem}", "/b/x..").is_none());
    }

    #[test]
    fn the_member_rule() {
        for bad in ["", ".", "..", "-rf", "a\nb", "a\u{7f}", &"x".repeat(201)] {
            assert!(stem_problem(bad).is_some(), "{bad:?}");
        }
        for good in [".ht", "a b", "caf\u{e9}", "\"q\"", "..x", &"x".repeat(200)] {
            assert!(stem_problem(good).is_none(), "{good:?}");
        }
        assert_eq!(member_name("t-{stem}", "ACME"), "t-acme");
        assert_eq!(member_name("t-{stem}", "a b"), "t-a-b");
        assert!(name_problem(&member_name("{stem}", "-x")).is_some());
        assert!(name_problem("t-x").is_none());
        assert_eq!(url_encode("a b/?"), "a%20b%2F%3F");
    }
}
