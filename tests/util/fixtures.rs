//! Databases and configurations more than one test file starts from.

use std::path::{Path, PathBuf};

use super::TestEnv;

/// `app/files.db`: a table `blob(key, data)` of 300 rows keyed `N/0`, each holding `data_sql`
/// (an SQL expression such as `randomblob(300)`).
pub fn files_db(env: &TestEnv, data_sql: &str) -> PathBuf {
    env.sqlite(
        "app/files.db",
        &format!(
            "CREATE TABLE blob(key TEXT PRIMARY KEY, data BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
             INSERT INTO blob SELECT i || '/0', {data_sql} FROM n;"
        ),
    )
}

/// Writes the configuration: a database `chat` at `db` with `files` attached, backed up into
/// `dir`; `backup_extra`: more lines of its `[database.backup]`.
pub fn write_chat_backup_config(
    env: &TestEnv,
    db: &Path,
    files: &Path,
    dir: &Path,
    backup_extra: &str,
) {
    env.write_config(&format!(
        "{}[[database]]\nname = \"chat\"\npath = \"{}\"\nattach = {{ files = \"{}\" }}\n[database.backup]\ndir = \"{}\"\n{backup_extra}\n",
        env.daemon_section(""),
        db.display(),
        files.display(),
        dir.display()
    ));
}
