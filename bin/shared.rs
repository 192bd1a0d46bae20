//! Flags both hooks have, and turning them into plain settings.
//!
//! Every flag has an environment variable because Patroni runs the hooks from a single
//! command string in its YAML: env vars on the Patroni container are the easy place to
//! configure them, and the only safe place for secrets.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};

use hooks::config::{self, parse_duration};
use hooks::conninfo::split_url_list;
use hooks::fleet::{Fleet, Password};
use hooks::logging::LogFormat;
use hooks::pgbouncer::Url;
use hooks::report::Mode;

/// Where the PgBouncers are and how long to wait for them.
#[derive(Args, Clone, Debug)]
pub struct PgBouncerArgs {
    /// PgBouncer admin console, e.g. postgresql://pgbouncer_admin@pgbouncer:6432/pgbouncer.
    /// Repeatable, or a comma-separated list (a new URL starts at each `postgresql://`, so
    /// multi-host URLs and commas in passwords survive). Every address the host resolves to is
    /// a target (a headless Service lists every PgBouncer pod). The password comes best from
    /// --pgbouncer-password-file (a mounted Secret); PGBOUNCER_PASSWORD works but Patroni hands
    /// its environment on to every Postgres backend; a password in the URL shows in `ps`.
    /// TLS from the URL's own sslmode (require, verify-ca, verify-full) and sslrootcert (the
    /// CA file, e.g. a mounted Secret), libpq's meanings; disable, allow and prefer (the
    /// default) stay plaintext, and PGSSLMODE does not apply here.
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
    /// The fleet; a bad URL is a usage error, and so is none at all when `required` (only a
    /// dry run may go without). `verb` names what they are for.
    pub fn fleet(&self, verb: &str, required: bool) -> Result<Fleet> {
        let urls = self
            .urls
            .iter()
            .flat_map(|u| split_url_list(u))
            .map(|u| Url::parse(&u).map_err(|e| config::usage(format!("{e:#}"))))
            .collect::<Result<Vec<_>>>()?;
        if urls.is_empty() && required {
            return Err(config::usage(format!(
                "no PgBouncer to {verb}: set --pgbouncer or PGBOUNCER_URLS"
            )));
        }
        if config::password_in_argv() {
            tracing::warn!("a URL on the command line carries a password, visible in `ps`: use PGBOUNCER_PASSWORD_FILE instead");
        }
        Ok(Fleet {
            urls,
            password: Password {
                file: self.pgbouncer_password_file.clone(),
            },
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
        })
    }
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
    pub log_format: LogFormatArg,
}

impl CommonArgs {
    pub fn mode(&self) -> Mode {
        match (self.dry_run, self.check) {
            (true, _) => Mode::DryRun,
            (_, true) => Mode::Check,
            _ => Mode::Run,
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.format()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl LogFormatArg {
    pub fn format(self) -> LogFormat {
        match self {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// The exit code for a run's result; an error is printed once, as one line: the run's
/// summary event, with outcome "failed" (or "usage error").
pub fn finish(hook: &str, result: Result<u8>) -> ExitCode {
    ExitCode::from(match result {
        Ok(code) => code,
        Err(err) => {
            let code = hooks::exit::for_error(&err);
            let outcome = if code == hooks::exit::USAGE {
                "usage error"
            } else {
                "failed"
            };
            tracing::error!(event = "summary", hook, outcome, "{hook} failed: {err:#}");
            code
        }
    })
}
