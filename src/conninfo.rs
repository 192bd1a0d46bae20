//! Connection strings as users write them: lists of URLs, passwords kept out of every
//! message, libpq's TLS settings, and errors in the server's own words.

use std::path::PathBuf;

use anyhow::{anyhow, Result};

/// A connection string with every password replaced, for messages about strings that did
/// not parse: the URL's user-info, a `password=` query parameter, and the keyword form
/// (`password=x`, `password = 'a b'`).
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                let hidden = if userinfo.contains(':') { ":***" } else { "" };
                format!("{user}{hidden}@{hostport}")
            }
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if key.eq_ignore_ascii_case("password") => {
                            format!("{key}=***")
                        }
                        _ => pair.to_string(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_string(),
        };
        return format!("{scheme}://{authority}{tail}");
    }
    redact_keywords(url)
}

/// The keyword form `key = value` (value bare, or in single quotes with `\'` and `\\`
/// escapes), with the value of `password` replaced. Everything else is kept as written.
fn redact_keywords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let Some(at) = rest.find(|c: char| !c.is_whitespace()) else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        out.push_str(key);
        rest = &rest[key_end..];
        let spaces = rest.len() - rest.trim_start().len();
        if !rest.trim_start().starts_with('=') {
            continue;
        }
        let eq = spaces + 1;
        let after_eq = &rest[eq..];
        let value_at = after_eq.len() - after_eq.trim_start().len();
        out.push_str(&rest[..eq + value_at]);
        rest = &after_eq[value_at..];
        let value_len = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        if key.eq_ignore_ascii_case("password") {
            out.push_str("***");
        } else {
            out.push_str(&rest[..value_len]);
        }
        rest = &rest[value_len..];
    }
}

/// Whether a URL carries a password: in its user-info or as a `password=` query parameter.
pub fn has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let in_userinfo = authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    in_userinfo || setting(url, "password").is_some()
}

/// The value a connection string gives `key`, in the URL query or the keyword form.
fn setting(text: &str, key: &str) -> Option<String> {
    let text = text.trim();
    if let Some((_, rest)) = text.split_once("://") {
        let (_, query) = rest.split_once('?')?;
        return query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            k.eq_ignore_ascii_case(key).then(|| percent_decode(v))
        });
    }
    text.split_whitespace().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim_matches('\'').to_string())
    })
}

/// A URL query value with `%XX` escapes decoded (a path may be written `%2Fetc%2Fca.crt`).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a TLS session checks, by libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `require`: encrypted; the certificate is not checked.
    Encrypt,
    /// `verify-ca` (and `require` with an `sslrootcert`, as in libpq): signed by the CA.
    Chain,
    /// `verify-full`: signed by the CA and issued for the host name.
    ChainAndName,
}

/// TLS as a connection asks for it. `None` where a connection is plaintext: `disable`,
/// `allow` and `prefer` (libpq's `prefer` tries TLS first; these hooks decide to stay
/// plaintext there, as before TLS was built in, so a server that offers TLS but cannot
/// complete a rustls handshake keeps working; ask for TLS with `require` or stricter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tls {
    pub check: Check,
    /// The CA file (`sslrootcert`); the only trust roots there are.
    pub rootcert: Option<PathBuf>,
}

/// One setting and where it came from (`sslmode` in the URL, or `PGSSLMODE`), for messages.
#[derive(Clone, Copy, Debug)]
pub struct Setting<'a> {
    pub value: &'a str,
    pub from: &'a str,
}

/// libpq's rules for `sslmode`, `sslrootcert` and `channel_binding`, pure. Errors are one
/// sentence naming the setting. Socket paths are the caller's business (libpq ignores
/// `sslmode` there).
pub fn tls_for(
    sslmode: Option<Setting>,
    rootcert: Option<Setting>,
    channel_binding: Option<Setting>,
) -> Result<Option<Tls>, String> {
    let rootcert_path = match rootcert.map(|r| (r, r.value.trim())) {
        None | Some((_, "")) => None,
        Some((r, "system")) => {
            return Err(format!(
                "{}=system (the operating system's CA bundle) is not built into these hooks: name the CA file, e.g. a mounted Secret's ca.crt",
                r.from
            ))
        }
        Some((_, path)) => Some(PathBuf::from(path)),
    };
    let check = match sslmode.map(|m| (m, m.value.trim())) {
        None | Some((_, "" | "disable" | "allow" | "prefer")) => None,
        Some((_, "require")) if rootcert_path.is_some() => Some(Check::Chain),
        Some((_, "require")) => Some(Check::Encrypt),
        Some((m, mode @ ("verify-ca" | "verify-full"))) => {
            if rootcert_path.is_none() {
                return Err(format!(
                    "{}={mode} needs the CA file: add sslrootcert=/path/to/ca.crt (or set PGSSLROOTCERT); no CA bundle is built in",
                    m.from
                ));
            }
            Some(if mode == "verify-ca" {
                Check::Chain
            } else {
                Check::ChainAndName
            })
        }
        Some((m, other)) => {
            return Err(format!(
                "{}={other:?} is not a libpq sslmode (disable, allow, prefer, require, verify-ca, verify-full)",
                m.from
            ))
        }
    };
    match channel_binding.map(|b| (b, b.value.trim())) {
        None | Some((_, "" | "disable" | "prefer")) => {}
        Some((b, "require")) if check.is_none() => {
            return Err(format!(
            "{}=require needs TLS: add sslmode=require (or verify-ca/verify-full with sslrootcert)",
            b.from
        ))
        }
        Some((_, "require")) => {}
        Some((b, other)) => {
            return Err(format!(
                "{}={other:?} is not a libpq channel_binding (disable, prefer, require)",
                b.from
            ))
        }
    }
    Ok(check.map(|check| Tls {
        check,
        rootcert: rootcert_path,
    }))
}

/// Reads a variable (the process environment, or a table in tests).
pub type Lookup = dyn Fn(&str) -> Option<String>;

/// A connection string's TLS settings. Values the string does not give come from `env`
/// (libpq's `PGSSLMODE`, `PGSSLROOTCERT`, `PGCHANNELBINDING`) when given. Errors are one
/// line with the password redacted.
pub fn tls_from(text: &str, env: Option<&Lookup>) -> Result<Option<Tls>> {
    let from_env = |name: &str| env.and_then(|env| env(name));
    let pick = |key: &'static str, var: &'static str| -> Option<(String, &'static str)> {
        setting(text, key)
            .map(|v| (v, key))
            .or_else(|| from_env(var).map(|v| (v, var)))
    };
    let sslmode = pick("sslmode", "PGSSLMODE");
    let rootcert = pick("sslrootcert", "PGSSLROOTCERT");
    let binding = pick("channel_binding", "PGCHANNELBINDING");
    fn as_setting<'a>(s: &'a Option<(String, &'static str)>) -> Option<Setting<'a>> {
        s.as_ref().map(|(value, from)| Setting {
            value: value.as_str(),
            from,
        })
    }
    tls_for(
        as_setting(&sslmode),
        as_setting(&rootcert),
        as_setting(&binding),
    )
    .map_err(|why| match text.trim() {
        "" => anyhow!("{why}"),
        _ => anyhow!("{:?}: {why}", redact(text)),
    })
}

/// The connection string without `sslmode` and `sslrootcert`, for tokio-postgres, which
/// knows neither `verify-*` nor `sslrootcert` (TLS is set from [`tls_from`] instead).
pub fn strip_tls(text: &str) -> String {
    without(text, &["sslmode", "sslrootcert"])
}

/// `text` without the given keys (URL query parameters, or `key=value` words).
fn without(text: &str, keys: &[&str]) -> String {
    let text = text.trim();
    let dropped = |pair: &str| {
        let key = pair.split('=').next().unwrap_or("").trim();
        keys.iter().any(|k| k.eq_ignore_ascii_case(key))
    };
    if text.contains("://") {
        let Some((head, query)) = text.split_once('?') else {
            return text.to_string();
        };
        let kept: Vec<&str> = query.split('&').filter(|p| !dropped(p)).collect();
        if kept.is_empty() {
            return head.to_string();
        }
        return format!("{head}?{}", kept.join("&"));
    }
    text.split_whitespace()
        .filter(|p| !dropped(p))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Splits a comma-separated list of connection URLs. A comma also separates the hosts of one
/// multi-host URL and may stand in a password, so a new URL starts only where a piece begins
/// with `postgres://` or `postgresql://`; anything else belongs to the URL before it. (A comma
/// in a password can also be written `%2C`.)
pub fn split_url_list(text: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for piece in text.split(',') {
        let starts_url = {
            let p = piece.trim_start().to_ascii_lowercase();
            p.starts_with("postgres://") || p.starts_with("postgresql://")
        };
        match urls.last_mut() {
            Some(last) if !starts_url => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_string()),
        }
    }
    urls.into_iter()
        .map(|u| u.trim().trim_end_matches(',').trim_end().to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// The error's own words: a server message when there is one, else the I/O cause.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_string();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.contains(&words) {
            text = format!("{text}: {words}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_rules() {
        let url = |s: &'static str| {
            Some(Setting {
                value: s,
                from: "sslmode",
            })
        };
        let root = |s: &'static str| {
            Some(Setting {
                value: s,
                from: "sslrootcert",
            })
        };
        let cb = |s: &'static str| {
            Some(Setting {
                value: s,
                from: "channel_binding",
            })
        };
        let check = |m, r, b| tls_for(m, r, b).map(|t| t.map(|t| t.check));
        type Row = (
            Option<Setting<'static>>,
            Option<Setting<'static>>,
            Option<Setting<'static>>,
            Result<Option<Check>, &'static str>,
        );
        let table: [Row; 14] = [
            (None, None, None, Ok(None)),
            (url("disable"), None, None, Ok(None)),
            (url("allow"), None, None, Ok(None)),
            (url("prefer"), root("/ca"), None, Ok(None)),
            (url("require"), None, None, Ok(Some(Check::Encrypt))),
            (url("require"), root("/ca"), None, Ok(Some(Check::Chain))),
            (url("verify-ca"), root("/ca"), None, Ok(Some(Check::Chain))),
            (
                url("verify-full"),
                root("/ca"),
                cb("require"),
                Ok(Some(Check::ChainAndName)),
            ),
            (
                url("verify-full"),
                None,
                None,
                Err("sslmode=verify-full needs the CA file"),
            ),
            (
                url("verify-ca"),
                root(""),
                None,
                Err("sslmode=verify-ca needs the CA file"),
            ),
            (
                url("verify-full"),
                root("system"),
                None,
                Err("sslrootcert=system"),
            ),
            (url("Require"), None, None, Err("not a libpq sslmode")),
            (
                None,
                None,
                cb("require"),
                Err("channel_binding=require needs TLS"),
            ),
            (
                url("require"),
                None,
                cb("yes"),
                Err("not a libpq channel_binding"),
            ),
        ];
        for (m, r, b, want) in table {
            let got = check(m, r, b);
            match (&got, want) {
                (Ok(got), Ok(want)) => assert_eq!(*got, want, "{m:?} {r:?} {b:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                _ => panic!("{m:?} {r:?} {b:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn tls_keys_are_read_decoded_and_stripped() {
        let env = |name: &str| (name == "PGSSLMODE").then(|| "verify-full".to_string());
        let tls = tls_from(
            "postgresql://u:pw@h/db?sslrootcert=%2Fetc%2Fca.crt&connect_timeout=3",
            Some(&env),
        )
        .unwrap()
        .unwrap();
        assert_eq!(tls.check, Check::ChainAndName);
        assert_eq!(tls.rootcert, Some(PathBuf::from("/etc/ca.crt")));
        assert!(tls_from("postgresql://h/db", None).unwrap().is_none());
        let err = format!(
            "{:#}",
            tls_from("postgresql://u:pw@h/db", Some(&env)).unwrap_err()
        );
        assert!(
            err.contains("PGSSLMODE=verify-full needs") && !err.contains(":pw@"),
            "{err}"
        );
        let table = [
            ("postgresql://h/db?sslmode=require", "postgresql://h/db"),
            (
                "postgresql://h/db?a=1&sslmode=verify-ca&SSLROOTCERT=/x&b=2",
                "postgresql://h/db?a=1&b=2",
            ),
            ("postgresql://h/db", "postgresql://h/db"),
            ("host=h sslmode=require  user=u", "host=h user=u"),
        ];
        for (text, want) in table {
            assert_eq!(strip_tls(text), want);
        }
    }

    #[test]
    fn password_detection() {
        assert!(has_password("postgresql://u:p@h/db"));
        assert!(!has_password("postgresql://u@h/db"));
        assert!(!has_password("postgresql://h:6432/db"));
        assert!(!has_password("postgresql://u@h/db?x=a:b@c"));
        assert!(has_password("postgresql://u@h/db?password=p"));
        assert!(has_password(
            "postgresql://u@h/db?sslmode=disable&PASSWORD=p"
        ));
    }
}
