//! `pgbouncer-watchdog`'s command line: the flags, their help (these doc comments), and the
//! plain settings they become.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use hooks::postgres;
use hooks::{config, watchdog};

use crate::shared::{LogFormatArg, PgBouncerArgs};

/// The watchdog beside PgBouncer: ends a pause the Patroni hooks made once it has outlived its
/// switchover, and never a pause anybody else made.
///
/// It runs as a sidecar in PgBouncer's pod, until SIGTERM. It RESUMEs a hooks' pause as soon
/// as --upstream (PgBouncer's own route, checked from its own network) reaches a writable
/// primary of the same cluster other than the one it reached when the pause began, and in any
/// case once the pause is older than --max-pause; it retries until SHOW STATE confirms. A pause
/// without the hooks' mark (a DBA's PAUSE) is logged and left alone, and so is any pause while
/// an operator's `pph-hold` admin session is connected.
///
/// With --listen it serves /status, /metrics (Prometheus), /healthz and /readyz. --check looks
/// once and says what is missing; --status prints what a running watchdog knows.
///
/// Exit codes: 0 stopped by SIGTERM/SIGINT or --run-for, or --check/--status found all well;
/// 1 --check found a problem, or --status could not reach the watchdog or found PgBouncer
/// paused; 2 usage error. The admin password comes from PGBOUNCER_PASSWORD or
/// --pgbouncer-password-file, never from a flag.
#[derive(Parser, Debug)]
#[command(name = "pgbouncer-watchdog", version)]
pub struct Cli {
    #[command(flatten)]
    pub pgbouncer: PgBouncerArgs,

    /// PgBouncer's own route to the cluster (its [databases] host and port, e.g. the primary
    /// Service), repeatable or comma-separated. Credentials as libpq finds them (PGPASSFILE,
    /// PGPASSWORD, PGUSER). Without it a hooks' pause ends only at --max-pause.
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKS_UPSTREAM_URLS",
        hide_env_values = true
    )]
    pub upstream: Vec<String>,

    /// The cluster's system identifier (`SELECT system_identifier FROM pg_control_system()`):
    /// only writable servers of this cluster count as its primary [default: the first writable
    /// server the route reaches].
    #[arg(long, value_name = "ID", env = "HOOKS_SYSTEM_IDENTIFIER")]
    pub system_identifier: Option<String>,

    /// The longest a hooks' pause may last before the watchdog RESUMEs it.
    #[arg(long, value_name = "DURATION", env = "HOOKS_MAX_PAUSE", default_value = "60s", value_parser = config::parse_duration)]
    pub max_pause: Duration,

    /// How often to look at PgBouncer (SHOW STATE on a kept session; the route is sampled
    /// every look while a hooks' pause is on, else every second).
    #[arg(long, value_name = "DURATION", env = "HOOKS_WATCH_INTERVAL", default_value = "250ms", value_parser = config::parse_duration)]
    pub interval: Duration,

    /// Bounds each step of a look (a login, SHOW STATE, SHOW CLIENTS, the route's answer); the
    /// steps for different PgBouncers and the route run at once.
    #[arg(long, value_name = "DURATION", env = "HOOKS_LOOK_TIMEOUT", default_value = "1s", value_parser = config::parse_duration)]
    pub look_timeout: Duration,

    /// Serve /status, /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9127); with
    /// --status, the address to ask.
    #[arg(long, value_name = "ADDR", env = "HOOKS_WATCHDOG_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Stop after this long [default: run until SIGTERM].
    #[arg(long, value_name = "DURATION", env = "HOOKS_WATCH_FOR", value_parser = config::parse_duration)]
    pub run_for: Option<Duration>,

    /// Look once at every PgBouncer and the route, say what is missing, exit 0 only when the
    /// watchdog could do its job.
    #[arg(long, conflicts_with = "status")]
    pub check: bool,

    /// Print what the watchdog running at --listen knows (is PgBouncer paused, since when,
    /// whose pause, who ends it and when) and exit.
    #[arg(long, requires = "listen")]
    pub status: bool,

    /// Log format on stderr; RUST_LOG sets the level (default info).
    #[arg(
        long,
        value_name = "FORMAT",
        env = "HOOKS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormatArg,
}

/// What the command line asks for.
pub enum Job {
    Watch(Box<watchdog::Settings>),
    /// Ask the watchdog at this address.
    Status(SocketAddr),
}

impl Cli {
    pub fn job(self) -> Result<Job> {
        if self.status {
            if let Some(addr) = self.listen {
                return Ok(Job::Status(addr));
            }
        }
        if self.max_pause.is_zero() {
            return Err(config::usage("--max-pause must be more than 0"));
        }
        if self.look_timeout.is_zero() {
            return Err(config::usage("--look-timeout must be more than 0"));
        }
        let fleet = self.pgbouncer.fleet("watch", true)?;
        let upstreams = postgres::upstreams(&self.upstream)?;
        Ok(Job::Watch(Box::new(watchdog::Settings {
            fleet,
            upstreams,
            max_pause: self.max_pause,
            interval: self.interval,
            look_timeout: self.look_timeout,
            system_identifier: self.system_identifier,
            listen: self.listen,
            run_for: self.run_for,
            check: self.check,
        })))
    }
}
