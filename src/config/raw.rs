//! The configuration file as serde sees it: every key, with defaults left as `None` and unknown
//! keys rejected. Nothing outside `config/` uses these types; `validate` turns them into the
//! domain types of `model`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub daemon: RawDaemon,
    #[serde(default)]
    pub database: Vec<RawDatabase>,
    #[serde(default)]
    pub remote: Vec<RawRemote>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [daemon] table")]
pub struct RawDaemon {
    pub timezone: Option<String>,
    pub max_concurrent_jobs: Option<i64>,
    pub state_dir: Option<String>,
    pub lock_dir: Option<String>,
    pub slow_statement: Option<String>,
    pub busy_timeout: Option<String>,
    pub catch_up: Option<bool>,
    pub keep_history: Option<String>,
    pub metrics_file: Option<String>,
    pub host: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[database]] table with name and path"
)]
pub struct RawDatabase {
    pub name: String,
    pub path: String,
    #[serde(default)]
    pub attach: BTreeMap<String, String>,
    pub on_busy: Option<String>,
    pub wait_timeout: Option<String>,
    pub journal_mode: Option<String>,
    pub keep_history: Option<String>,
    pub prune: Option<RawPrune>,
    pub vacuum: Option<RawVacuum>,
    pub backup: Option<RawBackup>,
    pub drill: Option<RawDrill>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [database.prune] table")]
pub struct RawPrune {
    pub schedule: Option<String>,
    pub jitter: Option<String>,
    pub ping: Option<String>,
    pub ping_timeout: Option<String>,
    pub max_lock: Option<String>,
    pub pause: Option<String>,
    pub max_fraction: Option<f64>,
    pub max_rows: Option<i64>,
    pub dry_run: Option<bool>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
    #[serde(default)]
    pub files: Vec<RawFiles>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[database.prune.rule]] table")]
pub struct RawRule {
    pub table: String,
    pub older_than: Option<String>,
    pub column: Option<String>,
    pub time_format: Option<String>,
    #[serde(rename = "where")]
    pub filter: Option<String>,
    pub key: Option<String>,
    pub parent: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a [[database.prune.files]] table")]
pub struct RawFiles {
    pub dir: String,
    pub pattern: Option<String>,
    pub entries: Option<String>,
    pub referenced_by: String,
    pub min_age: Option<String>,
    pub action: Option<String>,
    pub quarantine_days: Option<i64>,
    pub allow_empty_reference: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [database.vacuum] table")]
pub struct RawVacuum {
    pub schedule: Option<String>,
    pub jitter: Option<String>,
    pub ping: Option<String>,
    pub ping_timeout: Option<String>,
    pub mode: Option<String>,
    pub min_free: Option<String>,
    pub convert_auto_vacuum: Option<bool>,
    pub temp_dir: Option<String>,
    pub max_duration: Option<String>,
    pub analyze: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [database.backup] table")]
pub struct RawBackup {
    pub schedule: Option<String>,
    pub jitter: Option<String>,
    pub ping: Option<String>,
    pub ping_timeout: Option<String>,
    pub dir: Option<String>,
    pub method: Option<String>,
    pub compress: Option<String>,
    pub compress_level: Option<i64>,
    pub verify: Option<String>,
    pub keep: Option<RawKeep>,
    pub max_age: Option<String>,
    pub remotes: Option<Vec<String>>,
    pub remote_keep: Option<RawKeep>,
    pub incremental: Option<RawIncremental>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { every = \"*/10 * * * *\", keep = \"7d\" }"
)]
pub struct RawIncremental {
    pub every: Option<String>,
    pub keep: Option<String>,
    pub jitter: Option<String>,
    pub ping: Option<String>,
    pub ping_timeout: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "the [database.drill] table")]
pub struct RawDrill {
    pub schedule: Option<String>,
    pub jitter: Option<String>,
    pub ping: Option<String>,
    pub ping_timeout: Option<String>,
    pub from: Option<Vec<String>>,
    pub pick: Option<String>,
    pub identity: Option<String>,
    #[serde(rename = "assert")]
    pub asserts: Option<Vec<String>>,
    pub max_age: Option<String>,
    pub scratch_dir: Option<String>,
}

/// A `[[remote]]` stanza: where off-site copies go.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a [[remote]] table with name, url and encrypt_to"
)]
pub struct RawRemote {
    pub name: String,
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub allow_http: Option<bool>,
    pub credentials: Option<String>,
    pub encrypt_to: Option<Vec<String>>,
    pub encrypt_to_file: Option<String>,
    pub retry_every: Option<String>,
    pub max_age: Option<String>,
    pub timeout: Option<String>,
    pub rate_limit: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of counts like { last = 3, daily = 7 }"
)]
pub struct RawKeep {
    pub last: Option<i64>,
    pub hourly: Option<i64>,
    pub daily: Option<i64>,
    pub weekly: Option<i64>,
    pub monthly: Option<i64>,
    pub yearly: Option<i64>,
}
