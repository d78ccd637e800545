//! The slow-statement log: SQLite's profile callback, its threshold, and the statements that
//! are long by nature.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{ffi, Connection};

/// Statements slower than this (in nanoseconds) are logged; set from `daemon.slow_statement`.
/// Process-wide on purpose: it is read in `profile_callback`, the C callback SQLite calls with
/// only the context pointer given at install time. Carrying it there would take a pointer that
/// lives as long as each connection (pooled, a fleet member's own, verification copies'), for
/// one number that is the same for the whole process: one config at a time, and a reload
/// sets the new value for every connection at once.
static SLOW_NANOS: AtomicU64 = AtomicU64::new(100_000_000);

/// Set the slow-statement threshold (process-wide; one daemon has one config).
pub(super) fn set_slow_threshold(d: Duration) {
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
pub(crate) fn expected_slow<T>(f: impl FnOnce() -> T) -> T {
    let before = EXPECTED_SLOW.replace(true);
    let out = f();
    EXPECTED_SLOW.set(before);
    out
}

pub(super) fn install_slow_log(conn: &Connection) {
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

pub(crate) use crate::domain::truncate;

/// Recover each bound parameter's rendering from SQLite's expanded SQL, cut to 100
/// characters; blobs are shown by size only.
pub(super) fn extract_params(template: &str, expanded: &str) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::JournalMode;
    use crate::sqlite::{init_connection, open_flags, uri, ConnSettings};

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
