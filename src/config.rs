//! Flags shared by both hooks, and the small parsers behind them.
//!
//! Every flag has an environment variable because Patroni runs the hooks from a single
//! command string in its YAML: env vars on the Patroni container are the easy place to
//! configure them, and the only safe place for secrets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::exit::UsageError;

/// Where the PgBouncers are and how long to wait for them.
#[derive(Args, Clone, Debug)]
pub struct PgBouncerArgs {
    /// PgBouncer admin console, e.g. postgresql://pgbouncer_admin@pgbouncer:6432/pgbouncer.
    /// Repeatable, or a comma-separated list (a new URL starts at each `postgresql://`, so
    /// multi-host URLs and commas in passwords survive). Every address the host resolves to is
    /// a target (a headless Service lists every PgBouncer pod). The password comes best from
    /// --pgbouncer-password-file (a mounted Secret); PGBOUNCER_PASSWORD works but Patroni hands
    /// its environment on to every Postgres backend; a password in the URL shows in `ps`.
    /// Plain TCP only: sslmode=require and stricter are refused.
    #[arg(
        long = "pgbouncer",
        value_name = "URL",
        env = "PGBOUNCER_URLS",
        hide_env_values = true
    )]
    pub urls: Vec<String>,

    /// File holding the admin password (a mounted Secret); used when PGBOUNCER_PASSWORD is unset.
    #[arg(long, value_name = "PATH", env = "PGBOUNCER_PASSWORD_FILE")]
    pub pgbouncer_password_file: Option<PathBuf>,

    /// Bounds connecting and authenticating to each PgBouncer.
    #[arg(long, value_name = "DURATION", env = "HOOKS_CONNECT_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Bounds each admin command other than PAUSE (RESUME, SHOW).
    #[arg(long, value_name = "DURATION", env = "HOOKS_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub command_timeout: Duration,
}

impl PgBouncerArgs {
    /// The admin password, from the environment or the file; never from a flag.
    pub fn password(&self) -> Result<Option<String>> {
        if let Ok(password) = std::env::var("PGBOUNCER_PASSWORD") {
            if !password.is_empty() {
                return Ok(Some(password));
            }
        }
        match &self.pgbouncer_password_file {
            None => Ok(None),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read --pgbouncer-password-file {}", path.display())
                })?;
                let password = text.trim_end_matches(['\r', '\n']).to_string();
                if password.is_empty() {
                    bail!("--pgbouncer-password-file {} is empty", path.display());
                }
                Ok(Some(password))
            }
        }
    }

    /// The parsed `--pgbouncer` URLs; a bad URL is a usage error, and so is none at all when
    /// `required` (only a dry run may go without). `verb` names what they are for.
    pub fn parsed_urls(&self, verb: &str, required: bool) -> Result<Vec<crate::pgbouncer::Url>> {
        let urls = self
            .urls
            .iter()
            .flat_map(|u| crate::conninfo::split_url_list(u))
            .map(|u| crate::pgbouncer::Url::parse(&u).map_err(|e| usage(format!("{e:#}"))))
            .collect::<Result<Vec<_>>>()?;
        if urls.is_empty() && required {
            return Err(usage(format!(
                "no PgBouncer to {verb}: set --pgbouncer or PGBOUNCER_URLS"
            )));
        }
        if self.password_in_argv() {
            tracing::warn!("a --pgbouncer URL carries a password, visible in `ps`: use PGBOUNCER_PASSWORD_FILE instead");
        }
        Ok(urls)
    }

    /// Whether any URL given on the command line carries a password (visible in `ps`).
    pub fn password_in_argv(&self) -> bool {
        std::env::args().any(|arg| arg.contains("://") && url_has_password(&arg))
    }
}

fn url_has_password(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        || query
            .split('&')
            .any(|pair| pair.to_ascii_lowercase().starts_with("password="))
}

/// Flags every run has.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// Read everything and decide, but send nothing; print one JSON object on stdout.
    #[arg(long, env = "HOOKS_DRY_RUN")]
    pub dry_run: bool,

    /// Preflight: connect to every target (and the local Postgres) without changing anything,
    /// report what would stop a real switchover, exit 0 only when it would work.
    #[arg(long, env = "HOOKS_CHECK", conflicts_with = "dry_run")]
    pub check: bool,

    /// Log format on stderr; RUST_LOG sets the level (default info).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "HOOKS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses `500ms`, `10s`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 500ms, 10s, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > 7.0 * 24.0 * 3600.0 {
        return Err(format!("{text:?} is too long (a week at most)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text)
}

/// A usage error that `main` turns into exit code 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("500ms", Some(0.5)),
            ("10s", Some(10.0)),
            ("10", Some(10.0)),
            ("1.5s", Some(1.5)),
            ("2m", Some(120.0)),
            ("0", Some(0.0)),
            ("", None),
            ("ten", None),
            ("10x", None),
            ("-1s", None),
            ("1e9", None),
        ];
        for (text, seconds) in table {
            let got = parse_duration(text).ok().map(|d| d.as_secs_f64());
            assert_eq!(got, seconds, "{text:?}");
        }
    }

    #[test]
    fn password_detection() {
        assert!(url_has_password("postgresql://u:p@h/db"));
        assert!(!url_has_password("postgresql://u@h/db"));
        assert!(!url_has_password("postgresql://h:6432/db"));
        assert!(!url_has_password("postgresql://u@h/db?x=a:b@c"));
        assert!(url_has_password("postgresql://u@h/db?password=p"));
    }
}
