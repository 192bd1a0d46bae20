//! `on-role-change`'s command line: the flags, their help (these doc comments), and the plain
//! settings they become.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use hooks::config;
use hooks::decision::Callback;
use hooks::on_role_change::{Process, Settings};
use hooks::postgres::{self, Server};

use crate::shared::{CommonArgs, PgBouncerArgs};

/// RESUME the PgBouncers in front of a Patroni cluster once this member is the writable primary.
///
/// Patroni calls it as `on-role-change ACTION ROLE SCOPE` (callbacks on_role_change, on_start,
/// on_restart); an operator may call it with no arguments to resume by hand. It acts for the
/// roles primary (Patroni 4), master (Patroni 3) and standby_leader; for anything else it logs
/// "nothing to do". It waits for `SELECT pg_is_in_recovery()` to be false on the local
/// Postgres first, because Patroni calls it before promotion has finished.
///
/// It RESUMEs only a pause the hooks made (marked by before-stop, see docs/design.md "Whose
/// pause"): a pause nobody marked, or one an operator holds with a `pph-hold` session, is left
/// alone and logged.
///
/// Exit codes: 0 no PgBouncer is left in a hooks' pause (each resumed, not paused, or paused
/// by somebody else and left alone), or nothing to do; 1 Postgres never left recovery (no
/// RESUME sent), or a PgBouncer could not be resumed (unreachable, no answer, still paused
/// after --resume-retry); 2 usage error. The admin password comes from PGBOUNCER_PASSWORD or
/// --pgbouncer-password-file, never from a flag.
#[derive(Parser, Debug)]
#[command(name = "on-role-change", version)]
pub struct Cli {
    /// ACTION ROLE SCOPE as Patroni passes them (e.g. on_role_change primary demo), or nothing.
    #[arg(value_name = "ACTION ROLE SCOPE", num_args = 0..=3)]
    pub callback: Vec<String>,

    /// The local Postgres [default: libpq's variables PGHOST (a socket directory works),
    /// PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE; else /var/run/postgresql:5432].
    /// TLS as in libpq: sslmode (require, verify-ca, verify-full), sslrootcert and
    /// channel_binding in the URL, else PGSSLMODE, PGSSLROOTCERT, PGCHANNELBINDING; a socket
    /// path ignores them; prefer (the default) stays plaintext
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKS_POSTGRES_URL",
        hide_env_values = true
    )]
    pub postgres: Option<String>,

    /// How often to ask whether promotion has finished (one query on one kept connection:
    /// cheap, and every interval is time the queued clients may wait for nothing). --upstream
    /// is polled at most every 25 ms, since each poll is a new login.
    #[arg(long, value_name = "DURATION", env = "HOOKS_POLL_INTERVAL", default_value = "10ms", value_parser = config::parse_duration)]
    pub poll_interval: Duration,

    /// Give up waiting for promotion after this long: exit 1 and do not RESUME.
    #[arg(long, value_name = "DURATION", env = "HOOKS_PROMOTE_TIMEOUT", default_value = "60s", value_parser = config::parse_duration)]
    pub promote_timeout: Duration,

    /// The address PgBouncer itself uses for the cluster (its [databases] host and port, e.g.
    /// the read-write Service), repeatable or comma-separated. Before RESUME, wait until it reaches this member, so
    /// PgBouncer's first login does not hit the old primary. Credentials as for --postgres.
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKS_UPSTREAM_URLS",
        hide_env_values = true
    )]
    pub upstream: Vec<String>,

    /// How long to wait for --upstream to reach this member, counted from the start alongside
    /// the wait for promotion; after that RESUME anyway, loudly.
    #[arg(long, value_name = "DURATION", env = "HOOKS_ROUTE_TIMEOUT", default_value = "30s", value_parser = config::parse_duration)]
    pub route_timeout: Duration,

    /// Wait and resume in this process instead of a detached worker. The worker exists
    /// because Patroni SIGKILLs a running callback when the next one starts; without it,
    /// such a kill mid-wait means no RESUME.
    #[arg(long, env = "HOOKS_NO_DETACH")]
    pub no_detach: bool,

    /// How long a RESUME that failed (PgBouncer unreachable, no answer, still paused) is tried
    /// again, backing off from 250 ms to 2 s.
    #[arg(long, value_name = "DURATION", env = "HOOKS_RESUME_RETRY", default_value = "30s", value_parser = config::parse_duration)]
    pub resume_retry: Duration,

    /// Internal: this process is the detached worker.
    #[arg(long, hide = true)]
    pub detached_worker: bool,

    #[command(flatten)]
    pub pgbouncer: PgBouncerArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

impl Cli {
    pub fn settings(self) -> Result<Settings> {
        let callback = match <[String; 3]>::try_from(self.callback) {
            Ok([action, role, scope]) => Some(Callback { action, role, scope }),
            Err(args) if args.is_empty() => None,
            Err(args) => {
                return Err(config::usage(format!(
                    "expected ACTION ROLE SCOPE (as Patroni passes them) or no arguments, got {} argument(s)",
                    args.len()
                )))
            }
        };
        let mode = self.common.mode();
        let fleet = self
            .pgbouncer
            .fleet("resume", mode != hooks::report::Mode::DryRun)?;
        let upstreams = postgres::upstreams(&self.upstream)?;
        let local = Server::from_url_or_env(self.postgres.as_deref(), &postgres::process_env)
            .map_err(|e| config::usage(format!("{e:#}")))?;
        let process = match (self.detached_worker, self.no_detach) {
            (true, _) => Process::Worker,
            (false, true) => Process::Here,
            (false, false) => Process::Detached,
        };
        Ok(Settings {
            callback,
            local,
            upstreams,
            fleet,
            poll_interval: self.poll_interval,
            promote_timeout: self.promote_timeout,
            route_timeout: self.route_timeout,
            resume_retry: self.resume_retry,
            process,
            mode,
        })
    }
}
