//! The `before-stop` flow: read the view, decide, PAUSE every PgBouncer, arm the safety net,
//! all inside one deadline; and its `--check` and the detached net it leaves behind.

use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::time::Instant;

use crate::decision::Action;
use crate::fleet::{self, Fleet};
use crate::report::{self, Mode};
use crate::{config, detach, exit, owner, runtime, safety, view};

/// Everything `before-stop` needs, from its command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This member's Patroni name; `None`: /etc/hostname, else the kernel's host name.
    pub member: Option<String>,
    pub sources: view::Sources,
    pub fleet: Fleet,
    pub pause_timeout: Duration,
    /// The safety net's bound; zero: no net.
    pub max_pause: Duration,
    /// Bounds the whole run.
    pub timeout: Duration,
    pub mode: Mode,
}

/// Time kept back from the deadline for what follows the PAUSE: arming the net, the summary,
/// and the runtime's shutdown.
const RESERVE: Duration = Duration::from_millis(300);

/// The flag by which the detached safety net is started (the binary is run again with it).
pub const NET_FLAG: &str = "--safety-net-for";

/// Runs the hook to its end within `settings.timeout`, runtime shutdown included.
pub fn run(settings: &Settings) -> Result<u8> {
    if settings.timeout.is_zero() {
        return Err(config::usage("--timeout must be more than 0"));
    }
    runtime::block_on(async {
        let deadline = Instant::now() + settings.timeout;
        match tokio::time::timeout_at(deadline, run_async(settings, deadline)).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "gave up at --timeout {:?} (the stop goes on)",
                settings.timeout
            )),
        }
    })?
}

/// The flag that hands the pause id to the safety net.
pub const PAUSE_ID_FLAG: &str = "--pause-id";
/// What the net says on its stdout once it holds the pause's mark.
const HOLDING: &str = "holding";

/// The detached safety net's whole life (see [`safety`]): pause `id`'s mark, and its RESUME
/// after `max_pause` (zero: never).
pub fn run_net(fleet: &Fleet, max_pause: Duration, id: &str) -> Result<u8> {
    runtime::block_on(safety::watch(fleet, max_pause, id, || detach::say(HOLDING)))?;
    Ok(exit::OK)
}

async fn run_async(settings: &Settings, deadline: Instant) -> Result<u8> {
    let started = Instant::now();
    let left = || deadline.saturating_duration_since(Instant::now());
    let member = member_name(settings.member.as_deref())?;
    if settings.mode == Mode::Check {
        return check(settings, &member, left()).await;
    }

    let view = view::read(&settings.sources, left().saturating_sub(RESERVE)).await?;
    let source = view.source.as_str();
    let decision = view::decide(&member, view)?;
    let read_view_ms = started.elapsed().as_millis() as u64;
    tracing::info!(event = "decided", member = %member, decision = ?decision.action, reason = %decision.reason, source, read_view_ms, "decided");

    let done = |outcome: &'static str, pause: Option<&fleet::PauseResult>, pause_ms: u64| {
        report::before_stop_summary(report::BeforeStop {
            decision: decision.action,
            source,
            read_view_ms,
            pause_ms,
            total_ms: started.elapsed().as_millis() as u64,
            pause,
            outcome,
        })
    };
    if settings.mode == Mode::DryRun {
        report::DryRun {
            action: decision.action,
            reason: &decision.reason,
            member: Some(&member),
            targets: settings.fleet.shown(),
            hook: "before-stop",
        }
        .print();
        done("dry run", None, 0);
        return Ok(exit::OK);
    }
    if decision.action != Action::Pause {
        done("nothing to pause", None, 0);
        return Ok(exit::OK);
    }

    let pause_started = Instant::now();
    let until = deadline.checked_sub(RESERVE).unwrap_or(deadline);
    let id = owner::new_pause_id(&member);
    let (result, marks) =
        fleet::pause_all(&settings.fleet, settings.pause_timeout, until, &id).await?;
    let pause_ms = pause_started.elapsed().as_millis() as u64;
    let pausing = result.maybe_pausing();
    if pausing > 0 {
        hand_over_mark(settings.max_pause, &id, until).await;
    }
    drop(marks);
    let outcome = match (result.draining + result.uncertain, result.failed) {
        _ if pausing == 0 && result.left_alone > 0 => "left alone (paused by somebody else)",
        _ if pausing == 0 => "nothing paused",
        (0, 0) => "paused",
        (_, 0) => "pausing (still draining, or maybe)",
        _ => "partly paused",
    };
    done(outcome, Some(&result), pause_ms);
    Ok(if pausing + result.left_alone > 0 {
        exit::OK
    } else {
        exit::FAILURE
    })
}

/// Starts the safety net and waits (at most until `until`) for it to hold pause `id`'s mark,
/// so the mark never lapses between the PAUSE sessions and the net's.
async fn hand_over_mark(max_pause: Duration, id: &str, until: Instant) {
    let extra = [
        NET_FLAG.into(),
        format!("{}ms", max_pause.as_millis()).into(),
        PAUSE_ID_FLAG.into(),
        id.into(),
    ];
    let worker = match detach::spawn_awaitable(&extra) {
        Ok(worker) => worker,
        Err(err) => {
            tracing::warn!(event = "safety-net", action = "not-started", "could not start the pause safety net: {err:#}; the pause's mark ends with this run (the watchdog beside PgBouncer keeps it once it has seen it)");
            return;
        }
    };
    // The net tries each PgBouncer once for at most a second before it says so; the stop
    // waits no longer than this for it (a slow net still holds the mark a moment later).
    let left = until
        .saturating_duration_since(Instant::now())
        .min(Duration::from_secs(3));
    let held = tokio::task::spawn_blocking(move || worker.wait_for_word(HOLDING, left)).await;
    if !matches!(held, Ok(true)) {
        tracing::warn!(
            event = "safety-net",
            action = "late",
            "the safety net did not report holding the pause's mark within the run's bound"
        );
    }
}

/// `--check`: every PgBouncer reachable as an admin, and this member in the view.
async fn check(settings: &Settings, member: &str, left: Duration) -> Result<u8> {
    // The route is on-role-change's business: its --check says what is missing there.
    let ok = fleet::preflight(&settings.fleet, true).await;
    let role = view::read(&settings.sources, left).await.map(|view| {
        view.list
            .into_iter()
            .find(|m| m.name == member)
            .map(|m| format!("{:?}", m.role))
    });
    let role_ok = match role {
        Ok(Some(role)) => {
            tracing::info!(member, role = %role, "check: patronictl list shows this member");
            true
        }
        Ok(None) => {
            tracing::error!(
                member,
                "check: this member is not in patronictl list: set --member or PATRONI_NAME"
            );
            false
        }
        Err(err) => {
            tracing::error!("check: cannot read the cluster view: {err:#}");
            false
        }
    };
    Ok(report::check_summary("before-stop", ok && role_ok))
}

/// The given name, else /etc/hostname, else the kernel's name.
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
