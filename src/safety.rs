//! The pause safety net: the detached process `before-stop` leaves behind after a PAUSE.
//!
//! It does two jobs for the pause it was started for:
//!
//! * it **holds the pause's mark** ([`crate::owner`]): one admin session per PgBouncer named
//!   `pph-pause/<id>`, opened before `before-stop` closes the sessions that sent PAUSE, so the
//!   pause is never seen unmarked while it lasts; it tells `before-stop` so with a line on its
//!   stdout;
//! * if the pause is still on `--max-pause` after it began (on the monotonic clock, so a
//!   step of the wall clock cannot move it), it **RESUMEs it**, retrying until SHOW STATE
//!   confirms, but only while the pause is still the hooks' own: never when an operator holds
//!   it (`pph-hold`), never when a later hooks' pause has begun.
//!
//! It polls `SHOW STATE` and leaves, closing its mark, as soon as PgBouncer is not paused.
//! PgBouncer < 1.19 has no `SHOW STATE`: there it holds the mark until the deadline and then
//! RESUMEs blindly (README, "Known limits"). With `--max-pause 0` it only holds the mark, for
//! at most [`HOLD_LIMIT`].

use std::time::Duration;

use tokio::time::Instant;

use crate::fleet::{self, Fleet, ResumeOutcome};
use crate::owner::{self, Owner};
use crate::pgbouncer::{Admin, Target};

const POLL: Duration = Duration::from_millis(250);
/// With no RESUME deadline, the mark is held at most this long.
pub const HOLD_LIMIT: Duration = Duration::from_secs(600);
/// How long the deadline's RESUME is tried again.
const RESUME_RETRY: Duration = Duration::from_secs(30);
/// The first connection to each PgBouncer, before the net says it holds the mark.
const HANDOVER: Duration = Duration::from_secs(1);

/// Holds pause `id`'s mark on every PgBouncer, calls `holding` once every reachable one is
/// marked, and RESUMEs what is still in this pause at `max_pause` (zero: never). Returns how
/// many PgBouncers it had to RESUME.
pub async fn watch(fleet: &Fleet, max_pause: Duration, id: &str, holding: impl FnOnce()) -> usize {
    let started = Instant::now();
    let resumes = !max_pause.is_zero();
    let deadline = started + if resumes { max_pause } else { HOLD_LIMIT };
    let (connect_timeout, command_timeout) = (fleet.connect_timeout, fleet.command_timeout);
    let mark = owner::pause_mark(id);
    // before-stop waits for `holding` before the stop goes on: a PgBouncer that does not answer
    // at once (a deleted pod's address hangs) is tried again in its watch, not waited for here.
    let first_try = connect_timeout.min(HANDOVER);
    let driven = fleet
        .drive(first_try, |target| {
            let marked = target.named(&mark);
            async move {
                let admin = Admin::connect(&marked, first_try).await;
                Ok((marked, admin))
            }
        })
        .await;
    let (outcomes, unresolved) = match driven {
        Ok(driven) => driven,
        Err(err) => {
            holding();
            tracing::error!(
                event = "safety-net",
                action = "failed",
                "SAFETY NET: {err:#}"
            );
            return 0;
        }
    };
    for problem in unresolved {
        tracing::warn!(event = "safety-net", "safety net: {problem}");
    }
    let mut sessions = Vec::new();
    for outcome in outcomes {
        let Ok((target, admin)) = outcome.result else {
            continue;
        };
        if let Err(err) = &admin {
            tracing::warn!(pgbouncer = %target.shown, event = "safety-net", "safety net cannot hold the pause's mark yet: {err:#}");
        }
        sessions.push((target, admin.ok()));
    }
    holding();
    tracing::info!(
        event = "safety-net",
        action = "armed",
        pid = std::process::id(),
        pause_id = id,
        remaining_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as u64,
        resumes,
        "safety net holds the pause's mark{}",
        if resumes {
            " and will RESUME this pause if it is still on at the deadline"
        } else {
            " (--max-pause 0: it will not RESUME)"
        }
    );
    let mut set = tokio::task::JoinSet::new();
    for (target, admin) in sessions {
        let id = id.to_string();
        set.spawn(async move {
            watch_one(
                &target,
                admin,
                &id,
                deadline,
                resumes,
                connect_timeout,
                command_timeout,
            )
            .await
        });
    }
    let mut resumed = 0;
    while let Some(joined) = set.join_next().await {
        resumed += usize::from(joined.unwrap_or(false));
    }
    resumed
}

/// True when it had to RESUME this target.
async fn watch_one(
    target: &Target,
    mut admin: Option<Admin>,
    id: &str,
    deadline: Instant,
    resumes: bool,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> bool {
    let pgbouncer = target.shown.as_str();
    let left = || deadline.saturating_duration_since(Instant::now());
    let max_polls = left().as_millis() / POLL.as_millis() + 2;
    let mut no_show_state = false;
    for _ in 0..max_polls {
        if left().is_zero() {
            break;
        }
        if admin.is_none() {
            match Admin::connect(target, connect_timeout.min(left())).await {
                Ok(session) => admin = Some(session),
                // Nothing listens there any more: that PgBouncer is gone, and its pause with
                // it (a PgBouncer starts unpaused). A silent address is tried until the end.
                Err(err) if format!("{err:#}").contains("refused") => {
                    tracing::info!(pgbouncer, event = "safety-net", action = "gone", "safety net: PgBouncer refuses connections (it is not running, so not paused): {err:#}");
                    return false;
                }
                Err(_) => {}
            }
        }
        if let Some(session) = &admin {
            match tokio::time::timeout(command_timeout, session.state()).await {
                Ok(Ok(Some(state))) if !state.paused && !state.suspended => {
                    tracing::info!(
                        pgbouncer,
                        event = "safety-net",
                        action = "leave",
                        "safety net: PgBouncer was resumed; nothing to do"
                    );
                    return false;
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => {
                    // PgBouncer < 1.19: no SHOW STATE, so nothing to watch; asking again
                    // would only fill its log with errors. Hold the mark to the deadline.
                    tracing::info!(pgbouncer, "safety net: this PgBouncer has no SHOW STATE (< 1.19); the mark is held to the deadline");
                    no_show_state = true;
                    // Until the deadline, unless PgBouncer goes away (then its pause is gone).
                    while !left().is_zero() && !session.is_closed() {
                        tokio::time::sleep(POLL.min(left())).await;
                    }
                    if !session.is_closed() {
                        break;
                    }
                    tracing::info!(pgbouncer, event = "safety-net", action = "gone", "safety net: PgBouncer closed the session (it stopped, and its pause with it)");
                    return false;
                }
                _ => admin = None,
            }
        }
        tokio::time::sleep(POLL.min(left())).await;
    }
    if !resumes {
        tracing::info!(
            pgbouncer,
            event = "safety-net",
            action = "expired",
            "safety net: mark released after {HOLD_LIMIT:?} (--max-pause 0: no RESUME)"
        );
        return false;
    }
    resume_at_deadline(
        target,
        admin,
        id,
        no_show_state,
        connect_timeout,
        command_timeout,
    )
    .await
}

/// The deadline's RESUME: only of this very pause, retried until SHOW STATE confirms.
async fn resume_at_deadline(
    target: &Target,
    mut admin: Option<Admin>,
    id: &str,
    no_show_state: bool,
    connect_timeout: Duration,
    command_timeout: Duration,
) -> bool {
    let pgbouncer = target.shown.as_str();
    let until = Instant::now() + RESUME_RETRY;
    let mut backoff = Duration::from_millis(250);
    loop {
        let session = match admin.take() {
            Some(session) => Ok(session),
            None => Admin::connect(target, connect_timeout).await,
        };
        let result = match &session {
            Ok(session) => match tokio::time::timeout(command_timeout, session.owner()).await {
                // Another hooks' pause has begun: its own net and RESUME deal with it.
                Ok(Ok(Owner::Hooks(ids))) if ids.iter().any(|i| i != id) => {
                    Ok(ResumeOutcome::LeftAlone(format!(
                        "a later hooks' pause ({}) is on",
                        ids.join(",")
                    )))
                }
                Ok(Ok(_)) => {
                    let mut first = Some(vec![id.to_string()]);
                    fleet::resume_owned(session, command_timeout, &mut first, no_show_state).await
                }
                Ok(Err(err)) => Err(err),
                Err(_) => Err(anyhow::anyhow!("SHOW CLIENTS got no answer")),
            },
            Err(err) => Err(anyhow::anyhow!("{err:#}")),
        };
        match result {
            Ok(ResumeOutcome::Resumed { .. }) => {
                tracing::error!(
                    pgbouncer,
                    event = "safety-net",
                    action = "resume",
                    pause_id = id,
                    "SAFETY NET: PgBouncer was still in this pause at the --max-pause deadline; RESUMED it. on-role-change never resumed it: check the new primary's Patroni log"
                );
                return true;
            }
            Ok(ResumeOutcome::NotPaused) => {
                tracing::info!(
                    pgbouncer,
                    event = "safety-net",
                    action = "leave",
                    "safety net: PgBouncer was not paused at the deadline"
                );
                return false;
            }
            Ok(ResumeOutcome::LeftAlone(why)) => {
                tracing::warn!(
                    pgbouncer,
                    event = "safety-net",
                    action = "left-alone",
                    pause_id = id,
                    "safety net: not resumed at the deadline: {why}"
                );
                return false;
            }
            Err(err) if Instant::now() + backoff > until => {
                tracing::error!(
                    pgbouncer,
                    event = "safety-net",
                    action = "failed",
                    "SAFETY NET: RESUME failed, giving up: {err:#}"
                );
                return false;
            }
            Err(err) => {
                tracing::warn!(
                    pgbouncer,
                    event = "safety-net",
                    action = "retry",
                    "safety net: RESUME failed, trying again in {backoff:?}: {err:#}"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
