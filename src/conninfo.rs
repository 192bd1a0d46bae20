//! Connection strings as users write them: lists of URLs, passwords kept out of every
//! message, TLS settings this build cannot honour, and errors in the server's own words.

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
            k.eq_ignore_ascii_case(key).then(|| v.to_string())
        });
    }
    text.split_whitespace().find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim_matches('\'').to_string())
    })
}

/// These hooks speak plain TCP only (no TLS library is built in, which keeps the binaries
/// small enough for a ConfigMap). A connection string that *requires* TLS is refused, never
/// quietly downgraded to plaintext; `disable`, `allow` and `prefer` are accepted (`prefer`
/// falls back to plaintext, as libpq does against a server without TLS).
pub fn refuse_tls(text: &str) -> Result<()> {
    refuse_tls_settings(
        setting(text, "sslmode").as_deref(),
        setting(text, "channel_binding").as_deref(),
    )
    .map_err(|why| anyhow!("{:?}: {why}", redact(text)))
}

/// The same rule for values that come from elsewhere (libpq's `PGSSLMODE`, `PGCHANNELBINDING`).
pub fn refuse_tls_settings(
    sslmode: Option<&str>,
    channel_binding: Option<&str>,
) -> Result<(), String> {
    match sslmode.map(str::trim) {
        None | Some("" | "disable" | "allow" | "prefer") => {}
        Some(mode @ ("require" | "verify-ca" | "verify-full")) => {
            return Err(format!(
                "sslmode={mode} needs TLS, which these hooks do not speak; use sslmode=disable or prefer (plaintext), or reach PgBouncer/Postgres over a network you trust"
            ))
        }
        Some(other) => return Err(format!("sslmode={other:?} is not a libpq sslmode")),
    }
    match channel_binding.map(str::trim) {
        None | Some("" | "disable" | "prefer") => Ok(()),
        Some("require") => Err(
            "channel_binding=require needs TLS, which these hooks do not speak; use channel_binding=disable or prefer".into(),
        ),
        Some(other) => Err(format!("channel_binding={other:?} is not a libpq channel_binding")),
    }
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
