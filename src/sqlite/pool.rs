//! One r2d2 pool per configured database, and the check-out test that drops a connection
//! whose file was replaced.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{ffi, Connection};

use super::manager;
use super::slow::set_slow_threshold;
use crate::config::{Config, Database};

pub(super) type SqlitePool = Pool<Manager>;

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
