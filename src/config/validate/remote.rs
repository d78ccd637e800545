//! `[[remote]]` stanzas (where off-site copies go) and the `remotes` each
//! `[database.backup]` names. Every problem names its key; no value that could be a secret is
//! ever echoed (credentials are only named by where they live, and a URL with user info is
//! refused without repeating it).

use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::{has_control_chars, is_db_name, Checker, NAME_RULE};
use crate::config::raw::{RawConfig, RawRemote};
use crate::config::remote::{Credentials, Remote, Target, DEFAULT_RETRY_EVERY, DEFAULT_TIMEOUT};
use crate::config::KeyPath;

/// In a remote's `url`: this host's name (`[daemon] host`), so hosts sharing a bucket each
/// get their own prefix.
const HOST: &str = "{host}";

const URL_HINT: &str =
    "expected s3://BUCKET/PREFIX or file:///DIR (gs:// and az:// are not supported)";

/// Every `[[remote]]`, validated; names are unique. `host` is this host's name (`[daemon]
/// host`): `{host}` in a url becomes it, and each remote carries it (the owner it records).
pub(super) fn remotes(c: &mut Checker, raw: &[RawRemote], host: &str) -> Vec<Arc<Remote>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let key = KeyPath::root().key("remote").index(i);
        if !is_db_name(&r.name) {
            c.fail(&key.key("name"), NAME_RULE, Some(r.name.clone()));
        } else if !seen.insert(r.name.clone()) {
            c.fail(
                &key.key("name"),
                "duplicate remote name",
                Some(r.name.clone()),
            );
        }
        out.push(Arc::new(remote(c, &key, r, host)));
    }
    out
}

fn remote(c: &mut Checker, key: &KeyPath, r: &RawRemote, host: &str) -> Remote {
    // `{host}` first, so the url checks judge the url as used (`[daemon] host` is checked
    // like a database name, a machine's host name has no '/').
    let url = r.url.replace(HOST, host);
    let target = target(c, &key.key("url"), &url);
    // The fallback of a refused url is `Dir("/")`: then only the url is reported.
    let is_dir = matches!(&target, Target::Dir { dir } if dir != std::path::Path::new("/"));
    for (name, given) in [
        ("endpoint", r.endpoint.is_some()),
        ("region", r.region.is_some()),
        ("path_style", r.path_style.is_some()),
        ("credentials", r.credentials.is_some()),
        ("allow_http", r.allow_http.is_some()),
    ] {
        if given && is_dir {
            c.fail(&key.key(name), "applies only to an s3:// remote", None);
        }
    }
    let allow_http = r.allow_http.unwrap_or(false);
    let endpoint = r
        .endpoint
        .as_deref()
        .map(|e| endpoint(c, &key.key("endpoint"), e, allow_http));
    let loopback_http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    Remote {
        name: r.name.clone(),
        url,
        host: host.to_string(),
        path_style: r.path_style.unwrap_or(endpoint.is_some()),
        region: r.region.clone(),
        endpoint,
        allow_http: allow_http || loopback_http,
        credentials: credentials(c, &key.key("credentials"), r.credentials.as_deref()),
        recipients: recipients(c, key, r),
        retry_every: c.duration(
            &key.key("retry_every"),
            r.retry_every.as_ref(),
            DEFAULT_RETRY_EVERY,
        ),
        max_age: c.opt_duration(&key.key("max_age"), r.max_age.as_ref()),
        timeout: c.duration(&key.key("timeout"), r.timeout.as_ref(), DEFAULT_TIMEOUT),
        rate_limit: rate_limit(c, &key.key("rate_limit"), r.rate_limit.as_deref()),
        target,
    }
}

/// `rate_limit = "20MB/s"`: bytes per second (units as every size; the `/s` is optional).
fn rate_limit(c: &mut Checker, key: &KeyPath, text: Option<&str>) -> Option<u64> {
    let text = text?;
    let size = text.trim().strip_suffix("/s").unwrap_or(text);
    match super::parse_size(size) {
        Ok(n) if n >= 1024 => Some(n),
        _ => {
            c.fail(
                key,
                "expected bytes per second of at least 1KiB, like \"20MB/s\" or \"512KiB/s\"",
                Some(text.to_string()),
            );
            None
        }
    }
}

fn target(c: &mut Checker, key: &KeyPath, text: &str) -> Target {
    let fallback = Target::Dir {
        dir: PathBuf::from("/"),
    };
    if has_control_chars(text) {
        c.fail(key, crate::config::CONTROL_CHARS, None);
        return fallback;
    }
    let Ok(url) = url::Url::parse(text) else {
        c.fail(key, URL_HINT, Some(text.to_string()));
        return fallback;
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: it may hold a key.
        c.fail(
            key,
            "credentials never go in the url; use `credentials` (\"env\", a file or a systemd credential)",
            None,
        );
        return fallback;
    }
    if url.query().is_some() || url.fragment().is_some() {
        c.fail(
            key,
            "a remote url has no query or fragment",
            Some(text.to_string()),
        );
        return fallback;
    }
    match url.scheme() {
        "s3" => {
            let bucket = url.host_str().unwrap_or_default().to_string();
            if !is_bucket(&bucket) {
                c.fail(
                    key,
                    "expected s3://BUCKET/PREFIX with a bucket name of 3-63 characters a-z, 0-9, '.', '-'",
                    Some(text.to_string()),
                );
            }
            let prefix = url.path().trim_matches('/').to_string();
            if prefix.split('/').any(|s| s == "." || s == "..") {
                c.fail(
                    key,
                    "the prefix has no '.' or '..' parts",
                    Some(text.to_string()),
                );
            }
            Target::S3 { bucket, prefix }
        }
        "file" => {
            if url.host_str().is_some_and(|h| !h.is_empty()) {
                c.fail(
                    key,
                    "expected file:///DIR (three slashes: an absolute path on this host)",
                    Some(text.to_string()),
                );
                return fallback;
            }
            match url.to_file_path() {
                Ok(dir) if dir.is_absolute() && dir != std::path::Path::new("/") => {
                    Target::Dir { dir }
                }
                _ => {
                    c.fail(key, URL_HINT, Some(text.to_string()));
                    fallback
                }
            }
        }
        _ => {
            c.fail(key, URL_HINT, Some(text.to_string()));
            fallback
        }
    }
}

/// S3's bucket naming rule (the subset every S3-compatible store accepts).
fn is_bucket(s: &str) -> bool {
    (3..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !s.starts_with(['.', '-'])
        && !s.ends_with(['.', '-'])
}

fn endpoint(c: &mut Checker, key: &KeyPath, text: &str, allow_http: bool) -> String {
    let Ok(url) = url::Url::parse(text) else {
        c.fail(
            key,
            "expected an endpoint like \"https://s3.eu-central-1.amazonaws.com\"",
            Some(text.to_string()),
        );
        return text.to_string();
    };
    if !url.username().is_empty() || url.password().is_some() {
        c.fail(
            key,
            "credentials never go in the endpoint; use `credentials`",
            None,
        );
        return String::new();
    }
    if url.query().is_some() || url.fragment().is_some() {
        // Not echoed: a query may carry a token or a signature.
        c.fail(
            key,
            "an endpoint has no query or fragment (a token or signature there would be logged); give the store's base URL and `credentials`",
            None,
        );
        return String::new();
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = matches!(
                url.host(),
                Some(url::Host::Domain("localhost"))
                    | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
                    | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
            );
            if !loopback && !allow_http {
                c.fail(
                    key,
                    "plain http sends every copy's requests unprotected; use https, or set allow_http = true for a trusted network",
                    Some(text.to_string()),
                );
            }
        }
        _ => c.fail(
            key,
            "expected an http:// or https:// endpoint",
            Some(text.to_string()),
        ),
    }
    text.trim_end_matches('/').to_string()
}

fn credentials(c: &mut Checker, key: &KeyPath, text: Option<&str>) -> Credentials {
    match text {
        None | Some("env") => Credentials::Env,
        Some(t) if t.starts_with('/') => {
            if has_control_chars(t) {
                c.fail(key, crate::config::CONTROL_CHARS, None);
            }
            Credentials::File(PathBuf::from(t))
        }
        Some(t)
            if !t.is_empty()
                && t.len() <= 255
                && t != "."
                && t != ".."
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-@".contains(&b)) =>
        {
            Credentials::Systemd(t.to_string())
        }
        Some(_) => {
            // Not echoed: someone may have pasted the secret itself here.
            c.fail(
                key,
                "expected \"env\", an absolute path of a KEY=VALUE file, or a systemd credential name (LoadCredential=)",
                None,
            );
            Credentials::Env
        }
    }
}

fn recipients(c: &mut Checker, key: &KeyPath, r: &RawRemote) -> Vec<String> {
    let problems_before = c.problems.len();
    let mut out = Vec::new();
    for (j, text) in r.encrypt_to.iter().flatten().enumerate() {
        let k = key.key("encrypt_to").index(j);
        if age::x25519::Recipient::from_str(text.trim()).is_ok() {
            out.push(text.trim().to_string());
        } else {
            c.fail(
                &k,
                "expected an age X25519 recipient (age1…, from `age-keygen -y KEYFILE`)",
                Some(text.clone()),
            );
        }
    }
    if let Some(file) = &r.encrypt_to_file {
        let k = key.key("encrypt_to_file");
        let path = c.abs_path(&k, file);
        match std::fs::read_to_string(&path) {
            Err(e) => c.fail(
                &k,
                format!("cannot read the recipients file: {e}"),
                Some(file.clone()),
            ),
            Ok(text) => {
                // A byte-order mark (an editor's UTF-8 "with BOM") is not part of line 1.
                for (n, line) in text.trim_start_matches('\u{feff}').lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    if line.starts_with("AGE-SECRET-KEY-") {
                        c.fail(
                            &k,
                            format!("line {} is a secret identity, not a recipient: this file must hold public keys only (age-keygen -y)", n + 1),
                            Some(file.clone()),
                        );
                    } else if age::x25519::Recipient::from_str(line).is_ok() {
                        out.push(line.to_string());
                    } else {
                        c.fail(
                            &k,
                            format!("line {} is not an age X25519 recipient (age1…)", n + 1),
                            Some(file.clone()),
                        );
                    }
                }
            }
        }
    }
    if out.is_empty() && r.encrypt_to.is_none() && r.encrypt_to_file.is_none() {
        c.fail(
            &key.key("encrypt_to"),
            "off-site copies are always encrypted: give encrypt_to = [\"age1…\"] or encrypt_to_file",
            None,
        );
    } else if out.is_empty() && problems_before == c.problems.len() {
        // `encrypt_to = []`, or a recipients file of comments and blank lines only: every
        // upload would fail with age's "missing recipients".
        let k = if r.encrypt_to_file.is_some() {
            key.key("encrypt_to_file")
        } else {
            key.key("encrypt_to")
        };
        c.fail(
            &k,
            "holds no age recipient: copies could be encrypted to no one; give at least one age1… (age-keygen -y KEYFILE)",
            r.encrypt_to_file.clone(),
        );
    }
    out
}

/// Each `[database.backup] remotes` entry names a `[[remote]]`, once.
pub(super) fn database_remotes(c: &mut Checker, raw: &RawConfig, remotes: &[Arc<Remote>]) {
    let known: Vec<&str> = remotes.iter().map(|r| r.name.as_str()).collect();
    for (i, rd) in raw.database.iter().enumerate() {
        let Some(names) = rd.backup.as_ref().and_then(|b| b.remotes.as_ref()) else {
            continue;
        };
        let mut seen = HashSet::new();
        for (j, name) in names.iter().enumerate() {
            let key = KeyPath::root()
                .key("database")
                .index(i)
                .key("backup")
                .key("remotes")
                .index(j);
            if !known.contains(&name.as_str()) {
                let known = if known.is_empty() {
                    "there is no [[remote]] stanza".to_string()
                } else {
                    format!("known: {}", known.join(", "))
                };
                c.fail(
                    &key,
                    format!("no [[remote]] of this name ({known})"),
                    Some(name.clone()),
                );
            } else if !seen.insert(name) {
                c.fail(&key, "named twice", Some(name.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert!(is_bucket("acme-backups"));
        assert!(is_bucket("a.b.c"));
        assert!(!is_bucket("ab"));
        assert!(!is_bucket("Acme"));
        assert!(!is_bucket("-acme"));
        assert!(!is_bucket("acme_backups"));
    }

    #[test]
    fn targets() {
        let mut c = Checker::default();
        let k = KeyPath::root().key("url");
        assert_eq!(
            target(&mut c, &k, "s3://acme-backups/litekeeper/prod/"),
            Target::S3 {
                bucket: "acme-backups".into(),
                prefix: "litekeeper/prod".into()
            }
        );
        assert_eq!(
            target(&mut c, &k, "file:///mnt/nas/lk"),
            Target::Dir {
                dir: PathBuf::from("/mnt/nas/lk")
            }
        );
        assert!(c.problems.is_empty());
        target(&mut c, &k, "s3://AKIA:secret@bucket/x");
        assert_eq!(c.problems.len(), 1);
        assert!(
            c.problems[0].got.is_none(),
            "a url with user info is never echoed"
        );
        target(&mut c, &k, "gs://bucket/x");
        target(&mut c, &k, "file://host/dir");
        assert_eq!(c.problems.len(), 3);
    }

    #[test]
    fn credential_sources() {
        let mut c = Checker::default();
        let k = KeyPath::root().key("credentials");
        assert_eq!(credentials(&mut c, &k, None), Credentials::Env);
        assert_eq!(
            credentials(&mut c, &k, Some("/etc/litekeeper/s3.env")),
            Credentials::File("/etc/litekeeper/s3.env".into())
        );
        assert_eq!(
            credentials(&mut c, &k, Some("s3-offsite")),
            Credentials::Systemd("s3-offsite".into())
        );
        assert!(c.problems.is_empty());
        credentials(&mut c, &k, Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCY"));
        assert_eq!(c.problems.len(), 1);
        assert!(c.problems[0].got.is_none());
    }
}
