//! Opening a remote: an `object_store` client for `s3://` (credentials from the environment,
//! a file or a systemd credential, read when the remote is opened and never printed) or a
//! local directory for `file://`, with its own runtime (one worker) so blocking callers can
//! drive it. Client errors become [`RemoteError`]: one line naming the remote, its URL and the
//! cause (DNS, connection refused, TLS, 403, missing bucket, timeout).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use super::cause::{classify, Kind};
use crate::config::{Credentials, Remote, Target};
use crate::domain::ExitCode;

/// Something went wrong with a remote: one line, never a secret.
#[derive(Debug, thiserror::Error)]
#[error("remote {remote:?} ({url}): {what}: {cause}")]
pub struct RemoteError {
    pub remote: String,
    pub url: String,
    /// What was being done ("uploading chat-20260101-000000.db").
    pub what: String,
    pub cause: String,
    pub code: ExitCode,
    /// The cause's class: what callers choose hints and actions by, never the text.
    pub(crate) kind: Kind,
}

impl RemoteError {
    /// The same error, of `kind`.
    pub(crate) fn of_kind(mut self, kind: Kind) -> RemoteError {
        self.kind = kind;
        self
    }
}

/// An opened remote.
pub(crate) struct Store {
    pub remote: Arc<Remote>,
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) rt: tokio::runtime::Runtime,
    /// Values never to print (the secret key, the session token).
    secrets: Vec<String>,
}

impl Store {
    pub(crate) fn open(remote: Arc<Remote>) -> Result<Store, RemoteError> {
        Self::open_with(remote, false)
    }

    /// A store for uploads: its runtime's threads (the worker sending the parts, the resolver's
    /// blocking threads) run at the upload's lower priority (`priority`), so the app comes first.
    pub(crate) fn open_for_upload(remote: Arc<Remote>) -> Result<Store, RemoteError> {
        Self::open_with(remote, true)
    }

    fn open_with(remote: Arc<Remote>, background: bool) -> Result<Store, RemoteError> {
        // One worker: the parts of a multipart upload go on while the caller compresses and
        // encrypts the next one, whichever thread (or runtime) the caller is on.
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.worker_threads(1)
            .thread_name("litekeeper-remote")
            .enable_all();
        if background {
            rt.on_thread_start(super::priority::background);
        }
        let rt = rt.build().map_err(|e| {
            fail(
                &remote,
                "starting the client",
                e.to_string(),
                ExitCode::Failed,
                Kind::Other,
            )
        })?;
        let mut secrets = Vec::new();
        let inner: Arc<dyn ObjectStore> = match &remote.target {
            Target::Dir { dir } => {
                // Never created here: a missing directory may be an unmounted disk or NAS, and
                // copies written into its empty mount point would sit on the host they protect.
                if !dir.is_dir() {
                    return Err(fail(
                        &remote,
                        "opening the directory",
                        format!(
                            "{} does not exist or is not a directory (is the disk or NAS mounted?)",
                            dir.display()
                        ),
                        ExitCode::NoInput,
                        Kind::NoDirectory,
                    ));
                }
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
                    fail(
                        &remote,
                        "opening the directory",
                        e.to_string(),
                        ExitCode::CantCreate,
                        Kind::NoDirectory,
                    )
                })?;
                Arc::new(fs)
            }
            Target::S3 { bucket, .. } => {
                let keys = read_credentials(&remote)?;
                secrets.push(keys.secret.clone());
                secrets.extend(keys.token.clone());
                let mut b = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(remote.region.as_deref().unwrap_or("us-east-1"))
                    .with_access_key_id(keys.id)
                    .with_secret_access_key(keys.secret)
                    .with_virtual_hosted_style_request(!remote.path_style)
                    .with_allow_http(remote.allow_http)
                    .with_client_options(
                        ClientOptions::new()
                            .with_allow_http(remote.allow_http)
                            .with_timeout(remote.timeout)
                            .with_connect_timeout(remote.timeout.min(Duration::from_secs(10))),
                    )
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(200),
                            max_backoff: Duration::from_secs(5),
                            base: 2.0,
                        },
                        max_retries: 3,
                        retry_timeout: remote.timeout,
                    });
                if let Some(t) = keys.token {
                    b = b.with_token(t);
                }
                if let Some(e) = &remote.endpoint {
                    b = b.with_endpoint(e);
                }
                let s3 = b.build().map_err(|e| {
                    fail(
                        &remote,
                        "configuring the client",
                        e.to_string(),
                        ExitCode::Config,
                        Kind::Other,
                    )
                })?;
                Arc::new(s3)
            }
        };
        Ok(Store {
            remote,
            inner,
            rt,
            secrets,
        })
    }

    /// `{prefix}/{database}/{name}`.
    pub(crate) fn key(&self, database: &str, name: &str) -> String {
        let prefix = self.remote.target.prefix();
        if prefix.is_empty() {
            format!("{database}/{name}")
        } else {
            format!("{prefix}/{database}/{name}")
        }
    }

    pub(super) fn path(key: &str) -> ObjectPath {
        ObjectPath::from(key)
    }

    /// A client error as one line: the cause classified, secrets removed.
    pub(crate) fn error(&self, what: impl Into<String>, e: &object_store::Error) -> RemoteError {
        let (cause, code, kind) = classify(&self.remote, e);
        let mut cause = cause;
        for s in &self.secrets {
            if !s.is_empty() {
                cause = cause.replace(s.as_str(), "[secret]");
            }
        }
        fail(&self.remote, what, cause, code, kind)
    }

    pub(crate) fn other(
        &self,
        what: impl Into<String>,
        cause: impl Into<String>,
        code: ExitCode,
    ) -> RemoteError {
        fail(&self.remote, what, cause.into(), code, Kind::Other)
    }

    /// Run a client future to its end on this store's runtime.
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Delete an object.
    pub(crate) fn delete(&self, key: &str) -> Result<(), RemoteError> {
        self.block_on(self.inner.delete(&Self::path(key)))
            .map_err(|e| self.error(format!("deleting {key}"), &e))
    }

    /// The names (keys) below `{prefix}/{database}/`.
    pub(crate) fn list(&self, database: &str) -> Result<Vec<(String, u64)>, RemoteError> {
        use futures::TryStreamExt;
        let prefix = Self::path(&self.key(database, ""));
        let found: Vec<object_store::ObjectMeta> = self
            .block_on(self.inner.list(Some(&prefix)).try_collect())
            .map_err(|e| self.error("listing", &e))?;
        Ok(found
            .into_iter()
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    /// Put a small object whole (one PUT: readers see the old or the new object).
    pub(crate) fn put_small(&self, key: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        self.block_on(self.inner.put(&Self::path(key), bytes.into()))
            .map(|_| ())
            .map_err(|e| self.error(format!("writing {key}"), &e))
    }

    /// Put a small object only if none exists at `key` (a create-only PUT: `If-None-Match: *`
    /// on S3, a hard link on a directory); false when one existed. A store that cannot do
    /// conditional puts gets a plain PUT.
    pub(crate) fn put_new(&self, key: &str, bytes: Vec<u8>) -> Result<bool, RemoteError> {
        let opts = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        let r = self.block_on(
            self.inner
                .put_opts(&Self::path(key), bytes.clone().into(), opts),
        );
        match r {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(object_store::Error::NotImplemented) => self.put_small(key, bytes).map(|()| true),
            Err(e) => Err(self.error(format!("writing {key}"), &e)),
        }
    }

    /// A small object whole; `None` when it does not exist.
    pub(crate) fn get_small(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        let r = self.block_on(async {
            let g = self.inner.get(&Self::path(key)).await?;
            g.bytes().await
        });
        match r {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(format!("reading {key}"), &e)),
        }
    }
}

fn fail(
    remote: &Remote,
    what: impl Into<String>,
    cause: String,
    code: ExitCode,
    kind: Kind,
) -> RemoteError {
    RemoteError {
        remote: remote.name.clone(),
        url: remote.url.clone(),
        what: what.into(),
        cause,
        code,
        kind,
    }
}

struct Keys {
    id: String,
    secret: String,
    token: Option<String>,
}

const ID: &str = "AWS_ACCESS_KEY_ID";
const SECRET: &str = "AWS_SECRET_ACCESS_KEY";
const TOKEN: &str = "AWS_SESSION_TOKEN";

fn read_credentials(remote: &Remote) -> Result<Keys, RemoteError> {
    let missing = |from: String| {
        fail(
            remote,
            "reading credentials",
            format!("{from} must set {ID} and {SECRET}"),
            ExitCode::Config,
            Kind::NoCredentials,
        )
    };
    match &remote.credentials {
        Credentials::Env => {
            let id = std::env::var(ID).ok().filter(|v| !v.is_empty());
            let secret = std::env::var(SECRET).ok().filter(|v| !v.is_empty());
            match (id, secret) {
                (Some(id), Some(secret)) => Ok(Keys {
                    id,
                    secret,
                    token: std::env::var(TOKEN).ok().filter(|v| !v.is_empty()),
                }),
                _ => Err(missing("credentials = \"env\": the environment".into())),
            }
        }
        Credentials::File(path) => from_file(remote, path, missing),
        Credentials::Systemd(name) => {
            let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
                return Err(fail(
                    remote,
                    "reading credentials",
                    format!("credentials = {name:?} is a systemd credential, but $CREDENTIALS_DIRECTORY is not set (add LoadCredential={name}:FILE to the unit; `litekeeper systemd-units` writes it)"),
                    ExitCode::Config,
                    Kind::NoCredentials,
                ));
            };
            from_file(remote, &Path::new(&dir).join(name), missing)
        }
    }
}

fn from_file(
    remote: &Remote,
    path: &Path,
    missing: impl Fn(String) -> RemoteError,
) -> Result<Keys, RemoteError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            remote,
            "reading credentials",
            format!("{}: {e}", path.display()),
            ExitCode::Config,
            Kind::NoCredentials,
        )
    })?;
    let (mut id, mut secret, mut token) = (None, None, None);
    // A byte-order mark (an editor's UTF-8 "with BOM") is not part of the first key.
    for line in text.trim_start_matches('\u{feff}').lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
        match k.trim() {
            ID => id = Some(v),
            SECRET => secret = Some(v),
            TOKEN => token = Some(v),
            _ => {}
        }
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Ok(Keys { id, secret, token })
        }
        _ => Err(missing(format!("{} (KEY=VALUE lines)", path.display()))),
    }
}
