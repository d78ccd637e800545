//! The WAL checkpoints of a rule's batches, on a second connection and thread.
//!
//! After each batch the WAL holds the batch's pages (thousands of frames). Left there, the
//! app's next commit would copy them into the database and fsync it inside its own commit
//! (its auto-checkpoint, 1000 pages by default). A PASSIVE checkpoint needs no write lock: it
//! copies frames up to the oldest reader's mark while writers append. So the job asks this
//! thread for one right after each commit and goes on with the next batch meanwhile; while
//! it runs it holds the checkpoint lock, so the app's auto-checkpoint skips (it never waits
//! for that lock). [`Checkpointer::request`] returns once a checkpoint is running, so the app
//! cannot slip in between; [`Checkpointer::restart_wal`] is the bound on the WAL's size: past
//! [`WAL_BOUND`] the job waits until everything is copied, so its next write starts the WAL
//! from the beginning again.
//!
//! The thread and its connection end when the [`Checkpointer`] is dropped: at the rule's end,
//! on an error, on cancellation (the drop waits for a running checkpoint, tens of ms).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use crate::sqlite::{file_id, open_flags, quote_ident, uri, wal};

/// The WAL's committed part at which the job waits for the checkpoints to catch up (the WAL
/// file then restarts at its beginning on the next write): with a batch's few MiB on top,
/// the file stays well under 64 MiB.
pub(super) const WAL_BOUND: u64 = 24 << 20;

#[derive(Default)]
struct State {
    /// Checkpoints asked for, begun, finished (counters: a request is served by the first
    /// checkpoint begun after it).
    asked: u64,
    begun: u64,
    done: u64,
    running: bool,
    stop: bool,
    /// Time the thread spent in checkpoints.
    spent: Duration,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A checkpointing thread with its own connection to one schema's database file.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    page_size: u64,
}

impl Checkpointer {
    /// A thread checkpointing the file `conn` holds as `schema`, or None when that cannot be
    /// done safely (not in WAL mode, not a plain file of the unix VFS, or the path now names
    /// another file than the one `conn` has open): the caller checkpoints on its own
    /// connection then.
    pub(super) fn start(conn: &Connection, schema: &str) -> Option<Checkpointer> {
        let q = quote_ident(schema);
        let mode: String = conn
            .query_row(&format!("PRAGMA {q}.journal_mode"), [], |r| r.get(0))
            .ok()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return None;
        }
        let path: String = conn
            .query_row(
                "SELECT file FROM pragma_database_list WHERE name = ?1",
                [schema],
                |r| r.get(0),
            )
            .ok()?;
        if path.is_empty() {
            return None;
        }
        let page_size: i64 = conn
            .query_row(&format!("PRAGMA {q}.page_size"), [], |r| r.get(0))
            .ok()?;
        let ours = Connection::open_with_flags(
            uri(std::path::Path::new(&path), "rw"),
            open_flags() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .ok()?;
        let same =
            file_id(conn, schema).is_some() && file_id(conn, schema) == file_id(&ours, "main");
        if !same {
            tracing::debug!("{path}: checkpoints stay on the job's connection (cannot open the same file again)");
            return None;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("prune-checkpoint".into())
            .spawn(move || run(ours, &theirs))
            .ok()?;
        Some(Checkpointer {
            shared,
            thread: Some(thread),
            page_size: page_size.max(512) as u64,
        })
    }

    /// Ask for a checkpoint of everything committed so far; returns once a checkpoint is
    /// running (this one, or one begun before whose end starts this one at once), so the
    /// app's next commit finds the checkpoint lock taken and leaves our pages alone.
    pub(super) fn request(&self) {
        let mut s = self.shared.lock();
        s.asked += 1;
        self.shared.cv.notify_all();
        while !s.running && s.begun < s.asked && !s.stop {
            s = self.shared.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Wait until every checkpoint asked for has finished; how long that took.
    pub(super) fn wait_idle(&self) -> Duration {
        let t = Instant::now();
        let mut s = self.shared.lock();
        while (s.done < s.asked || s.running) && !s.stop {
            s = self.shared.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        t.elapsed()
    }

    /// The bound on the WAL: when its committed part (read from the wal-index of `conn`'s
    /// `schema`) is past [`WAL_BOUND`], wait until it is all copied into the database (asking
    /// once more if the app committed meanwhile), so the next write transaction starts the
    /// WAL at its beginning. The time waited.
    pub(super) fn restart_wal(&self, conn: &Connection, schema: &str) -> Duration {
        let t = Instant::now();
        for _ in 0..3 {
            let Some(h) = wal::handles(conn, schema).and_then(|h| h.index_header().ok()) else {
                break;
            };
            let used = u64::from(h.mx_frame) * (self.page_size + 24);
            if used < WAL_BOUND || h.n_backfill >= h.mx_frame {
                break;
            }
            self.wait_idle();
            let copied = wal::handles(conn, schema)
                .and_then(|h| h.index_header().ok())
                .is_some_and(|h| h.n_backfill >= h.mx_frame);
            if copied {
                break;
            }
            self.request();
        }
        t.elapsed()
    }

    /// Time the thread has spent checkpointing.
    pub(super) fn spent(&self) -> Duration {
        self.shared.lock().spent
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Marks the thread stopped when it ends, however it ends, so the job never waits for a
/// thread that is gone.
struct Ended<'a>(&'a Shared);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.stop = true;
        s.running = false;
        self.0.cv.notify_all();
    }
}

/// The thread: one PASSIVE checkpoint per batch of requests, until stopped; the connection is
/// closed when it returns.
fn run(conn: Connection, shared: &Shared) {
    let _ended = Ended(shared);
    let mut s = shared.lock();
    loop {
        while !s.stop && s.begun >= s.asked {
            s = shared.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if s.stop {
            break;
        }
        s.begun = s.asked;
        s.running = true;
        shared.cv.notify_all();
        drop(s);
        let t = Instant::now();
        let result = conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        let took = t.elapsed();
        if let Err(e) = &result {
            tracing::debug!("background checkpoint failed: {e}");
        }
        s = shared.lock();
        s.running = false;
        s.done = s.begun;
        s.spent += took;
        shared.cv.notify_all();
    }
    drop(s);
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `conn` is the only connection to its file: leaving WAL mode takes an exclusive
    /// lock, which any other open connection prevents ("database is locked"). Back to WAL
    /// after.
    fn alone(conn: &Connection) -> bool {
        let left = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| {
                r.get::<_, String>(0)
            })
            .is_ok_and(|m| m == "delete");
        if left {
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
                .unwrap();
        }
        left
    }

    fn wal_db() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(x);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO t SELECT randomblob(500) FROM n;",
        )
        .unwrap();
        (dir, path, conn)
    }

    fn header(conn: &Connection) -> wal::IndexHeader {
        wal::handles(conn, "main").unwrap().index_header().unwrap()
    }

    #[test]
    fn checkpoints_run_on_their_own_connection_and_end_with_the_guard() {
        let (_dir, path, conn) = wal_db();
        let ck = Checkpointer::start(&conn, "main").expect("a WAL file: background checkpoints");
        let h = header(&conn);
        assert!(h.mx_frame > 100 && h.n_backfill == 0, "{h:?}");
        ck.request();
        ck.wait_idle();
        let h = header(&conn);
        assert_eq!(h.n_backfill, h.mx_frame, "everything copied: {h:?}");
        assert!(!alone(&conn), "the checkpoints' own connection is open");
        assert!(ck.spent() > Duration::ZERO);
        // Requested and dropped at once (as on an error or a cancellation): the thread ends
        // and its connection is closed before the drop returns.
        conn.execute("DELETE FROM t WHERE rowid % 2 = 0", [])
            .unwrap();
        ck.request();
        drop(ck);
        assert!(alone(&conn), "the checkpoint connection is closed");
        conn.execute("DELETE FROM t WHERE rowid % 3 = 0", [])
            .unwrap();
        // The job's connection works on: a TRUNCATE checkpoint empties the WAL.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        assert_eq!(
            std::fs::metadata(path.with_extension("db-wal"))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn past_the_bound_the_job_waits_until_the_wal_can_restart() {
        let (_dir, _path, conn) = wal_db();
        let ck = Checkpointer::start(&conn, "main").unwrap();
        // Under the bound: nothing to wait for.
        ck.restart_wal(&conn, "main");
        assert_eq!(header(&conn).n_backfill, 0);
        // Past it (~40 MiB of frames, none copied): everything is copied before it returns,
        // and the next write starts the WAL at its beginning.
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 80000)
             INSERT INTO t SELECT randomblob(500) FROM n;",
        )
        .unwrap();
        let h = header(&conn);
        assert!(u64::from(h.mx_frame) * 4120 > WAL_BOUND, "{h:?}");
        ck.restart_wal(&conn, "main");
        let h = header(&conn);
        assert_eq!(h.n_backfill, h.mx_frame, "{h:?}");
        conn.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert!(header(&conn).mx_frame < 10, "the WAL restarted");
    }

    #[test]
    fn a_rollback_journal_database_has_no_checkpoint_thread() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("j.db")).unwrap();
        conn.execute_batch("CREATE TABLE t(x)").unwrap();
        assert!(Checkpointer::start(&conn, "main").is_none());
    }
}
