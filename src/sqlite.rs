//! SQLite access: one r2d2 pool per database (open flags without CREATE, WAL, busy timeout,
//! REGEXP, attached databases, `SELECT 1` on check-out, slow-statement log) and `diagnose`,
//! which tells an operator why a database cannot be used and what to do about it.
//!
//! Only this module and `jobs/` touch connections, and only on blocking threads.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{ffi, Connection, OpenFlags};
use rustix::fs::Access;

use crate::config::{Config, Database, JournalMode};
use crate::exit::ExitCode;

pub type SqlitePool = Pool<Manager>;

/// Statements slower than this (in nanoseconds) are logged; set from `daemon.slow_statement`.
/// Process-wide on purpose: it is read in `profile_callback`, the C callback SQLite calls with
/// only the context pointer given at install time. Carrying it there would take a pointer that
/// lives as long as each connection (pooled, a fleet member's own, verification copies'), for
/// one number that is the same for the whole process: one config at a time, and a reload
/// sets the new value for every connection at once.
static SLOW_NANOS: AtomicU64 = AtomicU64::new(100_000_000);

/// Flags for every connection: read-write, never create (a missing database is an error, not
/// a new empty file), URI names so attached databases get the same treatment.
pub fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// A `file:` URI opening `path` with `mode` (`rw`, `ro`), never creating it. Every byte
/// outside printable ASCII is percent-encoded, so a name in UTF-8 (`ünï.db`) reaches SQLite
/// byte for byte (SQLite decodes `%XX` to one byte).
pub fn uri(path: &Path, mode: &str) -> String {
    let mut out = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => out.push_str(&format!("%{b:02X}")),
            0x21..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    format!("{out}?mode={mode}")
}

/// A read-only connection to `db` with its attachments, for checks that must not change
/// anything (not even the journal mode).
pub fn open_readonly(db: &Database, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        uri(&db.path, "ro"),
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    for a in &db.attach {
        conn.execute("ATTACH DATABASE ?1 AS ?2", (uri(&a.path, "ro"), &a.alias))?;
    }
    Ok(conn)
}

/// Settings applied to every new connection.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    pub busy_timeout: Duration,
    pub journal_mode: JournalMode,
    pub attach: Vec<(String, PathBuf)>,
}

impl ConnSettings {
    pub fn for_database(db: &Database, busy_timeout: Duration) -> Self {
        ConnSettings {
            busy_timeout,
            journal_mode: db.journal_mode,
            attach: db
                .attach
                .iter()
                .map(|a| (a.alias.clone(), a.path.clone()))
                .collect(),
        }
    }
}

/// Prepare a fresh connection: pragmas, WAL, REGEXP, attachments, slow-statement hook.
pub fn init_connection(conn: &mut Connection, s: &ConnSettings) -> rusqlite::Result<()> {
    conn.busy_timeout(s.busy_timeout)?;
    if s.journal_mode == JournalMode::Wal {
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))?;
        }
    }
    add_regexp(conn)?;
    for (alias, path) in &s.attach {
        conn.execute("ATTACH DATABASE ?1 AS ?2", (uri(path, "rw"), alias))?;
    }
    install_slow_log(conn);
    Ok(())
}

/// `x REGEXP y` for rules' SQL, with compiled patterns cached per statement.
fn add_regexp(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "regexp",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let re: Arc<regex::Regex> = ctx.get_or_create_aux(0, |v| {
                regex::Regex::new(v.as_str()?)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
            })?;
            let text = match ctx.get_raw(1) {
                rusqlite::types::ValueRef::Null => return Ok(None),
                v => v
                    .as_str()
                    .map_err(|e| rusqlite::Error::UserFunctionError(e.into()))?,
            };
            Ok(Some(re.is_match(text)))
        },
    )
}

/// Set the slow-statement threshold (process-wide; one daemon has one config).
pub fn set_slow_threshold(d: Duration) {
    SLOW_NANOS.store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
}

thread_local! {
    /// Set while this thread runs a statement that is long by nature (see `expected_slow`).
    static EXPECTED_SLOW: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, whose statements are long by nature and hold no write lock the application waits
/// for (the guard counts of a prune, the source's row counts of a verified backup, VACUUM):
/// the slow-statement log reports them at debug level only, so its warnings stay about
/// statements that should have been quick.
pub fn expected_slow<T>(f: impl FnOnce() -> T) -> T {
    let before = EXPECTED_SLOW.replace(true);
    let out = f();
    EXPECTED_SLOW.set(before);
    out
}

fn install_slow_log(conn: &Connection) {
    // SAFETY: the handle is valid for the connection's life; the callback only reads the
    // statement it is given, and uses no context pointer.
    unsafe {
        ffi::sqlite3_trace_v2(
            conn.handle(),
            ffi::SQLITE_TRACE_PROFILE as c_uint,
            Some(profile_callback),
            std::ptr::null_mut(),
        );
    }
}

unsafe extern "C" fn profile_callback(
    _event: c_uint,
    _ctx: *mut c_void,
    stmt: *mut c_void,
    nanos: *mut c_void,
) -> c_int {
    let nanos = *(nanos as *const i64);
    if nanos < 0 || (nanos as u64) < SLOW_NANOS.load(Ordering::Relaxed) {
        return 0;
    }
    let stmt = stmt as *mut ffi::sqlite3_stmt;
    let cstr = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let sql = cstr(ffi::sqlite3_sql(stmt));
    let expanded_ptr = ffi::sqlite3_expanded_sql(stmt);
    let expanded = cstr(expanded_ptr);
    if !expanded_ptr.is_null() {
        ffi::sqlite3_free(expanded_ptr as *mut c_void);
    }
    let db = ffi::sqlite3_db_handle(stmt);
    let file = cstr(ffi::sqlite3_db_filename(db, c"main".as_ptr()));
    let params = extract_params(&sql, &expanded);
    let took = Duration::from_nanos(nanos as u64);
    if EXPECTED_SLOW.get() {
        tracing::debug!(
            "long maintenance statement on {file}: {} ms: {sql}",
            took.as_millis()
        );
    } else {
        crate::logging::slow_statement(&file, took, &sql, &params);
    }
    0
}

/// Cut `s` to `max` characters, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Recover each bound parameter's rendering from SQLite's expanded SQL, cut to 100
/// characters; blobs are shown by size only.
pub fn extract_params(template: &str, expanded: &str) -> Vec<String> {
    let t: Vec<char> = template.chars().collect();
    let e: Vec<char> = expanded.chars().collect();
    let (mut i, mut j) = (0, 0);
    let mut quote: Option<char> = None;
    let mut out = Vec::new();
    while i < t.len() && j < e.len() {
        let c = t[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        } else if c == '?'
            || (matches!(c, ':' | '@' | '$')
                && t.get(i + 1)
                    .is_some_and(|n| n.is_alphanumeric() || *n == '_'))
        {
            // skip the parameter token in the template
            i += 1;
            while i < t.len() && (t[i].is_alphanumeric() || t[i] == '_') {
                i += 1;
            }
            // read one literal from the expanded text
            let start = j;
            if e[j] == '\'' {
                j += 1;
                while j < e.len() {
                    if e[j] == '\'' {
                        if e.get(j + 1) == Some(&'\'') {
                            j += 2;
                            continue;
                        }
                        j += 1;
                        break;
                    }
                    j += 1;
                }
                out.push(truncate(&e[start..j].iter().collect::<String>(), 100));
            } else if (e[j] == 'x' || e[j] == 'X') && e.get(j + 1) == Some(&'\'') {
                j += 2;
                while j < e.len() && e[j] != '\'' {
                    j += 1;
                }
                out.push(format!("<blob {} bytes>", (j - start - 2) / 2));
                j += 1;
            } else {
                while j < e.len()
                    && (e[j].is_ascii_alphanumeric() || matches!(e[j], '.' | '-' | '+'))
                {
                    j += 1;
                }
                out.push(truncate(&e[start..j].iter().collect::<String>(), 100));
            }
            continue;
        }
        if t[i] != e[j] {
            break; // texts diverged: stop rather than guess
        }
        i += 1;
        j += 1;
    }
    out
}

/// One pool per configured database, created lazily (no connection is opened until a job
/// asks), so a missing database never stops the daemon from starting. Fleet members get
/// none: a fleet can have thousands, and a pool keeps its connection (3 file descriptors and
/// the -shm mapping) for minutes after a run; a member's job opens one connection and closes
/// it when done. Cloning is cheap (the map is shared): every run carries a copy.
///
/// The pools of one `Pools` share a few upkeep threads of their own, which end with the last
/// of these pools: r2d2 schedules each pool's reaper at a fixed rate and never cancels it, so
/// on threads shared for the process's life every reload (new pools) would leave one task
/// per database behind, for ever.
#[derive(Clone, Default)]
pub struct Pools {
    pools: Arc<HashMap<String, SqlitePool>>,
}

impl Pools {
    pub fn new(config: &Config) -> Self {
        set_slow_threshold(config.daemon.slow_statement);
        let plain: Vec<&Arc<Database>> = config
            .databases
            .iter()
            .filter(|db| db.fleet.is_none())
            .collect();
        if plain.is_empty() {
            return Pools::default();
        }
        let threads = upkeep_threads();
        let pools = plain
            .into_iter()
            .map(|db| {
                (
                    db.name.clone(),
                    pool_for(db, config.daemon.busy_timeout, threads.clone()),
                )
            })
            .collect();
        Pools {
            pools: Arc::new(pools),
        }
    }

    pub fn get(&self, name: &str) -> Option<&SqlitePool> {
        self.pools.get(name)
    }
}

/// A few small threads for one set of pools (r2d2 would start three per pool: 300 threads for
/// 100 databases). r2d2 also opens connections on them, and opening a locked database waits
/// up to busy_timeout: more than one, so one locked database does not hold up the others.
/// When the last pool holding them goes, the threads end at once and drop their scheduled
/// tasks (the reapers) instead of waiting for them.
fn upkeep_threads() -> Arc<scheduled_thread_pool::ScheduledThreadPool> {
    Arc::new(
        scheduled_thread_pool::ScheduledThreadPool::builder()
            .num_threads(4)
            .thread_name_pattern("litekeeper-pool-{}")
            .on_drop_behavior(scheduled_thread_pool::OnPoolDropBehavior::DiscardPendingScheduled)
            .build(),
    )
}

/// Build the pool for one database (opens nothing yet), its upkeep on `threads`.
fn pool_for(
    db: &Database,
    busy_timeout: Duration,
    threads: Arc<scheduled_thread_pool::ScheduledThreadPool>,
) -> SqlitePool {
    Pool::builder()
        .thread_pool(threads)
        .max_size(4)
        .min_idle(Some(0))
        .idle_timeout(Some(Duration::from_secs(300)))
        .connection_timeout(busy_timeout + Duration::from_secs(1))
        .test_on_check_out(true) // r2d2_sqlite's is_valid runs `SELECT 1`
        // A failed connect is reported once, by the job, with its diagnosis: r2d2's default
        // handler would log every retry as a bare "database is locked".
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(Manager(manager(db, busy_timeout)))
}

/// r2d2_sqlite's manager with one more test at check-out: a connection whose database file
/// (main or attached) is no longer the file at its path — restored in place, replaced — is
/// dropped and a new one is opened on the file there now. The test is SQLite's own
/// `SQLITE_FCNTL_HAS_MOVED` (the path's inode against the open file's), which also makes the
/// old connection close without checkpointing into, or deleting, the new file's WAL.
pub struct Manager(SqliteConnectionManager);

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = rusqlite::Error;

    fn connect(&self) -> Result<Connection, rusqlite::Error> {
        self.0.connect()
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), rusqlite::Error> {
        self.0.is_valid(conn)?;
        match moved_schema(conn) {
            None => Ok(()),
            Some(schema) => Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_READONLY_DBMOVED),
                Some(format!(
                    "{schema}: the file at its path was replaced; reconnecting"
                )),
            )),
        }
    }

    fn has_broken(&self, conn: &mut Connection) -> bool {
        self.0.has_broken(conn)
    }
}

/// The first schema (`main` or an attachment's alias) whose file is no longer the one at its
/// path.
fn moved_schema(conn: &Connection) -> Option<String> {
    let names: Vec<String> = conn
        .prepare("PRAGMA database_list")
        .and_then(|mut s| s.query_map([], |r| r.get(1))?.collect())
        .ok()?;
    names.into_iter().filter(|n| n != "temp").find(|name| {
        let Ok(cname) = std::ffi::CString::new(name.as_str()) else {
            return false;
        };
        let mut moved: c_int = 0;
        // SAFETY: a valid handle, a NUL-terminated schema name, and an int for the answer.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                conn.handle(),
                cname.as_ptr(),
                ffi::SQLITE_FCNTL_HAS_MOVED,
                &mut moved as *mut c_int as *mut c_void,
            )
        };
        rc == ffi::SQLITE_OK && moved != 0
    })
}

/// One connection for one run (fleet members), opened on the calling thread with the settings
/// of a pooled one and closed when dropped: a fleet has thousands of members, and r2d2 opens
/// connections on its shared upkeep thread, where one locked database would hold up the rest.
pub fn connect_once(db: &Database, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    use r2d2::ManageConnection;
    manager(db, busy_timeout).connect()
}

/// Why `connect_verified` gave no connection.
#[derive(Debug, thiserror::Error)]
pub enum VerifiedOpenError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// SQLite opened another file than the one checked (or a path with a symlink in it).
    #[error("{0}")]
    NotTheFile(String),
}

/// A fleet member's connection to the very file `expect` names (device and inode from the
/// scan, checked again by the caller's walk): opened by `path` with `SQLITE_OPEN_NOFOLLOW`, so
/// SQLite refuses a symlink anywhere on the path, then SQLite's own file descriptor is
/// `fstat`ed and compared with `expect` — a directory swapped for a link between the walk and
/// the open cannot hand it another file. Only then are the settings applied (the switch to
/// WAL is the first write). Closed when dropped, like `connect_once`.
pub fn connect_verified(
    db: &Database,
    path: &Path,
    expect: crate::config::FileId,
    busy_timeout: Duration,
) -> Result<Connection, VerifiedOpenError> {
    let mut conn = Connection::open_with_flags(
        uri(path, "rw"),
        open_flags() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(|e| match e.sqlite_error() {
        Some(f) if f.extended_code == ffi::SQLITE_CANTOPEN_SYMLINK => {
            VerifiedOpenError::NotTheFile(format!(
                "{}: refused: a symlink is on its path now (there was none when the fleet was \
                 scanned); a fleet never follows one",
                db.path.display()
            ))
        }
        _ => VerifiedOpenError::Sqlite(e),
    })?;
    let got = main_file_id(&conn).ok_or_else(|| {
        VerifiedOpenError::NotTheFile(format!(
            "{}: refused: cannot tell which file SQLite opened",
            db.path.display()
        ))
    })?;
    if got != expect {
        return Err(VerifiedOpenError::NotTheFile(format!(
            "{}: refused: SQLite opened another file than the one the fleet's scan found (it \
             was replaced or a directory on its path was swapped for a link while opening)",
            db.path.display()
        )));
    }
    // ATTACH inherits SQLITE_OPEN_NOFOLLOW: attachments by their resolved directory (the
    // caller refused a symlink below their template's fixed part; one above it is the
    // operator's).
    let mut settings = ConnSettings::for_database(db, busy_timeout);
    for (_, p) in &mut settings.attach {
        if let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            if let Ok(real) = std::fs::canonicalize(dir) {
                *p = real.join(name);
            }
        }
    }
    init_connection(&mut conn, &settings)?;
    Ok(conn)
}

/// Device and inode of the file SQLite holds open as `main`: its descriptor, read from the
/// unix VFS's file object (`SQLITE_FCNTL_FILE_POINTER`; the descriptor `h` follows three
/// pointers in `struct unixFile` — the bundled SQLite is the one we build, and a unit test
/// checks the layout against a file we know). None for another VFS.
fn main_file_id(conn: &Connection) -> Option<crate::config::FileId> {
    use std::os::fd::BorrowedFd;
    let mut vfs: *mut ffi::sqlite3_vfs = std::ptr::null_mut();
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: the connection is open; both file controls write one pointer to their argument.
    unsafe {
        let db = conn.handle();
        let main = c"main".as_ptr();
        if ffi::sqlite3_file_control(
            db,
            main,
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
            main,
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        ) != ffi::SQLITE_OK
            || file.is_null()
            || (*file).pMethods.is_null()
        {
            return None;
        }
        let h = *(file.cast::<u8>())
            .add(3 * std::mem::size_of::<*const c_void>())
            .cast::<c_int>();
        if h < 0 {
            return None;
        }
        let st = rustix::fs::fstat(BorrowedFd::borrow_raw(h)).ok()?;
        Some(crate::config::FileId {
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }
}

fn manager(db: &Database, busy_timeout: Duration) -> SqliteConnectionManager {
    let settings = ConnSettings::for_database(db, busy_timeout);
    SqliteConnectionManager::file(uri(&db.path, "rw"))
        .with_flags(open_flags())
        .with_init(move |c| init_connection(c, &settings))
}

/// How bad a finding is: errors make `check` exit 1, warnings are advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One thing `diagnose` found, with the exit code a job would fail with.
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub code: ExitCode,
    /// What is wrong, naming the path.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl Finding {
    fn error(code: ExitCode, what: String, fix: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            code,
            what,
            fix: fix.into(),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.what, self.fix)
    }
}

/// access(2): may the real user (and group) read, write or search `path`.
fn access(path: &Path, mode: Access) -> bool {
    rustix::fs::access(path, mode).is_ok()
}

/// The files SQLite opens beside a database: its WAL, shared-memory index and rollback
/// journal.
pub const SIDECARS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// `path` with a sidecar suffix (`-wal`…).
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Refuse a sidecar (`-wal`, `-shm`, `-journal`) that exists but is not a regular file: SQLite
/// would open a FIFO there and block forever, lock held, deaf to SIGTERM. Looked at with
/// lstat, nothing is opened. Run right before SQLite opens `path`.
pub fn refuse_special_sidecars(path: &Path) -> Result<(), Finding> {
    for suffix in SIDECARS {
        let p = sidecar(path, suffix);
        match crate::safe_fs::special_file_at(&p) {
            Ok(None) => {}
            Ok(Some(kind)) => {
                return Err(Finding::error(
                    ExitCode::NoInput,
                    format!(
                        "{}: not a regular file ({kind}) where SQLite keeps the database's {suffix} file; refusing to open the database (SQLite would block on it)",
                        p.display()
                    ),
                    "remove it; SQLite creates its -wal, -shm and -journal files itself",
                ))
            }
            Err(e) => {
                return Err(Finding::error(
                    ExitCode::IoErr,
                    format!("{}: cannot stat: {e}", p.display()),
                    "check the directory's permissions and the disk",
                ))
            }
        }
    }
    Ok(())
}

/// Cheap checks on the file system only: directory, file, permissions, header, and that no
/// special file sits where SQLite keeps the sidecars. Jobs run these before taking a
/// connection so a broken setup fails fast with a clear reason; nothing here can block.
pub fn preflight(path: &Path) -> Result<(), Finding> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!("{shown}: directory {} does not exist", dir.display()),
            "create it, or correct `path` in the configuration",
        ));
    }
    if !access(dir, Access::WRITE_OK | Access::EXEC_OK) {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!(
                "{shown}: no write permission on directory {} (WAL mode creates the -wal and -shm files there)",
                dir.display()
            ),
            "run litekeeper as the database's owner, or grant that user write access to the directory",
        ));
    }
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Finding::error(
                ExitCode::NoInput,
                format!("{shown}: database file does not exist"),
                "correct `path`; litekeeper never creates databases",
            ))
        }
        Err(e) => {
            return Err(Finding::error(
                ExitCode::IoErr,
                format!("{shown}: cannot stat: {e}"),
                "check the path and the disk",
            ))
        }
    };
    if !meta.is_file() {
        use std::os::unix::fs::MetadataExt;
        let kind = crate::safe_fs::describe(rustix::fs::FileType::from_raw_mode(meta.mode()));
        return Err(Finding::error(
            ExitCode::NoInput,
            format!("{shown}: not a regular file ({kind})"),
            "point `path` at the database file itself",
        ));
    }
    refuse_special_sidecars(path)?;
    // Read and write are told apart: the fix differs (a read-only file may be deliberate).
    let who = || {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        format!(
            "mode {:04o}, owner uid {}, litekeeper runs as uid {me}",
            meta.mode() & 0o7777,
            meta.uid()
        )
    };
    if !access(path, Access::READ_OK) {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!("{shown}: no read permission on the file ({})", who()),
            "run litekeeper as the database's owner, or grant that user read and write access",
        ));
    }
    if !access(path, Access::WRITE_OK) {
        return Err(Finding::error(
            ExitCode::NoInput,
            format!(
                "{shown}: no write permission on the file ({}); prune, vacuum and the switch to WAL need it",
                who()
            ),
            "run litekeeper as the database's owner, or grant that user write access",
        ));
    }
    let mut header = [0u8; 16];
    // O_NONBLOCK: should a FIFO have taken the file's place since the stat, fail, not hang.
    let n = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
    }
    .and_then(|mut f| f.read(&mut header))
    .map_err(|e| {
        Finding::error(
            ExitCode::IoErr,
            format!("{shown}: cannot read: {e}"),
            "check the disk (dmesg) and the file",
        )
    })?;
    if n == 0 {
        return Err(Finding::error(
            ExitCode::DataErr,
            format!("{shown}: file is empty (0 bytes), not an application database"),
            "correct `path`, or let the application create its database first",
        ));
    }
    if n < 16 || &header != b"SQLite format 3\0" {
        return Err(Finding::error(
            ExitCode::DataErr,
            format!("{shown}: not an SQLite database (bad file header)"),
            "correct `path`; if this was the database, restore it from a backup",
        ));
    }
    Ok(())
}

/// Translate an SQLite error into a finding that says why and what to do.
pub fn explain(path: &Path, e: &rusqlite::Error, busy_timeout: Duration) -> Finding {
    use rusqlite::ErrorCode as C;
    let shown = path.display();
    let code = e.sqlite_error_code();
    match code {
        Some(C::DatabaseBusy) | Some(C::DatabaseLocked) => Finding::error(
            ExitCode::TempFail,
            format!(
                "{shown}: locked by another process for longer than busy_timeout ({})",
                humantime::format_duration(busy_timeout)
            ),
            "find the holder with `fuser -v` on the file; retry later or raise daemon.busy_timeout",
        ),
        Some(C::NotADatabase) => Finding::error(
            ExitCode::DataErr,
            format!("{shown}: not a database (or encrypted): {e}"),
            "correct `path`; if this was the database, restore it from a backup",
        ),
        Some(C::DatabaseCorrupt) => Finding::error(
            ExitCode::DataErr,
            format!("{shown}: database is corrupt: {e}"),
            "stop the application and restore the newest verified backup",
        ),
        Some(C::SystemIoFailure) | Some(C::DiskFull) => Finding::error(
            ExitCode::IoErr,
            format!("{shown}: I/O error: {e}"),
            "check the disk (dmesg, df) and the file system",
        ),
        Some(C::ReadOnly) | Some(C::PermissionDenied) | Some(C::CannotOpen) => Finding::error(
            ExitCode::NoInput,
            format!("{shown}: cannot open read-write: {e}"),
            "check owner and permissions of the file, its -wal/-shm files and its directory",
        ),
        _ => Finding::error(
            ExitCode::Failed,
            format!("{shown}: {e}"),
            "see the SQLite error above",
        ),
    }
}

/// A non-empty `-journal` beside the database starting with SQLite's journal magic.
pub fn has_rollback_journal(path: &Path) -> bool {
    const MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
    let mut head = [0u8; 8];
    crate::safe_fs::open_regular(&sidecar(path, "-journal"), false, false)
        .and_then(|mut f| f.read_exact(&mut head))
        .map(|_| head == MAGIC)
        .unwrap_or(false)
}

/// Full diagnosis of one database file for `check`: file system, open, integrity (quick_check),
/// write lock within the busy timeout, journal mode. Never creates or modifies anything.
pub fn diagnose(path: &Path, want_wal: bool, busy_timeout: Duration) -> Vec<Finding> {
    if let Err(f) = preflight(path) {
        return vec![f];
    }
    // Opening a database with a hot journal rolls the interrupted transaction back, which is a
    // change: `check` only reports it and leaves the recovery to the next job.
    if has_rollback_journal(path) {
        return vec![Finding {
            severity: Severity::Warning,
            code: ExitCode::Ok,
            what: format!(
                "{}: a rollback journal (-journal) is present: a transaction was interrupted (or is running right now); not checked further so nothing changes",
                path.display()
            ),
            fix: "the next job's open rolls the interrupted transaction back (SQLite's recovery); \
                  run `litekeeper check` again afterwards"
                .into(),
        }];
    }
    let conn = match Connection::open_with_flags(uri(path, "rw"), open_flags()) {
        Ok(c) => c,
        Err(e) => return vec![explain(path, &e, busy_timeout)],
    };
    let run = || -> rusqlite::Result<Vec<Finding>> {
        conn.busy_timeout(busy_timeout)?;
        let mut found = Vec::new();
        let check: Vec<String> = conn
            .prepare("PRAGMA quick_check(5)")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if check != ["ok"] {
            // One line per finding: SQLite's messages can contain newlines
            // ("*** in database main ***\nTree 2 page 71 …"), which would break `check`'s
            // "NAME: error: …" lines.
            let said: Vec<&str> = check
                .iter()
                .flat_map(|m| m.lines())
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            found.push(Finding::error(
                ExitCode::DataErr,
                format!(
                    "{}: database is corrupt: quick_check says {}",
                    path.display(),
                    said.join("; ")
                ),
                "stop the application and restore the newest verified backup",
            ));
            return Ok(found);
        }
        // Can we get the write lock within the timeout? (prune and vacuum need it)
        conn.execute_batch("BEGIN IMMEDIATE; ROLLBACK;")?;
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if want_wal && !mode.eq_ignore_ascii_case("wal") {
            found.push(Finding {
                severity: Severity::Warning,
                code: ExitCode::Ok,
                what: format!("{}: journal mode is {mode}, not WAL", path.display()),
                fix: "litekeeper switches it to WAL on its first job (readers then never block \
                      writers); set journal_mode = \"keep\" to leave it"
                    .into(),
            });
        }
        Ok(found)
    };
    match run() {
        Ok(f) => f,
        Err(e) => vec![explain(path, &e, busy_timeout)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_recovered_and_cut() {
        let long = "y".repeat(300);
        let expanded = format!("SELECT * FROM t WHERE a = 'it''s' AND b = 42 AND c = x'00ff10' AND d = '{long}' AND e = NULL");
        let p = extract_params(
            "SELECT * FROM t WHERE a = ? AND b = ?2 AND c = :blob AND d = @d AND e = $e",
            &expanded,
        );
        assert_eq!(p.len(), 5, "{p:?}");
        assert_eq!(p[0], "'it''s'");
        assert_eq!(p[1], "42");
        assert_eq!(p[2], "<blob 3 bytes>");
        assert_eq!(p[3].chars().count(), 101);
        assert_eq!(p[4], "NULL");
        // a '?' inside a string literal of the template is not a parameter
        assert_eq!(extract_params("SELECT '?' , ?", "SELECT '?' , 7"), ["7"]);
    }

    #[test]
    fn the_main_file_id_is_that_of_the_opened_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        // Another open file first, so the descriptor is not simply the lowest free one.
        let _other = std::fs::File::open(dir.path()).unwrap();
        let conn = Connection::open(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(
            main_file_id(&conn),
            Some(crate::config::FileId {
                dev: m.dev(),
                ino: m.ino()
            })
        );
    }

    #[test]
    fn uri_escapes() {
        assert_eq!(
            uri(Path::new("/a/b?c#d%.db"), "rw"),
            "file:/a/b%3Fc%23d%25.db?mode=rw"
        );
        assert_eq!(
            uri(Path::new("/a/ün ï.db"), "ro"),
            "file:/a/%C3%BCn%20%C3%AF.db?mode=ro"
        );
        // The URI opens the file of that name, not a mangled one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ünï 数据.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        let c = Connection::open_with_flags(uri(&path, "rw"), open_flags()).unwrap();
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn missing_file_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.db");
        let f = diagnose(&path, true, Duration::from_millis(100));
        assert_eq!(f[0].code, ExitCode::NoInput);
        assert!(!path.exists());
        let r = Connection::open_with_flags(uri(&path, "rw"), open_flags());
        assert!(r.is_err());
        assert!(!path.exists());
    }
    #[test]
    fn slow_statements_are_logged_with_cut_sql_and_params() {
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        let mut conn = Connection::open_with_flags(uri(&path, "rw"), open_flags()).unwrap();
        let settings = ConnSettings {
            busy_timeout: Duration::from_secs(1),
            journal_mode: JournalMode::Wal,
            attach: vec![],
        };
        init_connection(&mut conn, &settings).unwrap();
        let long_sql = format!("SELECT ?1, ?2, '{}'", "z".repeat(400));
        tracing::subscriber::with_default(subscriber, || {
            set_slow_threshold(Duration::ZERO);
            conn.query_row(&long_sql, (&"p".repeat(250), &vec![1u8, 2, 3]), |_| Ok(()))
                .unwrap();
            // Long by nature (a guard count, VACUUM): not a warning.
            expected_slow(|| {
                conn.query_row("SELECT 'expected-long'", [], |_| Ok(()))
                    .unwrap()
            });
            set_slow_threshold(Duration::from_millis(100));
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line = out
            .lines()
            .find(|l| l.contains("slow statement"))
            .expect(&out);
        assert!(line.contains(&format!("'{}…", "p".repeat(99))), "{line}");
        assert!(!line.contains(&"p".repeat(101)), "{line}");
        assert!(line.contains("<blob 3 bytes>"), "{line}");
        // the SQL is cut to 200 characters
        assert!(
            line.contains(&format!("{}…", "z".repeat(200 - 21))),
            "{line}"
        );
        assert!(!line.contains(&"z".repeat(200)), "{line}");
        assert!(!out.contains("expected-long"), "{out}");
    }
}
