//! The watchdog beside PgBouncer (`pgbouncer-watchdog`): the one RESUME that does not depend
//! on any Patroni member's pod, and only ever of a pause the hooks made.
//!
//! Every process in a member's pod dies with it: the before-stop safety net, the detached
//! on-role-change worker. So a long-running watchdog runs in PgBouncer's own pod. For each
//! PgBouncer it looks every `--interval`:
//!
//! * **whose pause** ([`crate::owner`]): when it first sees a pause (SHOW STATE), it reads the
//!   marks in SHOW CLIENTS. A hooks' pause (`pph-pause/<id>`) is recorded as such, and the
//!   watchdog holds the same mark itself from then on, so ownership outlives the pod that
//!   paused. A pause nobody marked is somebody else's: logged, counted, never ended. While an
//!   operator's `pph-hold` session is connected, nothing is ended.
//! * **when to end a hooks' pause**: as soon as PgBouncer's route (`--upstream`, checked from
//!   PgBouncer's own network) reaches a writable primary of the same cluster other than the
//!   one it reached when that pause began (postmaster start time; never while the old
//!   primary still answers, so never while it drains), and in any case once the pause is
//!   older than `--max-pause`; the RESUME is retried with backoff until SHOW STATE confirms,
//!   and only while the pause is the same one.
//!
//! [`judge`] is the decision, a pure function; the rest is I/O. What it knows is published
//! for `/metrics`, `/status` and the probes ([`crate::watchdog_http`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use tokio::time::Instant;
use tokio_postgres::Client;

use crate::fleet::{self, Fleet, ResumeOutcome};
use crate::owner::{self, Owner};
use crate::pgbouncer::{Admin, State, Target};
use crate::postgres::Server;
use crate::route::{self, Identity};
use crate::watchdog_http::{self, Shared, Status, TargetStatus};

/// Everything the watchdog needs, from its command line.
#[derive(Clone)]
pub struct Settings {
    pub fleet: Fleet,
    /// PgBouncer's own route to the primary (its `[databases]` host and port).
    pub upstreams: Vec<Server>,
    pub max_pause: Duration,
    /// How often to look.
    pub interval: Duration,
    /// Bounds each step of a look (connect, SHOW STATE, SHOW CLIENTS, the route's answer).
    pub look_timeout: Duration,
    /// The cluster's system identifier; `None`: the first writable primary's.
    pub system_identifier: Option<String>,
    /// Where to serve `/metrics`, `/status`, `/healthz`, `/readyz`.
    pub listen: Option<std::net::SocketAddr>,
    /// Stop after this long; `None`: until SIGTERM or SIGINT.
    pub run_for: Option<Duration>,
    /// Check once what a watchdog needs and exit (0 ready, 1 not).
    pub check: bool,
}

/// While no pause is on, the route is sampled this often (on a kept session: no login).
const CALM_SAMPLE: Duration = Duration::from_secs(1);
/// Names are resolved again this often (a headless Service's pods come and go).
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------- the decision

/// A pause as the watchdog saw it begin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    /// The look that first saw it (SHOW STATE confirmed it).
    pub since: Instant,
    /// The same, on the wall clock, for people.
    pub since_wall: SystemTime,
    pub owner: Owner,
    /// The writable primary the route reached when it began (the one that drains).
    pub before: Option<Identity>,
    /// No RESUME before this (backoff after a failed one).
    pub next_try: Option<Instant>,
    pub tries: u32,
}

/// What the watchdog remembers of one PgBouncer between looks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub pause: Option<Pause>,
}

/// One look at one PgBouncer: its state (`None`: it has no SHOW STATE), who owns a pause
/// (`None`: not asked or no answer), and the writable primary the route reaches now, with
/// the one it reached last (a look that did not sample the route keeps the last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Look {
    pub state: Option<State>,
    pub owner: Option<Owner>,
    pub primary: Option<Identity>,
    /// The latest writable primary seen before this look.
    pub last_primary: Option<Identity>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Wait,
    /// A pause that is not the hooks' (first seen now, or its owner changed): leave it.
    NotOurs(Owner),
    /// RESUME: the route reaches a new primary.
    NewPrimary,
    /// RESUME: paused longer than --max-pause.
    TooLong,
}

impl Verdict {
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Wait => "wait",
            Verdict::NotOurs(_) => "not-ours",
            Verdict::NewPrimary => "new-primary",
            Verdict::TooLong => "max-pause",
        }
    }
}

/// The watchdog's decision for one PgBouncer, as a pure function of what it remembers and
/// sees. On PgBouncer < 1.19 (no SHOW STATE) a pause is known only by the hooks' marks.
pub fn judge(memory: &mut Memory, look: &Look, now: Instant, max_pause: Duration) -> Verdict {
    let paused = match look.state {
        Some(state) => state.paused || state.suspended,
        // < 1.19: a hooks' mark is the only sign of a pause.
        None => matches!(look.owner, Some(Owner::Hooks(_))),
    };
    if !paused {
        memory.pause = None;
        return Verdict::Wait;
    }
    // Whose it is must be known before anything is recorded.
    let Some(owner) = look.owner.clone() else {
        return Verdict::Wait;
    };
    let same = match (&memory.pause, &owner) {
        (None, _) => false,
        // A hooks' pause whose ids all changed between two looks is a later pause.
        (
            Some(Pause {
                owner: Owner::Hooks(was),
                ..
            }),
            Owner::Hooks(now),
        ) => now.iter().any(|id| was.contains(id)),
        (Some(_), _) => true,
    };
    if !same {
        memory.pause = Some(Pause {
            since: now,
            since_wall: SystemTime::now(),
            owner: owner.clone(),
            before: look.primary.clone().or_else(|| look.last_primary.clone()),
            next_try: None,
            tries: 0,
        });
        return match owner {
            Owner::Hooks(_) => Verdict::Wait,
            other => Verdict::NotOurs(other),
        };
    }
    let Some(pause) = memory.pause.as_mut() else {
        return Verdict::Wait;
    };
    // A hold may come and go over a hooks' pause (and a hooks' pause that began under a
    // hold is the hooks' once the hold ends); somebody else's pause stays theirs.
    match (&pause.owner, &owner) {
        // Under a hold, remember the hooks' ids marked (the relay keeps them marked).
        (Owner::Held(_) | Owner::Hooks(_), Owner::Held(ids)) => {
            if !ids.is_empty() {
                pause.owner = Owner::Held(ids.clone());
            }
            return Verdict::Wait;
        }
        (Owner::Held(_), Owner::Hooks(_)) => pause.owner = owner.clone(),
        (Owner::Hooks(_), _) => {}
        _ => return Verdict::Wait,
    }
    if pause.next_try.is_some_and(|t| now < t) {
        return Verdict::Wait;
    }
    if pause.before.is_none() {
        // No primary known from when it began: the first one seen while paused drains.
        pause.before = look.primary.clone();
    } else if let (Some(before), Some(seen)) = (&pause.before, &look.primary) {
        if before != seen {
            return Verdict::NewPrimary;
        }
    }
    if now.duration_since(pause.since) >= max_pause {
        return Verdict::TooLong;
    }
    Verdict::Wait
}

/// After a RESUME that did not end the pause: try again after a backoff (250 ms → 2 s).
pub fn failed_resume(memory: &mut Memory, now: Instant) {
    if let Some(pause) = memory.pause.as_mut() {
        pause.tries += 1;
        let backoff = Duration::from_millis(250) * 2u32.saturating_pow(pause.tries - 1).min(8);
        pause.next_try = Some(now + backoff);
    }
}

// ------------------------------------------------------------------------------- I/O

/// Runs the watchdog until SIGTERM/SIGINT or `run_for`; with `check`, one look and a verdict.
pub fn run(settings: &Settings) -> Result<u8> {
    if settings.max_pause.is_zero() {
        return Err(crate::config::usage("--max-pause must be more than 0"));
    }
    if settings.check {
        return crate::runtime::block_on(check(settings))?;
    }
    crate::runtime::block_on(async {
        let shared: Shared = Arc::new(Mutex::new(Status::new(settings)));
        if let Some(addr) = settings.listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow!("cannot listen on {addr} (--listen): {e}"))?;
            tracing::info!(event = "watchdog", action = "listen", %addr, "serving /metrics, /status, /healthz, /readyz");
            tokio::spawn(watchdog_http::serve(listener, shared.clone()));
        }
        tokio::select! {
            result = watch(settings, shared) => result,
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

/// One PgBouncer as the watchdog follows it.
struct Watched {
    target: Target,
    admin: Option<Admin>,
    /// The session that holds a hooks' pause's mark on the watchdog's behalf.
    relay: Option<(String, Admin)>,
    /// It answered SHOW STATE with "unknown command" once: never ask again.
    no_show_state: bool,
    memory: Memory,
}

/// Failures of a look, by kind, each logged once when it starts and once when it clears.
#[derive(Default)]
struct Problems {
    /// Failing now: what, and since when.
    active: BTreeMap<&'static str, (String, std::time::Instant)>,
    counts: BTreeMap<&'static str, u64>,
}

impl Problems {
    /// `now`: what failed in this look; `route_sampled`: whether this look asked the route (a
    /// look that did not cannot say the route's failure has cleared).
    fn update(&mut self, now: BTreeMap<&'static str, String>, route_sampled: bool) {
        let mut next = BTreeMap::new();
        if !route_sampled {
            for kind in ["route", "other-cluster"] {
                if let Some(was) = self.active.get(kind) {
                    next.insert(kind, was.clone());
                }
            }
        }
        for (kind, detail) in now {
            *self.counts.entry(kind).or_default() += 1;
            let since = match self.active.get(kind) {
                Some((_, since)) => *since,
                // A route without a primary is what every switchover looks like for a moment.
                None if kind == "route" => {
                    tracing::warn!(
                        event = "watchdog",
                        action = "failing",
                        kind,
                        "watchdog cannot {}: {detail}",
                        what(kind)
                    );
                    std::time::Instant::now()
                }
                None => {
                    tracing::error!(
                        event = "watchdog",
                        action = "failing",
                        kind,
                        "WATCHDOG cannot {}: {detail}",
                        what(kind)
                    );
                    std::time::Instant::now()
                }
            };
            next.insert(kind, (detail, since));
        }
        for kind in self.active.keys() {
            if !next.contains_key(kind) {
                tracing::info!(
                    event = "watchdog",
                    action = "cleared",
                    kind,
                    "watchdog can {} again",
                    what(kind)
                );
            }
        }
        self.active = next;
    }
}

fn what(kind: &str) -> &'static str {
    match kind {
        "password" => "read the admin password",
        "resolve" => "resolve a PgBouncer name",
        "admin" => "log in to PgBouncer's admin console",
        "show-state" => "run SHOW STATE",
        "show-clients" => "run SHOW CLIENTS (whose pause)",
        "route" => "reach a writable primary through the route (--upstream)",
        "other-cluster" => "trust the route: it reaches another cluster",
        "resume" => "RESUME a hooks' pause",
        _ => "do its job",
    }
}

async fn watch(settings: &Settings, shared: Shared) -> Result<()> {
    let started = Instant::now();
    let interval = settings.interval.max(Duration::from_millis(10));
    let step = settings.look_timeout;
    tracing::info!(
        event = "watchdog",
        action = "start",
        pgbouncers = settings.fleet.urls.len(),
        upstreams = settings.upstreams.len(),
        max_pause_ms = settings.max_pause.as_millis() as u64,
        interval_ms = interval.as_millis() as u64,
        "watchdog watching PgBouncer"
    );
    let mut watched: Vec<Watched> = Vec::new();
    let mut resolved_at: Option<Instant> = None;
    let mut route = Route::new(
        settings.system_identifier.clone(),
        interval.max(Duration::from_millis(100)),
    );
    let mut problems = Problems::default();
    let mut last_sample: Option<Instant> = None;
    let mut sample_now = true;
    loop {
        let look_started = Instant::now();
        if settings.run_for.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
        let mut failing = BTreeMap::new();
        // Targets: resolved at the start, again every RESOLVE_EVERY, and sooner while one fails.
        let stale = resolved_at.map_or(true, |at| {
            at.elapsed() >= RESOLVE_EVERY
                || (watched.iter().any(|w| w.admin.is_none()) && at.elapsed() >= 5 * interval)
        });
        if stale || watched.is_empty() {
            match resolve(&settings.fleet, step).await {
                Ok((targets, unresolved)) => {
                    resolved_at = Some(Instant::now());
                    if let Some(problem) = unresolved.first() {
                        failing.insert("resolve", problem.clone());
                    }
                    merge_targets(&mut watched, targets);
                }
                Err(err) => {
                    failing.insert("password", format!("{err:#}"));
                }
            }
        }
        // Sample the route while a hooks' pause is on, right after one ended, and every
        // CALM_SAMPLE otherwise; alongside the looks at PgBouncer.
        let hooks_pause = watched
            .iter()
            .any(|w| matches!(&w.memory.pause, Some(p) if matches!(p.owner, Owner::Hooks(_))));
        let due =
            hooks_pause || sample_now || last_sample.map_or(true, |at| at.elapsed() >= CALM_SAMPLE);
        let last_primary = route.latest.clone();
        let (looks, primary) = tokio::join!(look_all(&mut watched, step, &mut failing), async {
            if due && !settings.upstreams.is_empty() {
                Some(route.sample(&settings.upstreams, step).await)
            } else {
                None
            }
        });
        if let Some(sampled) = primary.as_ref() {
            last_sample = Some(Instant::now());
            if let Err((kind, detail)) = sampled {
                failing.insert(kind, detail.clone());
            }
        }
        sample_now = false;
        let primary = primary.and_then(Result::ok).flatten();
        let now = Instant::now();
        for (w, (state, owner)) in watched.iter_mut().zip(looks) {
            let look = Look {
                state,
                owner,
                primary: primary.clone(),
                last_primary: last_primary.clone(),
            };
            let was = w.memory.pause.clone();
            let verdict = judge(&mut w.memory, &look, now, settings.max_pause);
            note_changes(&w.target, was.as_ref(), &w.memory, &verdict, &shared);
            if was.is_some() && w.memory.pause.is_none() {
                sample_now = true;
            }
            hold_relay(w, step).await;
            if matches!(verdict, Verdict::NewPrimary | Verdict::TooLong) {
                if let Err(detail) = resume(w, &verdict, settings, &shared).await {
                    failing.insert("resume", detail);
                }
            }
        }
        problems.update(failing, due && !settings.upstreams.is_empty());
        publish(&shared, &watched, &problems, route.latest.as_ref());
        let spent = look_started.elapsed();
        tokio::time::sleep(interval.saturating_sub(spent)).await;
    }
}

async fn resolve(fleet: &Fleet, step: Duration) -> Result<(Vec<Target>, Vec<String>)> {
    let password = fleet.password.read()?;
    Ok(fleet
        .resolve(password.as_deref(), fleet.connect_timeout.min(step))
        .await)
}

/// Keeps what is known of targets that are still there; adds new ones; drops vanished ones.
fn merge_targets(watched: &mut Vec<Watched>, targets: Vec<Target>) {
    let mut next = Vec::with_capacity(targets.len());
    for target in targets {
        match watched.iter().position(|w| w.target.shown == target.shown) {
            Some(i) => next.push(watched.swap_remove(i)),
            None => next.push(Watched {
                target,
                admin: None,
                relay: None,
                no_show_state: false,
                memory: Memory::default(),
            }),
        }
    }
    *watched = next;
}

/// Every PgBouncer at once, each step bounded by `step`: (state, owner) per target. The
/// owner is asked only while paused (or, without SHOW STATE, always: marks are all there is).
async fn look_all(
    watched: &mut [Watched],
    step: Duration,
    failing: &mut BTreeMap<&'static str, String>,
) -> Vec<(Option<State>, Option<Owner>)> {
    let mut tasks = Vec::new();
    for w in watched.iter_mut() {
        tasks.push(look_one(w, step));
    }
    let mut results = Vec::new();
    // Concurrent: each target's look is its own future, polled together.
    let joined = join_all(tasks).await;
    for (result, problem) in joined {
        if let Some((kind, detail)) = problem {
            failing.entry(kind).or_insert(detail);
        }
        results.push(result);
    }
    results
}

type LookResult = (
    (Option<State>, Option<Owner>),
    Option<(&'static str, String)>,
);

async fn look_one(w: &mut Watched, step: Duration) -> LookResult {
    let shown = w.target.shown.clone();
    if w.admin.is_none() {
        match Admin::connect(&w.target, step).await {
            Ok(admin) => w.admin = Some(admin),
            Err(err) => return ((None, None), Some(("admin", format!("{err:#}")))),
        }
    }
    let Some(admin) = &w.admin else {
        return ((None, None), None);
    };
    let state = if w.no_show_state {
        None
    } else {
        match tokio::time::timeout(step, admin.state()).await {
            Ok(Ok(Some(state))) => Some(state),
            Ok(Ok(None)) => {
                tracing::warn!(pgbouncer = %shown, event = "watchdog", action = "no-show-state", "this PgBouncer has no SHOW STATE (< 1.19): the watchdog sees only the hooks' marked pauses there, and cannot confirm a RESUME");
                w.no_show_state = true;
                None
            }
            Ok(Err(err)) => {
                w.admin = None;
                return (
                    (None, None),
                    Some(("show-state", format!("{shown}: {err:#}"))),
                );
            }
            Err(_) => {
                w.admin = None;
                return (
                    (None, None),
                    Some(("show-state", format!("{shown}: no answer within {step:?}"))),
                );
            }
        }
    };
    let paused = state.map_or(true, |s| s.paused || s.suspended);
    if !paused {
        return ((state, None), None);
    }
    // The watchdog's own relay is a mark like any other: it keeps the pause the hooks'.
    match tokio::time::timeout(step, admin.owner()).await {
        Ok(Ok(owner)) => ((state, Some(owner)), None),
        Ok(Err(err)) => (
            (state, None),
            Some(("show-clients", format!("{shown}: {err:#}"))),
        ),
        Err(_) => (
            (state, None),
            Some((
                "show-clients",
                format!("{shown}: no answer within {step:?}"),
            )),
        ),
    }
}

/// Polls every future together until all are done (the looks at several PgBouncers).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Holds the recorded hooks' pause's mark while it lasts (not on < 1.19, where the end of a
/// pause cannot be seen), and lets it go when the pause ends.
async fn hold_relay(w: &mut Watched, step: Duration) {
    let want = match &w.memory.pause {
        Some(Pause {
            owner: Owner::Hooks(ids) | Owner::Held(ids),
            ..
        }) if !w.no_show_state => ids.first().cloned(),
        _ => None,
    };
    match (&w.relay, want) {
        (Some((held, _)), Some(want)) if *held == want => {}
        (_, Some(want)) => {
            let marked = w.target.named(&owner::pause_mark(&want));
            w.relay = Admin::connect(&marked, step).await.ok().map(|a| (want, a));
            if w.relay.is_some() {
                tracing::info!(pgbouncer = %w.target.shown, event = "watchdog", action = "relay", pause_id = %w.relay.as_ref().map_or("", |(id, _)| id.as_str()), "watchdog holds the hooks' pause's mark (it outlives the pod that paused)");
            }
        }
        (Some(_), None) => w.relay = None,
        (None, None) => {}
    }
}

/// RESUMEs a hooks' pause on the watchdog's session, only if it is still that pause.
async fn resume(
    w: &mut Watched,
    verdict: &Verdict,
    settings: &Settings,
    shared: &Shared,
) -> Result<(), String> {
    let Some(pause) = w.memory.pause.clone() else {
        return Ok(());
    };
    let Owner::Hooks(ids) = pause.owner.clone() else {
        return Ok(());
    };
    let now = Instant::now();
    let paused_ms = now.duration_since(pause.since).as_millis() as u64;
    let session = match w.admin.take() {
        Some(admin) => Ok(admin),
        None => Admin::connect(&w.target, settings.look_timeout).await,
    };
    let outcome = match &session {
        Ok(admin) => {
            let mut first = Some(ids.clone());
            fleet::resume_owned(
                admin,
                settings.fleet.command_timeout,
                &mut first,
                w.no_show_state,
            )
            .await
        }
        Err(err) => Err(anyhow!("{err:#}")),
    };
    w.admin = session.ok();
    let pgbouncer = w.target.shown.as_str();
    match outcome {
        Ok(outcome @ ResumeOutcome::Resumed { .. }) => {
            tracing::warn!(
                pgbouncer,
                event = "watchdog",
                action = "resume",
                reason = verdict.reason(),
                pause_id = %ids.join(","),
                paused_ms,
                tries = pause.tries + 1,
                "WATCHDOG: RESUMED the hooks' pause ({})",
                match verdict {
                    Verdict::NewPrimary => "its route reaches a new primary",
                    _ => "paused longer than --max-pause",
                }
            );
            fleet::log_resume(pgbouncer, &outcome, 0);
            if let Ok(mut status) = shared.lock() {
                *status.resumes.entry(verdict.reason()).or_default() += 1;
            }
            if !w.no_show_state {
                // SHOW STATE confirmed it: the pause is over.
                w.memory.pause = None;
                w.relay = None;
            } else if let Some(p) = w.memory.pause.as_mut() {
                // < 1.19: the mark lingers with its net; never RESUME this pause again.
                p.owner = Owner::Other;
            }
            Ok(())
        }
        Ok(ResumeOutcome::NotPaused) => {
            w.memory.pause = None;
            w.relay = None;
            Ok(())
        }
        Ok(ResumeOutcome::LeftAlone(why)) => {
            tracing::info!(
                pgbouncer,
                event = "watchdog",
                action = "left-alone",
                "watchdog: not resumed: {why}"
            );
            Ok(())
        }
        Err(err) => {
            failed_resume(&mut w.memory, Instant::now());
            let tries = w.memory.pause.as_ref().map_or(0, |p| p.tries);
            tracing::warn!(
                pgbouncer,
                event = "watchdog",
                action = "resume-retry",
                reason = verdict.reason(),
                tries,
                "watchdog: RESUME did not end the pause, trying again: {err:#}"
            );
            Err(format!("{pgbouncer}: {err:#}"))
        }
    }
}

/// Logs and counts a pause's beginning and end.
fn note_changes(
    target: &Target,
    was: Option<&Pause>,
    now: &Memory,
    verdict: &Verdict,
    shared: &Shared,
) {
    let pgbouncer = target.shown.as_str();
    let began = match (was, &now.pause) {
        (None, Some(p)) => Some(p),
        (Some(w), Some(p)) if w.since != p.since => Some(p),
        _ => None,
    };
    if let Some(ended) = was.filter(|w| now.pause.as_ref().map_or(true, |p| p.since != w.since)) {
        let ms = ended.since.elapsed().as_millis() as u64;
        tracing::info!(
            pgbouncer,
            event = "watchdog",
            action = "pause-ended",
            owner = ended.owner.as_str(),
            paused_ms = ms,
            "pause over after {ms} ms"
        );
        if let Ok(mut status) = shared.lock() {
            status.last_pause_ms = Some(ms);
        }
    }
    if let Some(p) = began {
        let owner = p.owner.as_str();
        match verdict {
            Verdict::NotOurs(_) => {
                tracing::warn!(
                pgbouncer,
                event = "watchdog",
                action = "pause-seen",
                owner,
                "PgBouncer is paused by somebody else ({}): the watchdog leaves this pause alone",
                if matches!(p.owner, Owner::Held(_)) { "an operator holds it" } else { "no hooks' mark" }
            )
            }
            _ => tracing::info!(
                pgbouncer,
                event = "watchdog",
                action = "pause-seen",
                owner,
                pause_id = %p.owner.id().unwrap_or(""),
                "a hooks' pause: the watchdog ends it when the route reaches a new primary, or after --max-pause"
            ),
        }
        if let Ok(mut status) = shared.lock() {
            *status.pauses.entry(owner).or_default() += 1;
        }
    }
}

fn publish(shared: &Shared, watched: &[Watched], problems: &Problems, primary: Option<&Identity>) {
    let Ok(mut status) = shared.lock() else {
        return;
    };
    status.looked_at = Some(SystemTime::now());
    status.looked = Some(std::time::Instant::now());
    status.failing = problems.active.clone();
    status.errors = problems.counts.clone();
    status.primary = primary.map(|p| p.started.clone());
    status.targets = watched
        .iter()
        .map(|w| TargetStatus {
            pgbouncer: w.target.shown.clone(),
            seen: w.admin.is_some(),
            show_state: !w.no_show_state,
            paused: w.memory.pause.is_some(),
            since: w.memory.pause.as_ref().map(|p| p.since_wall),
            owner: w.memory.pause.as_ref().map(|p| p.owner.as_str()),
            pause_id: w
                .memory
                .pause
                .as_ref()
                .and_then(|p| p.owner.id().map(str::to_string)),
        })
        .collect();
}

/// The route to the primary: a kept session on the writable primary of the one cluster; it
/// is never kept on a server in recovery, and another cluster never counts.
struct Route {
    session: Option<Client>,
    /// Bounds a question on the kept session (the look's interval).
    kept_bound: Duration,
    cluster: Option<String>,
    latest: Option<Identity>,
}

type Sample = Result<Option<Identity>, (&'static str, String)>;

impl Route {
    fn new(cluster: Option<String>, kept_bound: Duration) -> Route {
        Route {
            session: None,
            kept_bound,
            cluster,
            latest: None,
        }
    }

    /// The writable primary of the cluster that the route reaches now (`Ok(None)`: none
    /// writable answers, e.g. mid-switchover).
    async fn sample(&mut self, upstreams: &[Server], step: Duration) -> Sample {
        if let Some(client) = &self.session {
            // The kept session answers in a round trip; one that hangs (its server went
            // silent) must not hold up the look, so it gets one interval.
            match tokio::time::timeout(self.kept_bound.min(step), route::identity(client)).await {
                Ok(Ok(identity)) if self.accepts(&identity) => {
                    self.latest = Some(identity.clone());
                    return Ok(Some(identity));
                }
                _ => self.session = None,
            }
        }
        let mut last = ("route", "no upstream answered".to_string());
        let mut replica = false;
        for upstream in upstreams {
            match route::identify(upstream, step).await {
                Ok((client, identity)) if self.accepts(&identity) => {
                    if self.cluster.is_none() {
                        self.cluster = Some(identity.system_identifier.clone());
                    }
                    self.session = Some(client);
                    self.latest = Some(identity.clone());
                    return Ok(Some(identity));
                }
                Ok((_, identity)) if identity.in_recovery => replica = true,
                Ok((_, identity)) => {
                    last = (
                        "other-cluster",
                        format!(
                            "{} answers from system identifier {}, not {}",
                            upstream.shown,
                            identity.system_identifier,
                            self.cluster.as_deref().unwrap_or("?")
                        ),
                    )
                }
                Err(err) => last = ("route", format!("{err:#}")),
            }
        }
        if replica {
            // Mid-switchover the route may reach a replica for a moment: not a failure.
            return Ok(None);
        }
        Err(last)
    }

    fn accepts(&self, identity: &Identity) -> bool {
        !identity.in_recovery
            && self
                .cluster
                .as_ref()
                .map_or(true, |c| *c == identity.system_identifier)
    }
}

/// `--check`: everything a watchdog needs, said line by line; exit 0 only when it would work.
async fn check(settings: &Settings) -> Result<u8> {
    let step = settings.look_timeout.max(settings.fleet.connect_timeout);
    let mut ok = true;
    let mut watched = Vec::new();
    match resolve(&settings.fleet, step).await {
        Ok((targets, unresolved)) => {
            for problem in unresolved {
                ok = false;
                tracing::error!("check: {problem}");
            }
            merge_targets(&mut watched, targets);
        }
        Err(err) => {
            ok = false;
            tracing::error!("check: {err:#}");
        }
    }
    if watched.is_empty() {
        ok = false;
        tracing::error!("check: no PgBouncer to watch");
    }
    for w in &mut watched {
        let mut failing = BTreeMap::new();
        let ((state, _), problem) = look_one(w, step).await;
        if let Some((kind, detail)) = problem {
            failing.insert(kind, detail);
        }
        match (&w.admin, failing.into_iter().next()) {
            (_, Some((kind, detail))) => {
                ok = false;
                tracing::error!(pgbouncer = %w.target.shown, kind, "check: cannot {}: {detail}", what(kind));
            }
            (Some(admin), None) => {
                let owner = tokio::time::timeout(step, admin.owner()).await;
                let clients = matches!(owner, Ok(Ok(_)));
                if !clients {
                    ok = false;
                    tracing::error!(pgbouncer = %w.target.shown, "check: cannot read SHOW CLIENTS' application_name (PgBouncer >= 1.18 needed): whose pause cannot be told");
                }
                if w.no_show_state {
                    tracing::warn!(pgbouncer = %w.target.shown, "check: no SHOW STATE (PgBouncer < 1.19): the watchdog sees only marked hooks' pauses and cannot confirm a RESUME");
                }
                tracing::info!(pgbouncer = %w.target.shown, paused = state.map(|s| s.paused), "check: PgBouncer reachable as an admin");
            }
            (None, None) => {}
        }
    }
    if settings.upstreams.is_empty() {
        tracing::warn!(
            "check: no --upstream: the watchdog will end a hooks' pause only at --max-pause"
        );
    } else {
        let mut route = Route::new(settings.system_identifier.clone(), step);
        match route.sample(&settings.upstreams, step).await {
            Ok(Some(primary)) => tracing::info!(
                system_identifier = %primary.system_identifier,
                "check: the route reaches a writable primary"
            ),
            Ok(None) => {
                ok = false;
                tracing::error!("check: the route reaches only servers in recovery");
            }
            Err((kind, detail)) => {
                ok = false;
                tracing::error!(kind, "check: cannot {}: {detail}", what(kind));
            }
        }
    }
    Ok(crate::report::check_summary("pgbouncer-watchdog", ok))
}

#[cfg(test)]
mod tests;

/// `--status`: what the watchdog at `addr` knows, printed as it serves it on `/status`; exit
/// 0 when nothing is paused and it is ready, else 1.
pub fn status(addr: std::net::SocketAddr) -> Result<u8> {
    let api = crate::patroni_api::Api {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let body = crate::runtime::block_on(api.get("/status", Duration::from_secs(5)))??;
    use std::io::Write;
    let _ = write!(std::io::stdout(), "{body}");
    let report: serde_json::Value = serde_json::from_str(&body)?;
    let paused = report["pgbouncers"]
        .as_array()
        .is_some_and(|all| all.iter().any(|p| p["paused"] == true));
    Ok(if report["ready"] == true && !paused {
        crate::exit::OK
    } else {
        crate::exit::FAILURE
    })
}
