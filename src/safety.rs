//! The pause safety net: a PAUSE that nobody RESUMEs is a full outage, so `before-stop`
//! leaves a detached watcher behind that RESUMEs PgBouncer if it is still paused
//! `--max-pause` after the PAUSE.
//!
//! The watcher polls `SHOW STATE` and leaves as soon as it sees PgBouncer resumed, so it never
//! RESUMEs a later, unrelated pause. PgBouncer < 1.19 has no `SHOW STATE`: there the watcher
//! cannot see a RESUME and sends its RESUME at the deadline regardless (harmless when nothing
//! is paused; the README names the one case where it is not). Its deadline is on the
//! monotonic clock, counted from its own start: a step of the wall clock cannot move it.

use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::Fleet;
use crate::pgbouncer::{self, Admin, Target};

const POLL: Duration = Duration::from_millis(500);

/// Runs the watcher for `max_pause`. Returns how many PgBouncers it had to RESUME.
pub async fn watch(fleet: &Fleet, max_pause: Duration) -> usize {
    let deadline = Instant::now() + max_pause;
    tracing::info!(
        event = "safety-net",
        action = "armed",
        pid = std::process::id(),
        remaining_ms = max_pause.as_millis() as u64,
        "safety net armed: will RESUME any PgBouncer still paused at the deadline"
    );
    let (connect_timeout, command_timeout) = (fleet.connect_timeout, fleet.command_timeout);
    let driven = fleet
        .drive(connect_timeout, |target| async move {
            Ok(watch_one(&target, connect_timeout, command_timeout, deadline).await)
        })
        .await;
    let (outcomes, unresolved) = match driven {
        Ok(driven) => driven,
        Err(err) => {
            tracing::error!("SAFETY NET: {err:#}");
            return 0;
        }
    };
    for problem in unresolved {
        tracing::warn!("safety net: {problem}");
    }
    outcomes
        .iter()
        .filter(|o| matches!(o.result, Ok(true)))
        .count()
}

/// True when it had to RESUME this target.
async fn watch_one(
    target: &Target,
    connect_timeout: Duration,
    command_timeout: Duration,
    deadline: Instant,
) -> bool {
    let left = || deadline.saturating_duration_since(Instant::now());
    let max_polls = left().as_millis() / POLL.as_millis() + 2;
    let mut admin: Option<Admin> = None;
    for _ in 0..max_polls {
        if left().is_zero() {
            break;
        }
        if admin.is_none() {
            admin = Admin::connect(target, connect_timeout.min(left()))
                .await
                .ok();
        }
        if let Some(session) = &admin {
            match tokio::time::timeout(command_timeout, session.state()).await {
                Ok(Ok(Some(state))) if !state.paused && !state.suspended => {
                    tracing::info!(pgbouncer = %target.shown, event = "safety-net", action = "leave", "safety net: PgBouncer was resumed; nothing to do");
                    return false;
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => {
                    // PgBouncer < 1.19: no SHOW STATE, so nothing to watch; asking again
                    // would only fill its log with errors. Wait for the deadline quietly.
                    tracing::info!(pgbouncer = %target.shown, "safety net: this PgBouncer has no SHOW STATE (< 1.19); it will be RESUMEd at the deadline");
                    tokio::time::sleep_until(deadline).await;
                    admin = None;
                    break;
                }
                _ => admin = None,
            }
        }
        tokio::time::sleep(POLL.min(left())).await;
    }
    let session = match admin {
        Some(session) => session,
        None => match Admin::connect(target, connect_timeout).await {
            Ok(session) => session,
            Err(err) => {
                tracing::error!(pgbouncer = %target.shown, "SAFETY NET: cannot reach PgBouncer to RESUME it: {err:#}");
                return false;
            }
        },
    };
    match tokio::time::timeout(command_timeout, session.resume()).await {
        Ok(Ok(pgbouncer::Answer::Done)) => {
            tracing::error!(
                pgbouncer = %target.shown,
                event = "safety-net",
                action = "resume",
                "SAFETY NET: PgBouncer was still paused at the --max-pause deadline; RESUMED it. on-role-change never resumed it: check the new primary's Patroni log"
            );
            true
        }
        Ok(Ok(pgbouncer::Answer::AlreadyThere)) => {
            tracing::info!(pgbouncer = %target.shown, "safety net: PgBouncer was not paused at the deadline");
            false
        }
        Ok(Err(err)) => {
            tracing::error!(pgbouncer = %target.shown, "SAFETY NET: RESUME failed: {err:#}");
            false
        }
        Err(_) => {
            tracing::error!(pgbouncer = %target.shown, "SAFETY NET: RESUME got no answer");
            false
        }
    }
}
