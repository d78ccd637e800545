//! Why a request to a remote failed, in the operator's terms, and the exit code for it.
//!
//! Classified from the error's structure: the transport error's kind and its causes (which
//! carry no URL), or the status and S3 error code of the response. Never from the request's
//! URL, which holds the bucket's and the object's names: a bucket called "atlas" is no TLS
//! problem, and `retry_timeout` in the client's retry note is no timeout. The response body is
//! never shown (it can echo the request's signing details).

use object_store::client::{HttpError, HttpErrorKind};

use crate::config::{Credentials, Remote, Target};
use crate::domain::ExitCode;

/// What kind of failure a [`super::RemoteError`] is: the cause's class, for whoever chooses
/// what to tell the operator (`check`'s hints), never read back from the error's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The endpoint's host name does not resolve.
    Dns,
    /// Nothing listens at the endpoint.
    Refused,
    /// The TLS handshake failed (plain-http port, untrusted or wrong certificate).
    Tls,
    /// No answer within the remote's `timeout`.
    Timeout,
    /// The connection broke off.
    Lost,
    /// The store refused the keys (403: signature, unknown key, expired token).
    Credentials,
    /// The store refused the request's time (403 RequestTimeTooSkewed).
    Clock,
    /// The keys were accepted but may not do this (403).
    Denied,
    /// The bucket does not exist (404 NoSuchBucket).
    NoBucket,
    /// The object does not exist (404).
    NotFound,
    /// The store failed (5xx).
    Unavailable,
    /// No keys where `credentials` says (nothing asked of the store).
    NoCredentials,
    /// A `file://` remote's directory is missing or cannot be made.
    NoDirectory,
    /// Encryption or decryption with the remote's recipients or an identity failed.
    Keys,
    /// The stored bytes are not the ones sent or recorded.
    Damaged,
    /// Anything else (local I/O, another refusal).
    Other,
}

/// The error and every source, one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out.replace(['\n', '\r'], " ")
}

/// The errors of `e`'s chain, outermost first.
fn nodes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut src = Some(e);
    while let Some(s) = src {
        out.push(s);
        src = s.source();
    }
    out
}

/// A transport error (the server gave no answer): its kind when the chain shows it, and the
/// causes below the client's retry wrapper — the resolver's, the socket's, rustls's words,
/// which carry no URL. The wrapper ("Error performing GET URL … retry_timeout: …") and the
/// store's errors above it name the request's URL; they are left out.
fn transport(e: &object_store::Error) -> Option<(Option<HttpErrorKind>, String)> {
    let all = nodes(e);
    let kind = all
        .iter()
        .find_map(|n| n.downcast_ref::<HttpError>())
        .map(HttpError::kind);
    let texts: Vec<String> = all.iter().map(|n| n.to_string()).collect();
    let below = match texts.iter().rposition(|t| t.contains("Error performing ")) {
        Some(i) if texts[i].contains(" - HTTP error: ") => &texts[i + 1..],
        Some(_) => return None,
        None if kind.is_some() => {
            let i = all.iter().position(|n| n.is::<HttpError>()).unwrap_or(0);
            &texts[i + 1..]
        }
        None => return None,
    };
    let detail = below
        .iter()
        .map(|t| t.strip_prefix("HTTP error: ").unwrap_or(t))
        .filter(|t| *t != "error sending request")
        .collect::<Vec<_>>()
        .join(": ")
        .replace(['\n', '\r'], " ");
    Some((kind, detail))
}

/// The HTTP status and the S3 error code (`<Code>…</Code>`) of a refused request.
fn response(text: &str) -> Option<(u16, Option<String>)> {
    const MARK: &str = "Server returned non-2xx status code: ";
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let status = rest.get(..3)?.parse().ok()?;
    let code = rest
        .split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| c.trim().to_string())
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_alphanumeric()));
    Some((status, code))
}

pub(super) fn classify(remote: &Remote, e: &object_store::Error) -> (String, ExitCode, Kind) {
    let endpoint = remote.endpoint.as_deref().unwrap_or("the S3 endpoint");
    if let Some((kind, detail)) = transport(e) {
        return transport_cause(remote, endpoint, kind, &detail);
    }
    let text = chain(e);
    if let Some((status, code)) = response(&text) {
        return refused(remote, status, code.as_deref());
    }
    if matches!(e, object_store::Error::NotFound { .. }) {
        return (
            "not found (404)".to_string(),
            ExitCode::NoInput,
            Kind::NotFound,
        );
    }
    // Anything else: the client's words, without a response body.
    let short = text
        .split(" - Server returned")
        .next()
        .unwrap_or(&text)
        .chars()
        .take(300)
        .collect::<String>();
    (short, ExitCode::Failed, Kind::Other)
}

/// The request got no answer: DNS, refused, TLS, timeout, connection lost.
fn transport_cause(
    remote: &Remote,
    endpoint: &str,
    kind: Option<HttpErrorKind>,
    detail: &str,
) -> (String, ExitCode, Kind) {
    let lower = detail.to_ascii_lowercase();
    let last = detail.rsplit(": ").next().unwrap_or(detail).trim();
    let host = url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| endpoint.to_string());
    if lower.contains("dns error") {
        return (
            format!("the host name {host:?} of {endpoint} does not resolve ({last}): check the endpoint's spelling and this host's resolver"),
            ExitCode::TempFail,
            Kind::Dns,
        );
    }
    if lower.contains("connection refused") {
        return (
            format!(
                "connection refused by {endpoint} (is the server running, and the port right?)"
            ),
            ExitCode::TempFail,
            Kind::Refused,
        );
    }
    if lower.contains("corrupt message") || lower.contains("invalidcontenttype") {
        return (
            format!("TLS with {endpoint} failed: the server does not speak TLS there ({last}); is it a plain-http port? Use the store's https port, or http:// on a trusted network"),
            ExitCode::Failed,
            Kind::Tls,
        );
    }
    if [
        "certificate",
        "tls",
        "handshake",
        "alert",
        "peer is incompatible",
        "peer misbehaved",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return (
            format!("TLS with {endpoint} failed ({last}): certificate not trusted, expired or not for this host name"),
            ExitCode::Failed,
            Kind::Tls,
        );
    }
    if kind == Some(HttpErrorKind::Timeout) || lower.contains("timed out") {
        return (
            format!(
                "no answer from {endpoint} within {} (timeout; the remote's `timeout` sets it)",
                humantime::format_duration(remote.timeout)
            ),
            ExitCode::TempFail,
            Kind::Timeout,
        );
    }
    (
        format!("the connection to {endpoint} was lost ({last})"),
        ExitCode::TempFail,
        Kind::Lost,
    )
}

/// Where the remote's keys come from, for a hint (never the keys).
fn credentials_source(remote: &Remote) -> String {
    match &remote.credentials {
        Credentials::Env => {
            "the environment's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string()
        }
        Credentials::File(p) => format!("the credentials file {}", p.display()),
        Credentials::Systemd(n) => format!("the systemd credential {n:?}"),
    }
}

/// The server answered with an error status.
fn refused(remote: &Remote, status: u16, code: Option<&str>) -> (String, ExitCode, Kind) {
    let bucket = match &remote.target {
        Target::S3 { bucket, .. } => bucket.as_str(),
        Target::Dir { .. } => "",
    };
    let keys = credentials_source(remote);
    let what = match code {
        Some(c) => format!("{status} {c}"),
        None => status.to_string(),
    };
    let (text, kind) = match code.unwrap_or_default() {
        "SignatureDoesNotMatch" => (format!(
            "the credentials were refused ({what}: the secret key does not match the access key): check {keys}, and this host's clock"
        ), Kind::Credentials),
        "InvalidAccessKeyId" | "NotSignedUp" => (format!(
            "the credentials were refused ({what}: the store does not know the access key): check {keys}"
        ), Kind::Credentials),
        "RequestTimeTooSkewed" => (format!(
            "the credentials were refused ({what}): this host's clock is more than 15 minutes off; fix its time (NTP)"
        ), Kind::Clock),
        "ExpiredToken" | "InvalidToken" | "TokenRefreshRequired" => (format!(
            "the credentials were refused ({what}: the session token is expired or invalid): renew AWS_SESSION_TOKEN in {keys}"
        ), Kind::Credentials),
        "NoSuchBucket" => (
            format!("bucket {bucket:?} does not exist ({what}): create it, or fix the url"),
            Kind::NoBucket,
        ),
        _ if status == 403 => (format!(
            "access denied ({what}): the key was accepted but may not do this; check the bucket's policy and the key's permissions ({keys})"
        ), Kind::Denied),
        _ if status == 404 => {
            return (format!("not found ({what})"), ExitCode::NoInput, Kind::NotFound)
        }
        _ if status >= 500 => {
            return (
                format!("the store failed ({what}); try again later"),
                ExitCode::TempFail,
                Kind::Unavailable,
            )
        }
        _ => (format!("the store refused the request ({what})"), Kind::Other),
    };
    (text, ExitCode::Failed, kind)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn remote(bucket: &str) -> Remote {
        Remote {
            name: "offsite".into(),
            url: format!("s3://{bucket}/lk"),
            host: "web1".into(),
            target: Target::S3 {
                bucket: bucket.into(),
                prefix: "lk".into(),
            },
            endpoint: Some("https://s3.example.net".into()),
            region: None,
            path_style: true,
            allow_http: false,
            credentials: Credentials::Env,
            recipients: vec!["age1x".into()],
            retry_every: Duration::from_secs(900),
            max_age: None,
            timeout: Duration::from_secs(5),
            rate_limit: None,
        }
    }

    /// What the client's retry wrapper says around a transport error: the URL (with the
    /// bucket's name) and its retry note.
    #[derive(Debug)]
    struct Retried(HttpError, String);
    impl std::fmt::Display for Retried {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "Error performing GET {} in 1s, after 3 retries, max_retries: 3, retry_timeout: 5s  - {}",
                self.1, self.0
            )
        }
    }
    impl std::error::Error for Retried {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    fn transport_error(kind: HttpErrorKind, words: &str, url: &str) -> object_store::Error {
        let io = std::io::Error::other(words.to_string());
        object_store::Error::Generic {
            store: "S3",
            source: Box::new(Retried(HttpError::new(kind, io), url.into())),
        }
    }

    #[test]
    fn the_url_and_the_retry_note_never_decide_the_cause() {
        // A bucket whose name holds "tls", "timeout" and "certificate".
        let r = remote("lk-tls-timeout-certificates");
        let url = "https://s3.example.net/lk-tls-timeout-certificates/lk/chat/x.age";
        let (cause, code, _) = classify(
            &r,
            &transport_error(
                HttpErrorKind::Connect,
                "tcp connect error: Connection refused (os error 111)",
                url,
            ),
        );
        assert!(cause.starts_with("connection refused by"), "{cause}");
        assert_eq!(code, ExitCode::TempFail);
        let (cause, _, _) = classify(
            &r,
            &transport_error(HttpErrorKind::Request, "connection reset by peer", url),
        );
        assert!(cause.starts_with("the connection to"), "{cause}");
        let (cause, code, _) = classify(
            &r,
            &transport_error(HttpErrorKind::Timeout, "operation timed out", url),
        );
        assert!(cause.starts_with("no answer from"), "{cause}");
        assert_eq!(code, ExitCode::TempFail);
    }

    #[test]
    fn s3_error_codes_name_the_credentials_never_the_keys() {
        let r = remote("b");
        let status = |code: &str| {
            let text = format!(
                "Error performing POST https://s3.example.net/b/k?uploads= in 2ms - Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>{code}</Code></Error>"
            );
            object_store::Error::Generic {
                store: "S3",
                source: text.into(),
            }
        };
        let (cause, code, kind) = classify(&r, &status("SignatureDoesNotMatch"));
        assert_eq!(kind, Kind::Credentials);
        assert!(
            cause.starts_with("the credentials were refused (403 SignatureDoesNotMatch"),
            "{cause}"
        );
        assert!(cause.contains("AWS_SECRET_ACCESS_KEY"), "{cause}");
        assert_eq!(code, ExitCode::Failed);
        let (cause, _, _) = classify(&r, &status("InvalidAccessKeyId"));
        assert!(cause.contains("does not know the access key"), "{cause}");
        let (cause, _, kind) = classify(&r, &status("AccessDenied"));
        assert_eq!(kind, Kind::Denied);
        assert!(
            cause.starts_with("access denied (403 AccessDenied)"),
            "{cause}"
        );
        let (cause, _, kind) = classify(&r, &status("RequestTimeTooSkewed"));
        assert_eq!(kind, Kind::Clock);
        assert_eq!(classify(&r, &status("NoSuchBucket")).2, Kind::NoBucket);
        assert!(cause.contains("clock"), "{cause}");
    }
}
