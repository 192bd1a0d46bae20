//! PAUSE and RESUME across every PgBouncer at once, each target's outcome logged as one line.
//!
//! All targets are driven concurrently: with several PgBouncer pods the stall must be the
//! slowest one's, not their sum.

use std::time::Duration;

use anyhow::Result;

use crate::config::PgBouncerArgs;
use crate::pgbouncer::{self, Admin, Answer, Url};

#[derive(Debug, Default)]
pub struct PauseResult {
    /// PAUSE answered, or PgBouncer was already paused.
    pub paused: usize,
    /// PAUSE sent but still waiting for transactions when `--pause-timeout` ran out.
    pub draining: usize,
    pub failed: usize,
}

enum PauseOutcome {
    Paused(Answer),
    Draining,
}

/// Sends PAUSE everywhere and waits at most `pause_timeout` for it to finish.
///
/// A PAUSE still draining when the bound runs out is left pending: PgBouncer stays pausing
/// after the connection closes, Postgres' fast shutdown ends the long transactions, and the
/// queued clients then wait for RESUME on the new primary.
pub async fn pause_all(
    urls: &[Url],
    password: Option<&str>,
    args: &PgBouncerArgs,
    pause_timeout: Duration,
) -> PauseResult {
    let (targets, unresolved) = pgbouncer::resolve_all(urls, password, args.connect_timeout).await;
    let mut result = PauseResult {
        failed: unresolved.len(),
        ..PauseResult::default()
    };
    for problem in unresolved {
        tracing::error!(command = "PAUSE", result = "failed", "{problem}");
    }
    let connect_timeout = args.connect_timeout;
    let outcomes = pgbouncer::each(&targets, |target| async move {
        let admin = Admin::connect(&target, connect_timeout).await?;
        match tokio::time::timeout(pause_timeout, admin.pause()).await {
            Ok(answer) => answer.map(PauseOutcome::Paused),
            Err(_) => Ok(PauseOutcome::Draining),
        }
    })
    .await;
    for outcome in outcomes {
        let ms = outcome.elapsed.as_millis() as u64;
        let pgbouncer = outcome.target.shown.as_str();
        match outcome.result {
            Ok(PauseOutcome::Paused(answer)) => {
                let said = if answer == Answer::Done {
                    "paused"
                } else {
                    "already paused"
                };
                tracing::info!(
                    pgbouncer,
                    command = "PAUSE",
                    result = said,
                    ms,
                    "PAUSE {said}"
                );
                result.paused += 1;
            }
            Ok(PauseOutcome::Draining) => {
                tracing::warn!(
                    pgbouncer,
                    command = "PAUSE",
                    result = "still draining",
                    ms,
                    "PAUSE still waiting for in-flight transactions after {pause_timeout:?}; leaving it pausing (Postgres' shutdown ends them, queued clients wait for RESUME)"
                );
                result.draining += 1;
            }
            Err(err) => {
                tracing::error!(
                    pgbouncer,
                    command = "PAUSE",
                    result = "failed",
                    ms,
                    "{err:#}"
                );
                result.failed += 1;
            }
        }
    }
    result
}

#[derive(Debug, Default)]
pub struct ResumeResult {
    /// RESUME answered (or nothing was paused) and SHOW STATE says not paused.
    pub resumed: usize,
    /// RESUME answered but SHOW STATE is missing (PgBouncer < 1.19).
    pub unverified: usize,
    pub failed: usize,
}

struct ResumeOutcome {
    answer: Answer,
    /// SHOW STATE confirmed it; false where PgBouncer has no SHOW STATE.
    verified: bool,
}

/// Sends RESUME everywhere, then checks with SHOW STATE that no PgBouncer is still paused.
pub async fn resume_all(
    urls: &[Url],
    password: Option<&str>,
    args: &PgBouncerArgs,
) -> ResumeResult {
    let (targets, unresolved) = pgbouncer::resolve_all(urls, password, args.connect_timeout).await;
    let mut result = ResumeResult {
        failed: unresolved.len(),
        ..ResumeResult::default()
    };
    for problem in unresolved {
        tracing::error!(command = "RESUME", result = "failed", "{problem}");
    }
    let (connect_timeout, command_timeout) = (args.connect_timeout, args.command_timeout);
    let outcomes = pgbouncer::each(&targets, |target| async move {
        let admin = Admin::connect(&target, connect_timeout).await?;
        let bounded = |what: &'static str| {
            move |_| anyhow::anyhow!("{what} got no answer within {command_timeout:?}")
        };
        let answer = tokio::time::timeout(command_timeout, admin.resume())
            .await
            .map_err(bounded("RESUME"))??;
        match tokio::time::timeout(command_timeout, admin.state())
            .await
            .map_err(bounded("SHOW STATE"))??
        {
            Some(state) if state.paused || state.suspended => {
                anyhow::bail!(
                    "RESUME answered but SHOW STATE still says paused={} suspended={}",
                    state.paused,
                    state.suspended
                )
            }
            state => Ok(ResumeOutcome {
                answer,
                verified: state.is_some(),
            }),
        }
    })
    .await;
    for outcome in outcomes {
        let ms = outcome.elapsed.as_millis() as u64;
        let pgbouncer = outcome.target.shown.as_str();
        match outcome.result {
            Ok(ResumeOutcome { answer, verified }) => {
                let said = if answer == Answer::Done {
                    "resumed"
                } else {
                    "was not paused"
                };
                let proof = if verified {
                    result.resumed += 1;
                    "SHOW STATE says not paused"
                } else {
                    result.unverified += 1;
                    "SHOW STATE check skipped: it needs PgBouncer >= 1.19 (the RESUME answer is the proof)"
                };
                tracing::info!(
                    pgbouncer,
                    command = "RESUME",
                    result = said,
                    ms,
                    "RESUME {said}; {proof}"
                );
            }
            Err(err) => {
                tracing::error!(
                    pgbouncer,
                    command = "RESUME",
                    result = "failed",
                    ms,
                    "{err:#}"
                );
                result.failed += 1;
            }
        }
    }
    result
}

/// `--check`: reach every target and report what would stop a real switchover.
pub async fn preflight(urls: &[Url], password: Option<&str>, args: &PgBouncerArgs) -> bool {
    if urls.is_empty() {
        tracing::error!("check: no PgBouncer configured: set --pgbouncer or PGBOUNCER_URLS");
        return false;
    }
    let (targets, unresolved) = pgbouncer::resolve_all(urls, password, args.connect_timeout).await;
    let mut ok = unresolved.is_empty();
    for problem in unresolved {
        tracing::error!("check: {problem}");
    }
    let (connect_timeout, command_timeout) = (args.connect_timeout, args.command_timeout);
    let outcomes = pgbouncer::each(&targets, |target| async move {
        let admin = Admin::connect(&target, connect_timeout).await?;
        let report = tokio::time::timeout(command_timeout, inspect(&admin))
            .await
            .map_err(|_| {
                anyhow::anyhow!("admin commands got no answer within {command_timeout:?}")
            })??;
        Ok(report)
    })
    .await;
    for outcome in outcomes {
        let pgbouncer = outcome.target.shown.as_str();
        match outcome.result {
            Ok(report) => {
                let good = report.problems.is_empty();
                ok &= good;
                tracing::info!(
                    pgbouncer,
                    version = %report.version,
                    pool_mode = %report.pool_mode,
                    show_state = report.show_state,
                    admin = true,
                    "check: reachable, authenticated as an admin user"
                );
                for warning in &report.warnings {
                    tracing::warn!(pgbouncer, "check: {warning}");
                }
                for problem in &report.problems {
                    tracing::error!(pgbouncer, "check: {problem}");
                }
            }
            Err(err) => {
                ok = false;
                tracing::error!(pgbouncer, "check: {err:#}");
            }
        }
    }
    ok
}

struct Inspection {
    version: String,
    pool_mode: String,
    show_state: bool,
    warnings: Vec<String>,
    problems: Vec<String>,
}

async fn inspect(admin: &Admin) -> Result<Inspection> {
    let version = admin.version().await?;
    let config = admin.config().await?;
    let setting = |key: &str| {
        config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let pool_mode = setting("pool_mode");
    let state = admin.state().await?;
    let mut warnings = Vec::new();
    let mut problems = Vec::new();
    if let Some(state) = state {
        if state.paused || state.suspended {
            problems.push(format!(
                "PgBouncer is paused={} suspended={} right now: RESUME it first",
                state.paused, state.suspended
            ));
        }
    } else {
        warnings.push(
            "SHOW STATE needs PgBouncer >= 1.19: RESUME will be trusted without verification"
                .into(),
        );
    }
    if pool_mode != "transaction" {
        problems.push(format!(
            "pool_mode is {pool_mode:?}, not transaction: PAUSE would wait for every client to disconnect"
        ));
    }
    if !setting("auth_query").is_empty() && setting("auth_file").is_empty() {
        warnings.push(
            "auth_query is set and there is no auth_file: during a PAUSE, auth_query logins hang, so the admin user must be in auth_file".into(),
        );
    }
    Ok(Inspection {
        version,
        pool_mode,
        show_state: state.is_some(),
        warnings,
        problems,
    })
}
