//! The pause safety net: a PAUSE that nobody RESUMEs is a full outage, so `before-stop`
//! leaves a detached watcher behind that RESUMEs PgBouncer if it is still paused
//! `--max-pause` after the PAUSE.
//!
//! The watcher polls `SHOW STATE` and leaves as soon as it sees PgBouncer resumed, so it never
//! RESUMEs a later, unrelated pause. PgBouncer < 1.19 has no `SHOW STATE`: there the watcher
//! cannot see a RESUME and sends its RESUME at the deadline regardless (harmless when nothing
//! is paused; the README names the one case where it is not).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::PgBouncerArgs;
use crate::pgbouncer::{self, Admin, Target, Url};

/// Milliseconds since the epoch, the watcher's deadline format (visible in `ps`).
pub fn deadline_after(max_pause: Duration) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now + max_pause).as_millis() as u64
}

fn until(deadline_ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(deadline_ms).saturating_sub(now)
}

const POLL: Duration = Duration::from_millis(500);

/// Runs the watcher to its end. Returns how many PgBouncers it had to RESUME.
pub async fn watch(
    urls: &[Url],
    password: Option<&str>,
    args: &PgBouncerArgs,
    deadline_ms: u64,
) -> usize {
    let (targets, unresolved) = pgbouncer::resolve_all(urls, password, args.connect_timeout).await;
    for problem in unresolved {
        tracing::warn!("safety net: {problem}");
    }
    tracing::info!(
        pid = std::process::id(),
        remaining_ms = until(deadline_ms).as_millis() as u64,
        "safety net armed: will RESUME any PgBouncer still paused at the deadline"
    );
    let outcomes = pgbouncer::each(&targets, |target| {
        let args = args.clone();
        async move { Ok(watch_one(&target, &args, deadline_ms).await) }
    })
    .await;
    outcomes
        .iter()
        .filter(|o| matches!(o.result, Ok(true)))
        .count()
}

/// True when it had to RESUME this target.
async fn watch_one(target: &Target, args: &PgBouncerArgs, deadline_ms: u64) -> bool {
    let max_polls = until(deadline_ms).as_millis() / POLL.as_millis() + 2;
    let mut admin: Option<Admin> = None;
    for _ in 0..max_polls {
        let left = until(deadline_ms);
        if left.is_zero() {
            break;
        }
        if admin.is_none() {
            admin = Admin::connect(target, args.connect_timeout.min(left))
                .await
                .ok();
        }
        if let Some(session) = &admin {
            match tokio::time::timeout(args.command_timeout, session.state()).await {
                Ok(Ok(Some(state))) if !state.paused && !state.suspended => {
                    tracing::info!(pgbouncer = %target.shown, "safety net: PgBouncer was resumed; nothing to do");
                    return false;
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => {
                    // PgBouncer < 1.19: no SHOW STATE, so nothing to watch; asking again
                    // would only fill its log with errors. Wait for the deadline quietly.
                    tracing::info!(pgbouncer = %target.shown, "safety net: this PgBouncer has no SHOW STATE (< 1.19); it will be RESUMEd at the deadline");
                    tokio::time::sleep(until(deadline_ms)).await;
                    admin = None;
                    break;
                }
                _ => admin = None,
            }
        }
        tokio::time::sleep(POLL.min(until(deadline_ms))).await;
    }
    let session = match admin {
        Some(session) => session,
        None => match Admin::connect(target, args.connect_timeout).await {
            Ok(session) => session,
            Err(err) => {
                tracing::error!(pgbouncer = %target.shown, "SAFETY NET: cannot reach PgBouncer to RESUME it: {err:#}");
                return false;
            }
        },
    };
    match tokio::time::timeout(args.command_timeout, session.resume()).await {
        Ok(Ok(pgbouncer::Answer::Done)) => {
            tracing::error!(
                pgbouncer = %target.shown,
                command = "RESUME",
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
