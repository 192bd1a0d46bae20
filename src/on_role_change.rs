//! The `on-role-change` flow: decide from Patroni's arguments, wait until this member is a
//! writable primary and PgBouncer's route reaches it, RESUME every PgBouncer; in a detached
//! worker (Patroni SIGKILLs a running callback when the next one starts) unless told not to,
//! or unable to fork; and its `--check`.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::time::Instant;

use crate::decision::{self, Action, Callback, ResumePlan};
use crate::fleet::{self, Fleet};
use crate::postgres::{self, Server};
use crate::report::{self, Mode};
use crate::{detach, exit, route, runtime};

/// Where the wait and the RESUME happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    /// In a detached worker that survives Patroni killing this callback (the default).
    Detached,
    /// In this process (`--no-detach`).
    Here,
    /// This process *is* the detached worker: it reports its exit code to the callback.
    Worker,
}

/// Everything `on-role-change` needs, from its command line.
#[derive(Clone)]
pub struct Settings {
    /// ACTION ROLE SCOPE as Patroni passes them; `None` when run by hand.
    pub callback: Option<Callback>,
    /// This member's Postgres.
    pub local: Server,
    /// The addresses PgBouncer itself uses for the cluster.
    pub upstreams: Vec<Server>,
    pub fleet: Fleet,
    pub poll_interval: Duration,
    pub promote_timeout: Duration,
    pub route_timeout: Duration,
    /// How long a failed RESUME is tried again.
    pub resume_retry: Duration,
    pub process: Process,
    pub mode: Mode,
}

/// The flag by which the detached worker is started (the binary is run again with it).
pub const WORKER_FLAG: &str = "--detached-worker";

/// Runs the hook to its end; a worker also reports its exit code to the callback.
pub fn run(settings: &Settings) -> Result<u8> {
    let result = runtime::block_on(run_async(settings)).and_then(|r| r);
    if settings.process == Process::Worker {
        detach::report(match &result {
            Ok(code) => *code,
            Err(err) => exit::for_error(err),
        });
    }
    result
}

async fn run_async(settings: &Settings) -> Result<u8> {
    let started = Instant::now();
    if settings.mode == Mode::Check {
        return check(settings).await;
    }
    let plan = decision::plan_resume(settings.callback.as_ref());
    let (action, reason) = match &plan {
        ResumePlan::AfterPromotion(r) | ResumePlan::Now(r) => (Action::Resume, r.clone()),
        ResumePlan::Nothing(r) => (Action::Skip, r.clone()),
    };
    tracing::info!(event = "decided", decision = ?action, reason = %reason, "decided");
    let summary = |outcome, ready: &Ready, resume_ms, resume, problem| {
        report::on_role_change_summary(report::OnRoleChange {
            decision: action,
            wait_ms: ready.wait_ms,
            route_ms: ready.route_ms,
            resume_ms,
            total_ms: started.elapsed().as_millis() as u64,
            resume,
            outcome,
            problem,
        })
    };
    let nothing = Ready::default();
    if settings.mode == Mode::DryRun {
        report::DryRun {
            action,
            reason: &reason,
            member: None,
            targets: settings.fleet.shown(),
            hook: "on-role-change",
        }
        .print();
        summary("dry run", &nothing, 0, None, None);
        return Ok(exit::OK);
    }
    if action == Action::Skip {
        summary("nothing to do", &nothing, 0, None, None);
        return Ok(exit::OK);
    }

    if settings.process == Process::Detached {
        match detach::spawn_awaitable(&[WORKER_FLAG.into()]) {
            Ok(worker) => return wait_for_worker(settings, worker).await,
            // No fork (pids limit, memory): the RESUME must still happen, so do the work here,
            // and without threads (the same limit refuses them): names are looked up in place.
            Err(err) => {
                crate::names::look_up_in_place();
                tracing::warn!(
                    event = "worker",
                    action = "in-process",
                    "cannot start the detached worker ({err:#}); waiting and resuming in this process"
                )
            }
        }
    }

    let writable = matches!(plan, ResumePlan::AfterPromotion(_));
    let promotion = async {
        if writable {
            tracing::info!(postgres = %settings.local.shown, "waiting for the local Postgres to leave recovery");
            postgres::wait_until_primary(
                &settings.local,
                settings.poll_interval,
                settings.promote_timeout,
            )
            .await?;
        }
        Ok(())
    };
    let route = async {
        settings.upstreams.is_empty()
            || route::wait_for_route(
                &settings.local,
                writable,
                &settings.upstreams,
                settings.poll_interval,
                settings.route_timeout,
            )
            .await
    };
    let ready = match promotion_and_route(promotion, route).await {
        Ok(ready) => ready,
        Err(err) => {
            let problem = format!("{err:#}; PgBouncer NOT resumed (run `on-role-change` by hand once this member is primary)");
            summary("not resumed", &nothing, 0, None, Some(&problem));
            return Ok(exit::FAILURE);
        }
    };
    if !ready.reached && writable {
        if let Some(problem) = still_primary(settings).await {
            let problem =
                format!("the route never reached this member and {problem}; PgBouncer NOT resumed");
            summary("not resumed", &ready, 0, None, Some(&problem));
            return Ok(exit::FAILURE);
        }
    }

    let resume_started = Instant::now();
    let result = fleet::resume_all(&settings.fleet, settings.resume_retry).await?;
    let resume_ms = resume_started.elapsed().as_millis() as u64;
    let done = result.resumed + result.unverified;
    let outcome = match (result.failed, done) {
        (0, 0) if result.left_alone > 0 => "left alone (not the hooks' pause)",
        (0, 0) => "nothing to resume",
        (0, _) => "resumed",
        (_, 0) => "nothing resumed",
        _ => "partly resumed",
    };
    summary(outcome, &ready, resume_ms, Some(&result), None);
    Ok(if result.ok() { exit::OK } else { exit::FAILURE })
}

/// How the wait before RESUME went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// When promotion was confirmed, from the start of the wait.
    pub wait_ms: u64,
    /// When the route check ended, from the start of the wait.
    pub route_ms: u64,
    /// Whether the route reached this member (false: it timed out).
    pub reached: bool,
}

/// Awaits the promotion and the route side by side, so each costs only what it adds; fails
/// as soon as the promotion fails, without waiting for the route.
pub async fn promotion_and_route(
    promotion: impl Future<Output = Result<()>>,
    route: impl Future<Output = bool>,
) -> Result<Ready> {
    let started = Instant::now();
    let ms = || started.elapsed().as_millis() as u64;
    tokio::pin!(promotion, route);
    let (mut wait_ms, mut routed) = (None, None);
    while wait_ms.is_none() || routed.is_none() {
        tokio::select! {
            done = &mut promotion, if wait_ms.is_none() => {
                done?;
                wait_ms = Some(ms());
            }
            reached = &mut route, if routed.is_none() => routed = Some((reached, ms())),
        }
    }
    let (reached, route_ms) = routed.unwrap_or((true, 0));
    Ok(Ready {
        wait_ms: wait_ms.unwrap_or(0),
        route_ms,
        reached,
    })
}

/// Before a RESUME on a route that never reached this member: is it still the primary?
/// `None` when it is; else what is wrong.
async fn still_primary(settings: &Settings) -> Option<String> {
    let asked = async {
        let client = settings
            .local
            .connect(settings.fleet.connect_timeout)
            .await?;
        tokio::time::timeout(
            settings.fleet.command_timeout,
            postgres::in_recovery(&client),
        )
        .await
        .map_err(|_| anyhow!("pg_is_in_recovery() did not answer"))?
    };
    match asked.await {
        Ok(false) => None,
        Ok(true) => Some("it is in recovery again".to_string()),
        Err(err) => Some(format!("it cannot be asked: {err:#}")),
    }
}

/// Hands the wait and the RESUME to a detached worker and waits for its verdict; if this
/// process is killed meanwhile, the worker carries on.
async fn wait_for_worker(settings: &Settings, worker: detach::Worker) -> Result<u8> {
    tracing::info!(
        event = "worker",
        action = "started",
        "waiting and resuming in a detached worker (it survives Patroni killing this callback)"
    );
    let bound = settings.promote_timeout
        + settings.route_timeout
        + settings.resume_retry
        + 2 * (settings.fleet.connect_timeout + settings.fleet.command_timeout)
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

/// `--check`: every PgBouncer, the local Postgres and every upstream reachable.
async fn check(settings: &Settings) -> Result<u8> {
    let connect_timeout = settings.fleet.connect_timeout;
    let mut ok = fleet::preflight(&settings.fleet, !settings.upstreams.is_empty()).await;
    let local = &settings.local;
    match local.connect(connect_timeout).await {
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
    for upstream in &settings.upstreams {
        match upstream.connect(connect_timeout).await {
            Ok(_) => tracing::info!(upstream = %upstream.shown, "check: upstream reachable"),
            Err(err) => {
                ok = false;
                tracing::error!("check: upstream unreachable: {err:#}");
            }
        }
    }
    Ok(report::check_summary("on-role-change", ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn promoted_after(ms: u64, ok: bool) -> Result<()> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if ok {
            Ok(())
        } else {
            Err(anyhow!("still in recovery"))
        }
    }

    async fn routed_after(ms: u64, reached: bool) -> bool {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        reached
    }

    #[tokio::test(start_paused = true)]
    async fn promotion_and_route_are_awaited_side_by_side() {
        // (promotion ms, promoted?, route ms, reached?) → Ready, or None for an error at `at`.
        type Row = (u64, bool, u64, bool, Option<Ready>, u64);
        let ready = |wait_ms, route_ms, reached| {
            Some(Ready {
                wait_ms,
                route_ms,
                reached,
            })
        };
        let table: [Row; 5] = [
            (100, true, 300, true, ready(100, 300, true), 300),
            (300, true, 100, true, ready(300, 100, true), 300),
            (50, true, 2000, false, ready(50, 2000, false), 2000),
            (0, true, 0, true, ready(0, 0, true), 0),
            // Promotion fails at 500 ms: no waiting for a route that would take 30 s.
            (500, false, 30_000, true, None, 500),
        ];
        for (i, (p_ms, promoted, r_ms, reached, want, at)) in table.into_iter().enumerate() {
            let started = Instant::now();
            let got =
                promotion_and_route(promoted_after(p_ms, promoted), routed_after(r_ms, reached))
                    .await;
            assert_eq!(started.elapsed().as_millis() as u64, at, "row {i}");
            match (got, want) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "row {i}"),
                (Err(err), None) => assert!(format!("{err}").contains("recovery"), "row {i}"),
                (got, want) => panic!("row {i}: got {got:?}, want {want:?}"),
            }
        }
    }
}
