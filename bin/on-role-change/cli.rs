//! `on-role-change`'s command line: the flags, their help (these doc comments), and the plain
//! settings they become.

use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use hooks::conninfo::split_url_list;
use hooks::decision::Callback;
use hooks::on_role_change::{Process, Settings};
use hooks::postgres::{self, Server};
use hooks::{config, watchdog};

use crate::shared::{CommonArgs, PgBouncerArgs};

/// RESUME the PgBouncers in front of a Patroni cluster once this member is the writable primary.
///
/// Patroni calls it as `on-role-change ACTION ROLE SCOPE` (callbacks on_role_change, on_start,
/// on_restart); an operator may call it with no arguments to resume by hand. It acts for the
/// roles primary (Patroni 4), master (Patroni 3) and standby_leader; for anything else it logs
/// "nothing to do". It waits for `SELECT pg_is_in_recovery()` to be false on the local
/// Postgres first, because Patroni calls it before promotion has finished.
///
/// Exit codes: 0 resumed every reachable PgBouncer, or nothing to do; 1 Postgres never left
/// recovery (no RESUME sent) or nothing could be resumed; 2 usage error. The admin password
/// comes from PGBOUNCER_PASSWORD or --pgbouncer-password-file, never from a flag.
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

    /// Run as the watchdog beside PgBouncer (a sidecar in its pod), until SIGTERM: RESUME as
    /// soon as --upstream (PgBouncer's own route, checked from its own network) reaches a
    /// writable primary other than the one before the pause, and in any case once a pause
    /// is older than --max-pause. It survives what a Patroni member's pod does not.
    #[arg(long, env = "HOOKS_WATCH", conflicts_with_all = ["dry_run", "check"])]
    pub watch: bool,

    /// With --watch: the longest a pause may last before the watchdog RESUMEs it.
    #[arg(long, value_name = "DURATION", env = "HOOKS_MAX_PAUSE", default_value = "60s", value_parser = config::parse_duration)]
    pub max_pause: Duration,

    /// With --watch: how often to look while PgBouncer is paused (when it is not, the route
    /// is sampled every 5 s).
    #[arg(long, value_name = "DURATION", env = "HOOKS_WATCH_INTERVAL", default_value = "250ms", value_parser = config::parse_duration)]
    pub watch_interval: Duration,

    /// With --watch: stop after this long [default: run until SIGTERM].
    #[arg(long, value_name = "DURATION", env = "HOOKS_WATCH_FOR", value_parser = config::parse_duration)]
    pub watch_for: Option<Duration>,

    /// Internal: this process is the detached worker.
    #[arg(long, hide = true)]
    pub detached_worker: bool,

    #[command(flatten)]
    pub pgbouncer: PgBouncerArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// What the command line asks for.
pub enum Job {
    Hook(Box<Settings>),
    Watch(Box<watchdog::Settings>),
}

impl Cli {
    pub fn job(self) -> Result<Job> {
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
        let upstreams = self
            .upstream
            .iter()
            .flat_map(|u| split_url_list(u))
            .map(|u| {
                Server::from_url_or_env(Some(&u), &postgres::process_env)
                    .map_err(|e| config::usage(format!("--upstream: {e:#}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if self.watch {
            if self.max_pause.is_zero() {
                return Err(config::usage("--watch needs a --max-pause above 0"));
            }
            return Ok(Job::Watch(Box::new(watchdog::Settings {
                fleet,
                upstreams,
                max_pause: self.max_pause,
                interval: self.watch_interval,
                run_for: self.watch_for,
            })));
        }
        let local = Server::from_url_or_env(self.postgres.as_deref(), &postgres::process_env)
            .map_err(|e| config::usage(format!("{e:#}")))?;
        let process = match (self.detached_worker, self.no_detach) {
            (true, _) => Process::Worker,
            (false, true) => Process::Here,
            (false, false) => Process::Detached,
        };
        Ok(Job::Hook(Box::new(Settings {
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
        })))
    }
}
