//! Values written into units, one writer per kind (systemd.syntax(7), systemd.exec(5)).
//! Each quotes what it writes or refuses it naming the configuration key it came from, so no
//! value from the configuration or the environment becomes a directive, a specifier, a second
//! path or a shorter one.

/// Refuse text a unit file cannot carry: control characters (a newline would start a
/// directive of its own).
pub(super) fn writable(key: &str, text: &str) -> Result<(), String> {
    match text.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "{key}: {text:?} holds the control character {c:?}, which cannot be written into a \
             systemd unit; rename it"
        )),
        None => Ok(()),
    }
}

/// Inside double quotes: `\` and `"` backslash-escaped (read back the same with and without
/// C unescaping), `%` doubled (no specifier).
pub(super) fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn utf8<'a>(key: &str, path: &'a std::path::Path) -> Result<&'a str, String> {
    path.to_str().ok_or_else(|| {
        format!(
            "{key}: {} is not valid UTF-8, which a systemd unit cannot hold",
            path.display()
        )
    })
}

/// One entry of a space-separated path list (`ReadWritePaths=`), with its prefix (`-`: ignore
/// a missing path): `"-/srv/my app"`. The path must be absolute and normalized (systemd drops
/// a path with `.` or `..` components).
pub fn path_list_item(key: &str, prefix: &str, path: &std::path::Path) -> Result<String, String> {
    let text = utf8(key, path)?;
    writable(key, text)?;
    if !text.starts_with('/') {
        return Err(format!("{key}: {text:?} is not an absolute path"));
    }
    if text.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "{key}: {text:?} has a '.' or '..' component, which systemd refuses in a path \
             setting; write the path without it"
        ));
    }
    Ok(quoted(&format!("{prefix}{text}")))
}

/// One `Environment=` assignment, quoted whole: `"LITEKEEPER_CONFIG=/etc/my app.toml"`.
pub fn environment(key: &str, name: &str, value: &str) -> Result<String, String> {
    writable(key, value)?;
    Ok(quoted(&format!("{name}={value}")))
}

/// One `ExecStart=` argument, quoted. The units start commands with `:`, so `$` is never
/// expanded either.
pub fn exec_arg(key: &str, text: &str) -> Result<String, String> {
    writable(key, text)?;
    Ok(quoted(text))
}

/// An `OnCalendar=` value: only what the generator writes (numbers, names, `*-:.,/_+`), `%`
/// doubled.
pub(super) fn calendar_value(text: &str) -> Result<String, String> {
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " *-:.,/_+~".contains(*c)))
    {
        return Err(format!("cannot write {text:?} as OnCalendar= ({c:?})"));
    }
    Ok(text.replace('%', "%%"))
}

/// Text for a `#` comment: Debug-quoted, so it is one line and never ends in a backslash.
pub(super) fn comment(text: &str) -> String {
    format!("{text:?}")
}

/// A unit instance name, written as the name itself and read back with `%i` (verbatim), so
/// `litekeeper-backup@my-db.timer` runs `litekeeper run -- my-db backup`. Database and member
/// names are `[a-z0-9_][a-z0-9_-]*`, which systemd takes as they are; anything else (which the
/// configuration never lets through) is refused rather than escaped, because `%I` would turn
/// a `-` into a `/` and every name with a dash would need `\x2d` in `systemctl` commands.
pub fn instance_name(key: &str, name: &str) -> Result<String, String> {
    writable(key, name)?;
    if name.is_empty() {
        return Err(format!("{key}: an empty name cannot be a unit instance"));
    }
    if name.starts_with(['-', '.'])
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    {
        return Err(format!(
            "{key}: {name:?} cannot be a unit instance name (letters, digits, '_' and '-', \
             not starting with '-')"
        ));
    }
    // systemd's limit for a whole unit name (`litekeeper-vacuum@….timer`).
    if name.len() + "litekeeper-incremental@.service".len() > 255 {
        return Err(format!(
            "{key}: {name:?} is too long for a systemd unit name (255 bytes)"
        ));
    }
    Ok(name.to_string())
}

/// A shipped unit with its executable replaced by `exe` (`--with-units` outside the package).
pub fn with_executable(unit: &str, exe: &std::path::Path) -> Result<String, String> {
    let exe = exec_arg(
        "the litekeeper executable",
        utf8("the litekeeper executable", exe)?,
    )?;
    Ok(unit.replace("/usr/bin/litekeeper", &exe))
}
