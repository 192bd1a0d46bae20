//! The watchdog beside PgBouncer (`on-role-change --watch`): the one RESUME that does not
//! depend on any Patroni member's pod.
//!
//! Every process in a member's pod dies with it: the before-stop safety net, the detached
//! on-role-change worker. And after a pod start StackGres runs Patroni without hooks for a
//! while. So a long-running watchdog runs in PgBouncer's own pod and RESUMEs a pause
//!
//! * as soon as PgBouncer's route (`--upstream`, checked from PgBouncer's own network
//!   namespace, so it is exactly what PgBouncer's next login sees) reaches a *writable
//!   primary other than the one it reached before the pause* (system identifier and
//!   postmaster start time): the switchover or restart is over; never while the old
//!   primary still answers, so never while it drains;
//! * in any case once the pause is older than `--max-pause`.
//!
//! PgBouncer < 1.19 has no `SHOW STATE`: there the watchdog cannot see a pause, so it only
//! RESUMEs when the route reaches a new primary (a RESUME of a PgBouncer that is not paused is
//! harmless).

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use tokio_postgres::Client;

use crate::fleet::{self, Fleet};
use crate::pgbouncer::{Admin, State, Target};
use crate::postgres::Server;
use crate::route::{self, Identity};

/// Everything the watchdog needs, from its command line.
#[derive(Clone)]
pub struct Settings {
    pub fleet: Fleet,
    /// PgBouncer's own route to the primary (its `[databases]` host and port).
    pub upstreams: Vec<Server>,
    pub max_pause: Duration,
    /// How often to look while PgBouncer is paused (and always on PgBouncer < 1.19).
    pub interval: Duration,
    /// Stop after this long; `None`: until SIGTERM or SIGINT.
    pub run_for: Option<Duration>,
}

/// While PgBouncer is not paused, the route is sampled this often (a login each time).
const CALM_SAMPLE: Duration = Duration::from_secs(5);

/// What the watchdog remembers between looks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// When it first saw the current pause.
    pub paused_since: Option<Instant>,
    /// The writable primary the route reached before the pause (the one that drains).
    pub before: Option<Identity>,
}

/// One look: PgBouncer's state (`None`: it has no SHOW STATE) and the writable primary the
/// route reaches now (`None`: none answered writable, or it was not asked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Look {
    pub state: Option<State>,
    pub primary: Option<Identity>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// RESUME: the route reaches a new primary.
    NewPrimary,
    /// RESUME: paused longer than --max-pause.
    TooLong,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Wait => "wait",
            Verdict::NewPrimary => "new-primary",
            Verdict::TooLong => "max-pause",
        }
    }
}

/// The watchdog's decision, as a pure function of what it remembers and sees.
pub fn judge(memory: &mut Memory, look: &Look, now: Instant, max_pause: Duration) -> Verdict {
    let moved = |before: &Option<Identity>| match (before, &look.primary) {
        (Some(before), Some(now)) => before != now,
        _ => false,
    };
    match look.state {
        Some(state) if !state.paused && !state.suspended => {
            memory.paused_since = None;
            if look.primary.is_some() {
                memory.before = look.primary.clone();
            }
            Verdict::Wait
        }
        Some(_) => {
            let since = *memory.paused_since.get_or_insert(now);
            if memory.before.is_none() {
                // No sample from before the pause (just started, or the route did not answer
                // then): the first primary seen while paused is the one that drains.
                memory.before = look.primary.clone();
                return if now.duration_since(since) >= max_pause {
                    Verdict::TooLong
                } else {
                    Verdict::Wait
                };
            }
            if moved(&memory.before) {
                Verdict::NewPrimary
            } else if now.duration_since(since) >= max_pause {
                Verdict::TooLong
            } else {
                Verdict::Wait
            }
        }
        // No SHOW STATE: a new primary is the only sign; RESUME then, and remember it.
        None => {
            let verdict = if moved(&memory.before) {
                Verdict::NewPrimary
            } else {
                Verdict::Wait
            };
            if look.primary.is_some() {
                memory.before = look.primary.clone();
            }
            verdict
        }
    }
}

/// Runs the watchdog until SIGTERM/SIGINT or `run_for`.
pub fn run(settings: &Settings) -> Result<u8> {
    crate::runtime::block_on(async {
        tokio::select! {
            result = watch(settings) => result,
            _ = shutdown_signal() => {
                tracing::info!(event = "watchdog", action = "stop", "watchdog stopped by signal");
                Ok(())
            }
        }
    })??;
    Ok(crate::exit::OK)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

async fn watch(settings: &Settings) -> Result<()> {
    let started = Instant::now();
    let interval = settings.interval.max(Duration::from_millis(10));
    let rounds = settings
        .run_for
        .map(|d| d.as_millis() / interval.as_millis() + 1);
    tracing::info!(
        event = "watchdog",
        action = "start",
        pgbouncers = settings.fleet.urls.len(),
        upstreams = settings.upstreams.len(),
        max_pause_ms = settings.max_pause.as_millis() as u64,
        "watchdog watching PgBouncer"
    );
    let mut eyes = Eyes::default();
    let mut memory = Memory::default();
    let mut last_sample: Option<Instant> = None;
    let mut round: u128 = 0;
    loop {
        round += 1;
        if rounds.is_some_and(|max| round > max) {
            return Ok(());
        }
        let state = eyes.pgbouncer_state(&settings.fleet).await;
        let paused = state.map_or(true, |s| s.paused || s.suspended);
        let sample_due = paused || last_sample.map_or(true, |at| at.elapsed() >= CALM_SAMPLE);
        let primary = if sample_due && !settings.upstreams.is_empty() {
            last_sample = Some(Instant::now());
            eyes.writable_primary(&settings.upstreams).await
        } else {
            None
        };
        let look = Look { state, primary };
        tracing::debug!(
            event = "watchdog",
            action = "look",
            ?look,
            "watchdog looked"
        );
        let now = Instant::now();
        let paused_since = memory.paused_since;
        let verdict = judge(&mut memory, &look, now, settings.max_pause);
        if verdict != Verdict::Wait {
            let paused_ms = paused_since.map_or(0, |s| now.duration_since(s).as_millis() as u64);
            let result = fleet::resume_all(&settings.fleet, Duration::ZERO).await;
            let resumed = result.as_ref().map_or(0, |r| r.resumed + r.unverified);
            tracing::warn!(
                event = "watchdog",
                action = "resume",
                reason = verdict.as_str(),
                paused_ms,
                resumed,
                uptime_ms = started.elapsed().as_millis() as u64,
                "WATCHDOG: RESUMED PgBouncer ({})",
                match verdict {
                    Verdict::NewPrimary => "its route reaches a new primary",
                    _ => "paused longer than --max-pause",
                }
            );
            memory.paused_since = None;
        }
        tokio::time::sleep(interval).await;
    }
}

/// The watchdog's connections, kept open between looks: a long-running process must not
/// log in four times a second (each login is a line in PgBouncer's and Postgres' logs).
#[derive(Default)]
struct Eyes {
    /// Each PgBouncer, with its admin session while it works.
    admins: Vec<(Target, Option<Admin>)>,
    /// A session to the primary the route reached. It stays on that server: while the old
    /// primary drains it still answers from there; once that server stops, the session
    /// breaks and the next one is opened through the route, to whichever server it reaches.
    upstream: Option<Client>,
}

impl Eyes {
    /// SHOW STATE, paused if any PgBouncer is (one paused PgBouncer stalls its clients);
    /// `None` when it has no SHOW STATE (< 1.19) or none answered.
    async fn pgbouncer_state(&mut self, fleet: &Fleet) -> Option<State> {
        if self.admins.is_empty() {
            let password = fleet.password.read().ok()?;
            let (targets, _) = fleet
                .resolve(password.as_deref(), fleet.connect_timeout)
                .await;
            self.admins = targets.into_iter().map(|t| (t, None)).collect();
        }
        let mut states = Vec::new();
        for (target, admin) in &mut self.admins {
            if admin.is_none() {
                *admin = Admin::connect(target, fleet.connect_timeout).await.ok();
            }
            let Some(session) = admin else { continue };
            match tokio::time::timeout(fleet.command_timeout, session.state()).await {
                Ok(Ok(Some(state))) => states.push(state),
                Ok(Ok(None)) => {}
                _ => *admin = None,
            }
        }
        states
            .iter()
            .find(|s| s.paused || s.suspended)
            .or(states.first())
            .copied()
    }

    /// The writable primary the route reaches, if it is writable.
    async fn writable_primary(&mut self, upstreams: &[Server]) -> Option<Identity> {
        const BOUND: Duration = Duration::from_secs(2);
        if let Some(client) = &self.upstream {
            match tokio::time::timeout(BOUND, route::identity(client)).await {
                Ok(Ok(identity)) => return (!identity.in_recovery).then_some(identity),
                _ => self.upstream = None,
            }
        }
        for upstream in upstreams {
            if let Ok((client, identity)) = route::identify(upstream, BOUND).await {
                self.upstream = Some(client);
                return (!identity.in_recovery).then_some(identity);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(started: &str, in_recovery: bool) -> Option<Identity> {
        Some(Identity {
            system_identifier: "7".into(),
            started: started.into(),
            in_recovery,
        })
    }

    fn state(paused: bool) -> Option<State> {
        Some(State {
            paused,
            suspended: false,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_resumes_only_after_the_primary_changed_or_too_long() {
        let max = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = Memory::default();
        // Calm: remembers the primary A.
        let look = |st, p| Look {
            state: st,
            primary: p,
        };
        assert_eq!(
            judge(&mut m, &look(state(false), id("A", false)), at(0), max),
            Verdict::Wait
        );
        assert_eq!(m.before, id("A", false));
        // Paused while A drains: A still answers, so wait.
        assert_eq!(
            judge(&mut m, &look(state(true), id("A", false)), at(1), max),
            Verdict::Wait
        );
        // A gone, route to nothing yet: wait.
        assert_eq!(
            judge(&mut m, &look(state(true), None), at(2), max),
            Verdict::Wait
        );
        // B answers, but still in recovery (not promoted): not writable, so not a primary.
        assert_eq!(
            judge(&mut m, &look(state(true), None), at(3), max),
            Verdict::Wait
        );
        // B writable: RESUME.
        assert_eq!(
            judge(&mut m, &look(state(true), id("B", false)), at(4), max),
            Verdict::NewPrimary
        );
        // Resumed: B is now the one to compare with.
        assert_eq!(
            judge(&mut m, &look(state(false), id("B", false)), at(5), max),
            Verdict::Wait
        );
        assert_eq!(m.before, id("B", false));
        assert_eq!(m.paused_since, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_without_a_new_primary_ends_at_max_pause_counted_from_its_start() {
        let max = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = Memory::default();
        let look = |st, p| Look {
            state: st,
            primary: p,
        };
        judge(&mut m, &look(state(false), id("A", false)), at(0), max);
        // An operator's pause at 100 s, same primary all along.
        assert_eq!(
            judge(&mut m, &look(state(true), id("A", false)), at(100), max),
            Verdict::Wait
        );
        assert_eq!(
            judge(&mut m, &look(state(true), id("A", false)), at(159), max),
            Verdict::Wait
        );
        assert_eq!(
            judge(&mut m, &look(state(true), id("A", false)), at(160), max),
            Verdict::TooLong
        );
        // A later pause starts its own clock.
        judge(&mut m, &look(state(false), id("A", false)), at(161), max);
        assert_eq!(
            judge(&mut m, &look(state(true), None), at(170), max),
            Verdict::Wait
        );
        assert_eq!(
            judge(&mut m, &look(state(true), None), at(229), max),
            Verdict::Wait
        );
        assert_eq!(
            judge(&mut m, &look(state(true), None), at(230), max),
            Verdict::TooLong
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_start_or_no_show_state() {
        let max = Duration::from_secs(60);
        let t0 = Instant::now();
        let look = |st, p| Look {
            state: st,
            primary: p,
        };
        // No sample before the pause: the first primary seen while paused is the baseline.
        let mut m = Memory::default();
        let wait = |m: &mut Memory, p| judge(m, &look(state(true), p), t0, max);
        assert_eq!(wait(&mut m, None), Verdict::Wait);
        assert_eq!(wait(&mut m, id("A", false)), Verdict::Wait);
        assert_eq!(wait(&mut m, id("A", false)), Verdict::Wait);
        assert_eq!(wait(&mut m, id("B", false)), Verdict::NewPrimary);
        // Started long after the pause, already on the new primary: only max-pause ends it.
        let mut m = Memory::default();
        assert_eq!(wait(&mut m, id("B", false)), Verdict::Wait);
        assert_eq!(
            judge(&mut m, &look(state(true), id("B", false)), t0 + max, max),
            Verdict::TooLong
        );
        // PgBouncer < 1.19: only a change of primary triggers a RESUME, once.
        let mut m = Memory::default();
        assert_eq!(
            judge(&mut m, &look(None, id("A", false)), t0, max),
            Verdict::Wait
        );
        assert_eq!(
            judge(&mut m, &look(None, id("A", false)), t0 + max * 10, max),
            Verdict::Wait
        );
        assert_eq!(judge(&mut m, &look(None, None), t0, max), Verdict::Wait);
        assert_eq!(
            judge(&mut m, &look(None, id("B", false)), t0, max),
            Verdict::NewPrimary
        );
        assert_eq!(
            judge(&mut m, &look(None, id("B", false)), t0, max),
            Verdict::Wait
        );
        // A restart in place is a new postmaster: a new primary for this purpose.
        assert_eq!(
            judge(&mut m, &look(None, id("B2", false)), t0, max),
            Verdict::NewPrimary
        );
    }
}
