//! `before-stop`: Patroni's `postgresql.before_stop`. Pauses every PgBouncer when the member
//! that is stopping is the one clients are routed to, so in-flight transactions finish and
//! new ones queue instead of failing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use hooks::config::{self, CommonArgs, PgBouncerArgs};
use hooks::decision::{self, Action, Decision, ListVerdict};
use hooks::patronictl::{Member, Switch};
use hooks::{detach, exit, logging, patroni_api, patronictl, pause, report, safety};

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
struct Cli {
    /// This member's Patroni name [default: /etc/hostname, else the host name]. Patroni strips
    /// PATRONI_* variables from its hooks' environment, so under Patroni the host name (in
    /// Kubernetes the pod name) or this flag is what counts.
    #[arg(long, value_name = "NAME", env = "PATRONI_NAME")]
    member: Option<String>,

    /// The patronictl executable.
    #[arg(
        long,
        value_name = "PATH",
        env = "HOOKS_PATRONICTL",
        default_value = "patronictl"
    )]
    patronictl: PathBuf,

    /// Extra argument for patronictl, before the subcommand (repeatable), e.g.
    /// --patronictl-arg=--config-file=/etc/patroni.yml. PATRONICTL_CONFIG_FILE passes through.
    #[arg(
        long = "patronictl-arg",
        value_name = "ARG",
        env = "HOOKS_PATRONICTL_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    patronictl_args: Vec<String>,

    /// Bounds each patronictl call; it is killed after that.
    #[arg(long, value_name = "DURATION", env = "HOOKS_PATRONICTL_TIMEOUT", default_value = "5s", value_parser = config::parse_duration)]
    patronictl_timeout: Duration,

    /// The local Patroni REST API, e.g. http://127.0.0.1:8008: a faster source of the same
    /// facts (GET /cluster and /history). If it fails, patronictl is used; if it is silent for
    /// 50 ms (as during a SIGTERM shutdown), patronictl races it.
    #[arg(long, value_name = "URL", env = "HOOKS_PATRONI_URL")]
    patroni_url: Option<String>,

    /// Read `patronictl list -f json` (or `-f tsv`) output from this file (- for stdin) instead of running patronictl.
    #[arg(long, value_name = "PATH", env = "HOOKS_LIST_TSV")]
    list_tsv: Option<PathBuf>,

    /// Read `patronictl history -f json` (or `-f tsv`) output from this file (- for stdin) instead of running patronictl.
    #[arg(long, value_name = "PATH", env = "HOOKS_HISTORY_TSV")]
    history_tsv: Option<PathBuf>,

    /// How long PAUSE may wait for in-flight transactions; queued clients wait at most this
    /// long before the stop goes on. PgBouncer keeps pausing after it; Postgres' shutdown ends
    /// what is still running.
    #[arg(long, value_name = "DURATION", env = "HOOKS_PAUSE_TIMEOUT", default_value = "10s", value_parser = config::parse_duration)]
    pause_timeout: Duration,

    /// Safety net: if PgBouncer is still paused this long after the PAUSE, a detached watcher
    /// RESUMEs it and logs why. 0 disables it.
    #[arg(long, value_name = "DURATION", env = "HOOKS_MAX_PAUSE", default_value = "60s", value_parser = config::parse_duration)]
    max_pause: Duration,

    /// Internal: run as the detached safety net until this time (ms since the epoch).
    #[arg(long, value_name = "EPOCH_MS", hide = true)]
    safety_net_until: Option<u64>,

    #[command(flatten)]
    pgbouncer: PgBouncerArgs,

    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    if let Some(code) = detach::launcher_stage() {
        return code;
    }
    let cli = Cli::parse();
    logging::init(cli.common.log_format);
    match run(&cli) {
        Ok(code) => exit::code(code),
        Err(err) => {
            tracing::error!("before-stop failed: {err:#}");
            exit::code(exit::for_error(&err))
        }
    }
}

fn run(cli: &Cli) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cli))
}

async fn run_async(cli: &Cli) -> Result<u8> {
    let started = Instant::now();
    if cli.list_tsv.as_deref() == Some("-".as_ref())
        && cli.history_tsv.as_deref() == Some("-".as_ref())
    {
        return Err(config::usage(
            "--list-tsv and --history-tsv cannot both read standard input",
        ));
    }
    let urls = cli.pgbouncer.parsed_urls("pause", !cli.common.dry_run)?;
    if let Some(deadline_ms) = cli.safety_net_until {
        let password = cli.pgbouncer.password()?;
        safety::watch(&urls, password.as_deref(), &cli.pgbouncer, deadline_ms).await;
        return Ok(exit::OK);
    }
    let member = member_name(cli.member.as_deref())?;

    if cli.common.check {
        let password = cli.pgbouncer.password()?;
        let ok = pause::preflight(&urls, password.as_deref(), &cli.pgbouncer).await;
        let role = read_view(cli).await.map(|(list, _)| {
            list.into_iter()
                .find(|m| m.name == member)
                .map(|m| format!("{:?}", m.role))
        });
        let role_ok = match role {
            Ok(Some(role)) => {
                tracing::info!(member = %member, role = %role, "check: patronictl list shows this member");
                true
            }
            Ok(None) => {
                tracing::error!(member = %member, "check: this member is not in patronictl list: set --member or PATRONI_NAME");
                false
            }
            Err(err) => {
                tracing::error!("check: cannot read the cluster view: {err:#}");
                false
            }
        };
        let good = ok && role_ok;
        tracing::info!(
            outcome = if good { "ready" } else { "not ready" },
            "before-stop check done"
        );
        return Ok(if good { exit::OK } else { exit::FAILURE });
    }

    let view_started = Instant::now();
    let decision = decide(cli, &member).await?;
    let read_view_ms = view_started.elapsed().as_millis();
    tracing::info!(member = %member, decision = ?decision.action, reason = %decision.reason, read_view_ms, "decided");

    if cli.common.dry_run {
        report::DryRun {
            action: decision.action,
            reason: &decision.reason,
            member: Some(&member),
            targets: urls.iter().map(|u| u.shown.clone()).collect(),
            hook: "before-stop",
        }
        .print();
        tracing::info!(decision = ?decision.action, read_view_ms, total_ms = started.elapsed().as_millis(), outcome = "dry run", "before-stop done");
        return Ok(exit::OK);
    }
    if decision.action != Action::Pause {
        tracing::info!(decision = ?decision.action, read_view_ms, total_ms = started.elapsed().as_millis(), outcome = "nothing to pause", "before-stop done");
        return Ok(exit::OK);
    }

    let password = cli.pgbouncer.password()?;
    let pause_started = Instant::now();
    let result = pause::pause_all(
        &urls,
        password.as_deref(),
        &cli.pgbouncer,
        cli.pause_timeout,
    )
    .await;
    let pause_ms = pause_started.elapsed().as_millis();
    let pausing = result.paused + result.draining;
    if pausing > 0 && !cli.max_pause.is_zero() {
        let deadline = safety::deadline_after(cli.max_pause);
        let extra = ["--safety-net-until".into(), deadline.to_string().into()];
        if let Err(err) = detach::spawn(&extra) {
            tracing::warn!("could not start the pause safety net: {err:#}");
        }
    }
    let code = if pausing > 0 { exit::OK } else { exit::FAILURE };
    tracing::info!(
        decision = "pause",
        read_view_ms,
        pause_ms,
        total_ms = started.elapsed().as_millis(),
        paused = result.paused,
        draining = result.draining,
        failed = result.failed,
        outcome = match (result.draining, result.failed) {
            _ if pausing == 0 => "nothing paused",
            (0, 0) => "paused",
            (_, 0) => "pausing (still draining)",
            _ => "partly paused",
        },
        "before-stop done"
    );
    Ok(code)
}

/// `--member`, else PATRONI_NAME (clap reads both), else /etc/hostname, else the kernel's name.
fn member_name(given: Option<&str>) -> Result<String> {
    if let Some(name) = given.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(name.to_string());
    }
    for path in ["/etc/hostname", "/proc/sys/kernel/hostname"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let name = text.trim();
            if !name.is_empty() {
                return Ok(name.to_string());
            }
        }
    }
    Err(config::usage(
        "cannot tell this member's name: set --member or PATRONI_NAME",
    ))
}

/// The REST API answers in milliseconds or not at all: on SIGTERM Patroni shuts it down
/// before stopping Postgres, and its socket then accepts but never answers. So patronictl
/// starts alongside once the API has had this long, and whichever answers first is used: a
/// pod deletion pays this head start, not a timeout.
const REST_HEAD_START: Duration = Duration::from_millis(50);

type View = (Vec<Member>, Result<Vec<Switch>>);

/// The member list and, when it could be read, the history: from the REST API when
/// `--patroni-url` is set (milliseconds instead of two Python start-ups), racing patronictl
/// if it is slow; else from files or patronictl. History may fail without harm when the
/// list decides alone.
async fn read_view(cli: &Cli) -> Result<View> {
    let Some(url) = &cli.patroni_url else {
        return read_view_from_patronictl(cli).await;
    };
    let api = patroni_api::Api::parse(url).map_err(|e| config::usage(format!("{e:#}")))?;
    let rest = async {
        let view = api.view(cli.patronictl_timeout).await;
        if let Err(err) = &view {
            tracing::warn!("Patroni REST API failed, using patronictl instead: {err:#}");
        }
        view.map(|(list, history)| (list, Ok(history)))
    };
    tokio::pin!(rest);
    tokio::select! {
        answer = &mut rest => return match answer {
            Ok(view) => Ok(view),
            Err(_) => read_view_from_patronictl(cli).await,
        },
        _ = tokio::time::sleep(REST_HEAD_START) => {}
    }
    let ctl = read_view_from_patronictl(cli);
    tokio::pin!(ctl);
    tokio::select! {
        answer = &mut rest => match answer {
            Ok(view) => Ok(view),
            Err(_) => ctl.await,
        },
        view = &mut ctl => {
            tracing::warn!("Patroni REST API did not answer within {REST_HEAD_START:?}; used patronictl instead");
            view
        }
    }
}

async fn read_view_from_patronictl(cli: &Cli) -> Result<View> {
    let ctl = patronictl::Patronictl {
        program: cli.patronictl.clone(),
        args: cli.patronictl_args.clone(),
        timeout: cli.patronictl_timeout,
    };
    let read = |file: Option<PathBuf>, subcommand: &'static str| {
        let ctl = ctl.clone();
        async move {
            match file {
                Some(path) => config::read_input(&path),
                None => ctl.json(subcommand).await,
            }
        }
    };
    let (list, history) = tokio::join!(
        read(cli.list_tsv.clone(), "list"),
        read(cli.history_tsv.clone(), "history")
    );
    let list = patronictl::parse_list(&list?)?;
    Ok((
        list,
        history.and_then(|text| patronictl::parse_history(&text)),
    ))
}

async fn decide(cli: &Cli, member: &str) -> Result<Decision> {
    let (list, history) = read_view(cli).await?;
    match decision::decide_from_list(member, &list).map_err(anyhow::Error::msg)? {
        ListVerdict::Decided(decision) => Ok(decision),
        ListVerdict::NeedHistory => {
            let history = history?;
            Ok(decision::decide_from_history(member, &list, &history))
        }
    }
}
