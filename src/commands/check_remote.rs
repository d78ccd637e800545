//! `check`'s look at each `[[remote]]` the checked databases copy to: a credentials file
//! or a drill's age identity others can read (a warning), then a probe of the store itself
//! — credentials read, endpoint reached, bucket present and writable: a small probe object encrypted to the
//! remote's recipients is put under `{prefix}/.litekeeper-check/`, read back and compared,
//! listed, and deleted. With `--identity FILE` the probe is also decrypted with it, which
//! proves that copies made now can be restored with that key. One line per remote, naming
//! the step that failed and why; secrets are never printed. Then, for each checked database
//! on it, the owner of its remote manifest when that is another host (a warning: this
//! host's pushes there are refused).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, Credentials, Identity, Remote};
use crate::remote::{Kind, RemoteError, RemoteManifest, Store};

/// Longest wait for one request of the probe (a remote's own `timeout` when shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The remotes the checked databases use (all of them when none is named), in config order.
fn used<'a>(config: &'a Config, selected: Option<&HashSet<String>>) -> Vec<&'a Arc<Remote>> {
    config
        .remotes
        .iter()
        .filter(|r| {
            config.databases.iter().any(|db| {
                selected.is_none_or(|s| s.contains(&db.name))
                    && db
                        .backup
                        .as_ref()
                        .is_some_and(|b| b.remotes.contains(&r.name))
            }) || selected.is_none()
        })
        .collect()
}

/// Check every remote used; prints one line each (and warnings). Returns (errors, warnings).
pub(super) fn check(
    config: &Config,
    selected: Option<&HashSet<String>>,
    identity: Option<&Path>,
) -> (usize, usize) {
    let (mut errors, mut warnings) = (0, 0);
    let identities = match identity.map(read_identity).transpose() {
        Ok(i) => i,
        Err(e) => {
            println!("error: {e}");
            return (1, 0);
        }
    };
    for db in &config.databases {
        if selected.is_some_and(|s| !s.contains(&db.name)) {
            continue;
        }
        let Some(Identity::File(p)) = db.drill.as_ref().and_then(|d| d.identity.as_ref()) else {
            continue;
        };
        if let Some(mode) = std::fs::metadata(p).ok().as_ref().and_then(loose_mode) {
            warnings += 1;
            println!(
                "{}: warning: drill.identity {} holds an age secret key and is readable by group or others (mode {mode:o}); chmod 600 it",
                db.name,
                p.display()
            );
        }
    }
    for r in used(config, selected) {
        if let Some(w) = credentials_warning(r) {
            warnings += 1;
            println!("remote {}: warning: {w}", r.name);
        }
        match probe(r, identities.as_deref()) {
            Ok(ok) => {
                println!("remote {}: ok: {ok}", r.name);
                for w in owners(config, selected, r) {
                    warnings += 1;
                    println!("remote {}: warning: {w}", r.name);
                }
            }
            Err((step, e)) => {
                errors += 1;
                println!("remote {}: error: {e}", r.name);
                println!("remote {}:   fix: {}", r.name, fix(step, &e));
            }
        }
    }
    (errors, warnings)
}

/// A line for each checked database on `remote` whose remote manifest another host owns
/// (or that cannot be read: that is said too, as a warning; the probe passed).
fn owners(
    config: &Config,
    selected: Option<&HashSet<String>>,
    remote: &Arc<Remote>,
) -> Vec<String> {
    let store = match Store::open(remote.clone()) {
        Ok(s) => s,
        Err(e) => return vec![e.to_string()],
    };
    let mut out = Vec::new();
    for db in &config.databases {
        let uses = db
            .backup
            .as_ref()
            .is_some_and(|b| b.remotes.contains(&remote.name));
        if !uses || selected.is_some_and(|s| !s.contains(&db.name)) {
            continue;
        }
        match RemoteManifest::load(&store, &db.name) {
            Err(e) => out.push(format!("database {}: {e}", db.name)),
            Ok(m) => match m.host.as_deref() {
                Some(owner) if owner != remote.host => out.push(format!(
                    "database {}: the copies under {} belong to host {owner:?}, not this host {:?}: this host's pushes there are refused; give each host its own prefix with {{host}} in the url, or, if this host replaces {owner:?}, `litekeeper backups push {} {} --adopt`",
                    db.name,
                    store.key(&db.name, ""),
                    remote.host,
                    db.name,
                    remote.name
                )),
                _ => {}
            },
        }
    }
    out
}

/// The permission bits of a file when group or others may read or write it.
fn loose_mode(meta: &std::fs::Metadata) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// A credentials file others can read gives away the store's keys.
fn credentials_warning(r: &Remote) -> Option<String> {
    let Credentials::File(p) = &r.credentials else {
        return None;
    };
    match std::fs::metadata(p) {
        Ok(m) => loose_mode(&m).map(|mode| {
            format!(
                "{} holds secrets and is readable by group or others (mode {mode:o}); chmod 600 it",
                p.display()
            )
        }),
        Err(e) => Some(format!("credentials file {}: {e}", p.display())),
    }
}

fn read_identity(path: &Path) -> Result<Vec<Box<dyn age::Identity>>, String> {
    age::IdentityFile::from_file(path.display().to_string())
        .map_err(|e| e.to_string())
        .and_then(|f| f.into_identities().map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "--identity {}: cannot read an age identity: {e}",
                path.display()
            )
        })
}

/// The step of the probe a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Open,
    Encrypt,
    Put,
    Get,
    List,
    Decrypt,
    Delete,
}

/// What to do about a failed probe: from the kind of failure (`RemoteError::kind`), and for a
/// refused permission from the step that needed it.
fn fix(step: Step, e: &RemoteError) -> &'static str {
    match e.kind {
        Kind::NoCredentials => "give the remote's `credentials` (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) where the service can read them",
        Kind::NoDirectory => "mount the disk or create the directory (owned by the user litekeeper runs as)",
        Kind::NoBucket => "create the bucket, or fix the bucket in `url`",
        Kind::Keys if step == Step::Decrypt => "encrypt_to must hold the public key of the identity you restore with (age-keygen -y IDENTITY)",
        Kind::Keys => "encrypt_to (or encrypt_to_file) must hold age X25519 recipients (age1…, from age-keygen -y IDENTITY)",
        Kind::Credentials => "check the access key and secret key the remote's `credentials` give (and the session token, if any)",
        Kind::Clock => "set this host's clock right (NTP: timedatectl set-ntp true)",
        Kind::Dns => "check the host name in `endpoint` and this host's resolver (resolvectl query HOST)",
        Kind::Refused => "start the store, or fix the port in `endpoint`; under systemd, the unit needs the network drop-in `litekeeper systemd-units` writes",
        Kind::Tls => "use the store's https port with a certificate this host trusts, or http:// with allow_http = true on a trusted network",
        Kind::Timeout | Kind::Lost => "check the network path to `endpoint` (firewall, proxy); a slow link needs a longer `timeout`",
        Kind::Unavailable => "the store failed: try again later, or ask its operator",
        Kind::Denied => match step {
            Step::Delete => "the key may write but not delete: remote retention needs s3:DeleteObject on the prefix",
            Step::List => "the key may write but not list: listing needs s3:ListBucket on the bucket",
            Step::Get => "the key may write but not read: the read-back check and restore need s3:GetObject on the prefix",
            _ => "the key may not write: uploads need s3:PutObject (and s3:AbortMultipartUpload) on the prefix",
        },
        Kind::NotFound | Kind::Damaged | Kind::Other => {
            "fix the cause above; `litekeeper backups push DB` then stores the pending copies"
        }
    }
}

/// Put, read back, list and delete a probe object; decrypt it with `identities` if given.
fn probe(
    remote: &Arc<Remote>,
    identities: Option<&[Box<dyn age::Identity>]>,
) -> Result<String, (Step, RemoteError)> {
    let at = |step: Step| move |e: RemoteError| (step, e);
    let started = Instant::now();
    let mut r = (**remote).clone();
    r.timeout = r.timeout.min(PROBE_TIMEOUT);
    let store = Store::open(Arc::new(r)).map_err(at(Step::Open))?;
    let secret = format!("litekeeper check probe {}", uuid::Uuid::new_v4());
    let sealed = encrypt(&store, secret.as_bytes()).map_err(at(Step::Encrypt))?;
    let name = format!(
        "probe-{}-{}.age",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    let dir = ".litekeeper-check";
    let key = store.key(dir, &name);
    store
        .put_small(&key, sealed.clone())
        .map_err(at(Step::Put))?;
    let result = (|| {
        let back = store.get_small(&key).map_err(at(Step::Get))?;
        if back.as_deref() != Some(sealed.as_slice()) {
            return Err((
                Step::Get,
                store
                    .other(
                        format!("reading {key} back"),
                        "the store returned other bytes than were written",
                        crate::domain::ExitCode::DataErr,
                    )
                    .of_kind(Kind::Damaged),
            ));
        }
        let listed = store.list(dir).map_err(at(Step::List))?;
        if !listed.iter().any(|(k, _)| k.ends_with(&name)) {
            return Err((
                Step::List,
                store.other(
                    "listing",
                    format!("{key} was written but is not listed"),
                    crate::domain::ExitCode::Failed,
                ),
            ));
        }
        if let Some(ids) = identities {
            let plain = decrypt(&store, &sealed, ids).map_err(at(Step::Decrypt))?;
            if plain != secret.as_bytes() {
                return Err((
                    Step::Decrypt,
                    store
                        .other(
                            "decrypting the probe",
                            "it decrypted to other bytes",
                            crate::domain::ExitCode::DataErr,
                        )
                        .of_kind(Kind::Damaged),
                ));
            }
        }
        Ok(())
    })();
    // Deleted whatever happened above; a failed read is reported before a failed delete.
    let deleted = store.delete(&key).map_err(at(Step::Delete));
    result?;
    deleted?;
    let n = remote.recipients.len();
    Ok(format!(
        "{}: credentials read, {} writable (put, get, list and delete of a probe object, {:.2} s), {n} recipient{}{}",
        remote.url,
        match &remote.target {
            crate::config::Target::S3 { bucket, .. } => format!("bucket {bucket:?}"),
            crate::config::Target::Dir { .. } => "directory".to_string(),
        },
        started.elapsed().as_secs_f64(),
        if n == 1 { "" } else { "s" },
        if identities.is_some() {
            ", the identity decrypts what they encrypt"
        } else {
            " (pass --identity FILE to check the key you restore with)"
        }
    ))
}

fn encrypt(store: &Store, plain: &[u8]) -> Result<Vec<u8>, RemoteError> {
    let bad = |e: String| {
        store
            .other(
                "encrypting the probe to encrypt_to",
                e,
                crate::domain::ExitCode::Config,
            )
            .of_kind(Kind::Keys)
    };
    let recipients: Vec<age::x25519::Recipient> = store
        .remote
        .recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r).map_err(|e| bad(e.to_string())))
        .collect::<Result<_, _>>()?;
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).map_err(|e| bad(e.to_string()))?;
    w.write_all(plain).map_err(|e| bad(e.to_string()))?;
    w.finish().map_err(|e| bad(e.to_string()))?;
    Ok(out)
}

fn decrypt(
    store: &Store,
    sealed: &[u8],
    identities: &[Box<dyn age::Identity>],
) -> Result<Vec<u8>, RemoteError> {
    let bad = |e: String| {
        store
            .other(
                "decrypting the probe with --identity",
                format!("{e}: no recipient in encrypt_to belongs to this identity"),
                crate::domain::ExitCode::Config,
            )
            .of_kind(Kind::Keys)
    };
    let dec = age::Decryptor::new(sealed).map_err(|e| bad(e.to_string()))?;
    let mut r = dec
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| bad(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ExitCode;
    use crate::remote::Kind;

    fn error(what: &str, cause: &str, kind: Kind) -> RemoteError {
        RemoteError {
            remote: "offsite".into(),
            url: "s3://b/lk".into(),
            what: what.into(),
            cause: cause.into(),
            code: ExitCode::TempFail,
            kind,
        }
    }

    #[test]
    fn fix_follows_the_kind_of_failure_not_the_step_text() {
        // The server went away between the put and the delete: no permission is missing.
        let e = error(
            "deleting lk/.litekeeper-check/probe-1.age",
            "connection refused by http://127.0.0.1:9 (is the server running, and the port right?)",
            Kind::Refused,
        );
        let hint = fix(Step::Delete, &e);
        assert!(!hint.contains("s3:DeleteObject"), "{hint}");
        assert!(hint.contains("start the store"), "{hint}");
        // A refused permission: the step says which.
        let denied = |step| {
            fix(
                step,
                &error("x", "access denied (403 AccessDenied)", Kind::Denied),
            )
        };
        assert!(denied(Step::Delete).contains("s3:DeleteObject"));
        assert!(denied(Step::List).contains("s3:ListBucket"));
        assert!(denied(Step::Put).contains("s3:PutObject"));
        assert!(denied(Step::Get).contains("s3:GetObject"));
    }
}
