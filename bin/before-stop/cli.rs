//! `before-stop`'s command line: the flags, their help (these doc comments), and the plain
//! settings they become.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;

use hooks::before_stop::Settings;
use hooks::{config, patroni_api, patronictl, view};

use crate::shared::{CommonArgs, PgBouncerArgs};

/// PAUSE the PgBouncers in front of a Patroni cluster before its leader's Postgres stops.
///
/// Patroni runs it as `postgresql.before_stop` (Patroni >= 3.0.3) with no arguments, on every
/// stop. It reads `patronictl list` and `patronictl history`, and pauses only when this member
/// is the outgoing leader; a replica stopping never pauses anything.
///
/// Exit codes: 0 paused every reachable PgBouncer, or nothing to do; 1 the cluster view could
/// not be read or nothing could be paused; 2 usage error. The admin password comes from
/// PGBOUNCER_PASSWORD or --pgbouncer-password-file, never from a flag.
#[derive(Parser, Debug)]
#[command(name = "before-stop", version)]
pub struct Cli {
    /// This member's Patroni name [default: /etc/hostname, else the host name]. Patroni strips
    /// PATRONI_* variables from its hooks' environment, so under Patroni the host name (in
    /// Kubernetes the pod name) or this flag is what counts.
    #[arg(long, value_name = "NAME", env = "PATRONI_NAME")]
    pub member: Option<String>,

    /// The patronictl executable.
    #[arg(
        long,
        value_name = "PATH",
        env = "HOOKS_PATRONICTL",
        default_value = "patronictl"
    )]
    pub patronictl: PathBuf,

    /// Extra argument for patronictl, before the subcommand (repeatable), e.g.
    /// --patronictl-arg=--config-file=/etc/patroni.yml. PATRONICTL_CONFIG_FILE passes through.
    #[arg(
        long = "patronictl-arg",
        value_name = "ARG",
        env = "HOOKS_PATRONICTL_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub patronictl_args: Vec<String>,

    /// Bounds each patronictl call; it is killed after that.
    #[arg(long, value_name = "DURATION", env = "HOOKS_PATRONICTL_TIMEOUT", default_value = "5s", value_parser = config::parse_duration)]
    pub patronictl_timeout: Duration,

    /// The local Patroni REST API, e.g. http://127.0.0.1:8008: a faster source of the same
    /// facts (GET /cluster and /history). If it fails, patronictl is used; if it is silent for
    /// 50 ms (as during a SIGTERM shutdown), patronictl races it.
    #[arg(long, value_name = "URL", env = "HOOKS_PATRONI_URL")]
    pub patroni_url: Option<String>,

    /// Read `patronictl list -f json` (or `-f tsv`) output from this file (- for stdin) instead of running patronictl.
    #[arg(long, value_name = "PATH", env = "HOOKS_LIST_TSV")]
    pub list_tsv: Option<PathBuf>,

    /// Read `patronictl history -f json` (or `-f tsv`) output from this file (- for stdin) instead of running patronictl.
    #[arg(long, value_name = "PATH", env = "HOOKS_HISTORY_TSV")]
    pub history_tsv: Option<PathBuf>,

    /// How long PAUSE may wait for in-flight transactions; queued clients wait at most this
    /// long before the stop goes on. PgBouncer keeps pausing after it; Postgres' shutdown ends
    /// what is still running. --timeout bounds it too.
    #[arg(long, value_name = "DURATION", env = "HOOKS_PAUSE_TIMEOUT", default_value = "10s", value_parser = config::parse_duration)]
    pub pause_timeout: Duration,

    /// Bounds the whole run, from start to exit: reading the view, resolving and reaching every
    /// PgBouncer, the drain, arming the safety net. Patroni neither renews its leader key nor
    /// pets the watchdog while before_stop runs, so keep it well under Patroni's `ttl` (30 s
    /// by default) minus the time Postgres needs to shut down.
    #[arg(long, value_name = "DURATION", env = "HOOKS_TIMEOUT", default_value = "15s", value_parser = config::parse_duration)]
    pub timeout: Duration,

    /// Safety net: if PgBouncer is still in this pause this long after the PAUSE, the detached
    /// net that holds the pause's mark RESUMEs it and logs why. 0: the net only holds the mark
    /// and never RESUMEs.
    #[arg(long, value_name = "DURATION", env = "HOOKS_MAX_PAUSE", default_value = "60s", value_parser = config::parse_duration)]
    pub max_pause: Duration,

    /// Internal: run as the detached safety net for this long (from its own start, on the
    /// monotonic clock).
    #[arg(long, value_name = "DURATION", hide = true, value_parser = config::parse_duration)]
    pub safety_net_for: Option<Duration>,

    /// Internal: the pause id whose mark the safety net holds.
    #[arg(long, value_name = "ID", hide = true, requires = "safety_net_for")]
    pub pause_id: Option<String>,

    #[command(flatten)]
    pub pgbouncer: PgBouncerArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// What the command line asks for.
pub enum Job {
    Hook(Box<Settings>),
    /// The detached safety net (started by the hook itself).
    Net(hooks::fleet::Fleet, Duration, String),
}

impl Cli {
    pub fn job(self) -> Result<Job> {
        if self.list_tsv.as_deref() == Some("-".as_ref())
            && self.history_tsv.as_deref() == Some("-".as_ref())
        {
            return Err(config::usage(
                "--list-tsv and --history-tsv cannot both read standard input",
            ));
        }
        let mode = self.common.mode();
        let fleet = self
            .pgbouncer
            .fleet("pause", mode != hooks::report::Mode::DryRun)?;
        if let Some(max_pause) = self.safety_net_for {
            let id = self
                .pause_id
                .ok_or_else(|| config::usage("the safety net needs --pause-id"))?;
            return Ok(Job::Net(fleet, max_pause, id));
        }
        let api = self
            .patroni_url
            .as_deref()
            .map(patroni_api::Api::parse)
            .transpose()
            .map_err(|e| config::usage(format!("{e:#}")))?;
        Ok(Job::Hook(Box::new(Settings {
            member: self.member,
            sources: view::Sources {
                api,
                patronictl: patronictl::Patronictl {
                    program: self.patronictl,
                    args: self.patronictl_args,
                    timeout: self.patronictl_timeout,
                },
                list_file: self.list_tsv,
                history_file: self.history_tsv,
            },
            fleet,
            pause_timeout: self.pause_timeout,
            max_pause: self.max_pause,
            timeout: self.timeout,
            mode,
        })))
    }
}
