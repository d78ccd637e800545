//! The validated `[[remote]]` stanzas: where off-site copies go (an S3-compatible bucket or a
//! directory), how the client finds its credentials, and whom copies are encrypted to.
//!
//! Nothing here holds a secret: credentials are named by where they live (`env`, a file, a
//! systemd credential) and read by `remote::store` when a copy is uploaded, so `Debug` of a
//! configuration never prints a key.

use std::path::PathBuf;
use std::time::Duration;

/// One `[[remote]]` stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub name: String,
    /// Where objects go.
    pub target: Target,
    /// The URL as written with `{host}` replaced (no secrets: the validation refuses user
    /// info in it).
    pub url: String,
    /// This host (`[daemon] host`): the owner recorded in the remote manifests it writes;
    /// another host's are not written (`remote::manifest`).
    pub host: String,
    /// The endpoint of an S3-compatible store (`https://…`), none for AWS itself.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`): on by default with a custom endpoint.
    pub path_style: bool,
    /// Plain `http://` endpoints: only for 127.0.0.1/localhost, or with `allow_http = true`.
    pub allow_http: bool,
    pub credentials: Credentials,
    /// age X25519 recipients (`age1…`), from `encrypt_to` and `encrypt_to_file`; never empty.
    pub recipients: Vec<String>,
    /// How often the daemon retries pending copies.
    pub retry_every: Duration,
    /// `status --check` is CRITICAL when the newest copy is older (default: the backup's).
    pub max_age: Option<Duration>,
    /// Time limit of one request (connect and transfer of one part).
    pub timeout: Duration,
    /// Most stored bytes per second an upload sends (`rate_limit`; None: as fast as it goes).
    pub rate_limit: Option<u64>,
}

/// Where a remote keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
    /// `file:///dir`: a directory (a mounted NAS, a second disk).
    Dir { dir: PathBuf },
}

impl Target {
    /// The key prefix inside the store ("" for a directory: the directory is the root).
    pub fn prefix(&self) -> &str {
        match self {
            Target::S3 { prefix, .. } => prefix,
            Target::Dir { .. } => "",
        }
    }
}

/// Where the access key and secret come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) of the process.
    Env,
    /// A file of `KEY=VALUE` lines with those names (readable by the service only).
    File(PathBuf),
    /// A systemd credential: the file `$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=`).
    Systemd(String),
}

/// The default of `retry_every`.
pub const DEFAULT_RETRY_EVERY: Duration = Duration::from_secs(15 * 60);
/// The default of `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
