//! `on-role-change`: Patroni's `on_role_change`, `on_start` and `on_restart` callback. On the
//! new primary it waits until Postgres accepts writes, then RESUMEs every PgBouncer.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use hooks::config::{self, CommonArgs, PgBouncerArgs};
use hooks::decision::{self, Action, Callback, ResumePlan};
use hooks::postgres::{self, Local};
use hooks::{detach, exit, logging, pause, pgbouncer, report, route};

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
struct Cli {
    /// ACTION ROLE SCOPE as Patroni passes them (e.g. on_role_change primary demo), or nothing.
    #[arg(value_name = "ACTION ROLE SCOPE", num_args = 0..=3)]
    callback: Vec<String>,

    /// The local Postgres [default: libpq's variables PGHOST (a socket directory works),
    /// PGPORT, PGUSER, PGDATABASE, PGPASSWORD, PGPASSFILE; else /var/run/postgresql:5432]
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKS_POSTGRES_URL",
        hide_env_values = true
    )]
    postgres: Option<String>,

    /// How often to ask whether promotion has finished (one query on one kept connection:
    /// cheap, and every interval is time the queued clients may wait for nothing). --upstream
    /// is polled at most every 25 ms, since each poll is a new login.
    #[arg(long, value_name = "DURATION", env = "HOOKS_POLL_INTERVAL", default_value = "10ms", value_parser = config::parse_duration)]
    poll_interval: Duration,

    /// Give up waiting for promotion after this long: exit 1 and do not RESUME.
    #[arg(long, value_name = "DURATION", env = "HOOKS_PROMOTE_TIMEOUT", default_value = "60s", value_parser = config::parse_duration)]
    promote_timeout: Duration,

    /// The address PgBouncer itself uses for the cluster (its [databases] host and port, e.g.
    /// the read-write Service), repeatable or comma-separated. Before RESUME, wait until it reaches this member, so
    /// PgBouncer's first login does not hit the old primary. Credentials as for --postgres.
    #[arg(
        long,
        value_name = "URL",
        env = "HOOKS_UPSTREAM_URLS",
        hide_env_values = true
    )]
    upstream: Vec<String>,

    /// How long to wait for --upstream to reach this member, counted from the start alongside
    /// the wait for promotion; after that RESUME anyway, loudly.
    #[arg(long, value_name = "DURATION", env = "HOOKS_ROUTE_TIMEOUT", default_value = "30s", value_parser = config::parse_duration)]
    route_timeout: Duration,

    /// Wait and resume in this process instead of a detached worker. The worker exists
    /// because Patroni SIGKILLs a running callback when the next one starts; without it,
    /// such a kill mid-wait means no RESUME.
    #[arg(long, env = "HOOKS_NO_DETACH")]
    no_detach: bool,

    /// Internal: this process is the detached worker.
    #[arg(long, hide = true)]
    detached_worker: bool,

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
    let code = match run(&cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("on-role-change failed: {err:#}");
            exit::for_error(&err)
        }
    };
    if cli.detached_worker {
        detach::report(code);
    }
    exit::code(code)
}

fn run(cli: &Cli) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run_async(cli));
    // Never wait for a name lookup stuck in a blocking thread: the run is over.
    runtime.shutdown_background();
    result
}

async fn run_async(cli: &Cli) -> Result<u8> {
    let started = Instant::now();
    let callback = match cli.callback.as_slice() {
        [] => None,
        [action, role, scope] => Some(Callback { action: action.clone(), role: role.clone(), scope: scope.clone() }),
        other => {
            return Err(config::usage(format!(
                "expected ACTION ROLE SCOPE (as Patroni passes them) or no arguments, got {} argument(s)",
                other.len()
            )))
        }
    };
    let urls = cli.pgbouncer.parsed_urls("resume", !cli.common.dry_run)?;
    let local = Local::from_url_or_env(cli.postgres.as_deref(), &postgres::process_env)
        .map_err(|e| config::usage(format!("{e:#}")))?;
    let upstreams = cli
        .upstream
        .iter()
        .flat_map(|u| hooks::conninfo::split_url_list(u))
        .map(|u| {
            Local::from_url_or_env(Some(&u), &postgres::process_env)
                .map_err(|e| config::usage(format!("--upstream: {e:#}")))
        })
        .collect::<Result<Vec<_>>>()?;

    if cli.common.check {
        return check(cli, &urls, &local, &upstreams).await;
    }

    let plan = decision::plan_resume(callback.as_ref());
    let (action, reason) = match &plan {
        ResumePlan::AfterPromotion(r) | ResumePlan::Now(r) => (Action::Resume, r.clone()),
        ResumePlan::Nothing(r) => (Action::Skip, r.clone()),
    };
    tracing::info!(decision = ?action, reason = %reason, "decided");
    if cli.common.dry_run {
        report::DryRun {
            action,
            reason: &reason,
            member: None,
            targets: urls.iter().map(|u| u.shown.clone()).collect(),
            hook: "on-role-change",
        }
        .print();
        tracing::info!(decision = ?action, total_ms = started.elapsed().as_millis(), outcome = "dry run", "on-role-change done");
        return Ok(exit::OK);
    }
    if action == Action::Skip {
        tracing::info!(
            decision = "skip",
            total_ms = started.elapsed().as_millis(),
            outcome = "nothing to do",
            "on-role-change done"
        );
        return Ok(exit::OK);
    }

    if !cli.detached_worker && !cli.no_detach {
        match detach::spawn_awaitable(&["--detached-worker".into()]) {
            Ok(worker) => return wait_for_worker(cli, worker).await,
            // No fork (pids limit, memory): the RESUME must still happen, so do the work here.
            Err(err) => tracing::warn!(
                "cannot start the detached worker ({err:#}); waiting and resuming in this process"
            ),
        }
    }

    // Promotion and route are awaited side by side: each costs only what it adds.
    let wait_started = Instant::now();
    let promotion = async {
        if let ResumePlan::AfterPromotion(_) = plan {
            tracing::info!(postgres = %local.shown, "waiting for the local Postgres to leave recovery");
            postgres::wait_until_primary(&local, cli.poll_interval, cli.promote_timeout).await?;
        }
        Ok::<_, anyhow::Error>(wait_started.elapsed().as_millis())
    };
    let writable = matches!(plan, ResumePlan::AfterPromotion(_));
    let route = async {
        let reached = upstreams.is_empty()
            || route::wait_for_route(
                &local,
                writable,
                &upstreams,
                cli.poll_interval,
                cli.route_timeout,
            )
            .await;
        (reached, wait_started.elapsed().as_millis())
    };
    tokio::pin!(promotion, route);
    let (mut wait_ms, mut route_ms) = (None, None);
    while wait_ms.is_none() || route_ms.is_none() {
        tokio::select! {
            waited = &mut promotion, if wait_ms.is_none() => match waited {
                Ok(ms) => wait_ms = Some(ms),
                Err(err) => {
                    tracing::error!(
                        wait_ms = wait_started.elapsed().as_millis(),
                        total_ms = started.elapsed().as_millis(),
                        outcome = "not resumed",
                        "on-role-change done: {err:#}; PgBouncer NOT resumed (run `on-role-change` by hand once this member is primary)"
                    );
                    return Ok(exit::FAILURE);
                }
            },
            routed = &mut route, if route_ms.is_none() => route_ms = Some(routed),
        }
    }
    let (wait_ms, (reached, route_ms)) = (wait_ms.unwrap_or(0), route_ms.unwrap_or((true, 0)));
    if !reached && writable {
        // The route never reached this member: before resuming anyway, make sure it is still
        // the primary (it may have been demoted or stopped while the route lagged).
        let still = async {
            let client = local.connect(cli.pgbouncer.connect_timeout).await?;
            tokio::time::timeout(
                cli.pgbouncer.command_timeout,
                postgres::in_recovery(&client),
            )
            .await
            .map_err(|_| anyhow::anyhow!("pg_is_in_recovery() did not answer"))?
        };
        let problem = match still.await {
            Ok(false) => None,
            Ok(true) => Some("it is in recovery again".to_string()),
            Err(err) => Some(format!("it cannot be asked: {err:#}")),
        };
        if let Some(problem) = problem {
            tracing::error!(
                wait_ms,
                route_ms,
                total_ms = started.elapsed().as_millis(),
                outcome = "not resumed",
                "on-role-change done: the route never reached this member and {problem}; PgBouncer NOT resumed"
            );
            return Ok(exit::FAILURE);
        }
    }

    let password = cli.pgbouncer.password()?;
    let resume_started = Instant::now();
    let result = pause::resume_all(&urls, password.as_deref(), &cli.pgbouncer).await;
    let resume_ms = resume_started.elapsed().as_millis();
    let done = result.resumed + result.unverified;
    let code = if done > 0 && result.failed == 0 {
        exit::OK
    } else {
        exit::FAILURE
    };
    tracing::info!(
        decision = "resume",
        wait_ms,
        route_ms,
        resume_ms,
        total_ms = started.elapsed().as_millis(),
        resumed = result.resumed,
        unverified = result.unverified,
        failed = result.failed,
        outcome = if code == exit::OK {
            "resumed"
        } else if done > 0 {
            "partly resumed"
        } else {
            "nothing resumed"
        },
        "on-role-change done"
    );
    Ok(code)
}

/// Hands the wait and the RESUME to a detached worker and waits for its verdict; if this
/// process is killed meanwhile, the worker carries on.
async fn wait_for_worker(cli: &Cli, worker: detach::Worker) -> Result<u8> {
    tracing::info!(
        "waiting and resuming in a detached worker (it survives Patroni killing this callback)"
    );
    let bound = cli.promote_timeout
        + cli.route_timeout
        + 2 * (cli.pgbouncer.connect_timeout + cli.pgbouncer.command_timeout)
        + Duration::from_secs(10);
    let code = tokio::task::spawn_blocking(move || worker.wait(bound)).await?;
    Ok(match code {
        Some(code) => code,
        None => {
            tracing::error!("the detached worker did not report within {bound:?}");
            exit::FAILURE
        }
    })
}

async fn check(
    cli: &Cli,
    urls: &[pgbouncer::Url],
    local: &Local,
    upstreams: &[Local],
) -> Result<u8> {
    let password = cli.pgbouncer.password()?;
    let mut ok = pause::preflight(
        urls,
        password.as_deref(),
        &cli.pgbouncer,
        !upstreams.is_empty(),
    )
    .await;
    match local.connect(cli.pgbouncer.connect_timeout).await {
        Ok(client) => match postgres::in_recovery(&client).await {
            Ok(recovery) => tracing::info!(
                postgres = %local.shown,
                role = if recovery { "replica (in recovery)" } else { "primary" },
                "check: local Postgres reachable"
            ),
            Err(err) => {
                ok = false;
                tracing::error!(postgres = %local.shown, "check: local Postgres: {err:#}");
            }
        },
        Err(err) => {
            ok = false;
            tracing::error!("check: local Postgres unreachable: {err:#} (set --postgres or PGHOST/PGPORT/PGUSER)");
        }
    }
    for upstream in upstreams {
        match upstream.connect(cli.pgbouncer.connect_timeout).await {
            Ok(_) => tracing::info!(upstream = %upstream.shown, "check: upstream reachable"),
            Err(err) => {
                ok = false;
                tracing::error!("check: upstream unreachable: {err:#}");
            }
        }
    }
    tracing::info!(
        outcome = if ok { "ready" } else { "not ready" },
        "on-role-change check done"
    );
    Ok(if ok { exit::OK } else { exit::FAILURE })
}
