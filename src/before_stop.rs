//! The `before-stop` flow: read the view, decide, PAUSE every PgBouncer, arm the safety net,
//! all inside one deadline; and its `--check` and the detached net it leaves behind.

use std::time::Duration;

use anyhow::{anyhow, Result};
use tokio::time::Instant;

use crate::decision::Action;
use crate::fleet::{self, Fleet};
use crate::report::{self, Mode};
use crate::{config, detach, exit, runtime, safety, view};

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

/// The detached safety net's whole life (see [`safety`]).
pub fn run_net(fleet: &Fleet, max_pause: Duration) -> Result<u8> {
    runtime::block_on(safety::watch(fleet, max_pause))?;
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
    let result = fleet::pause_all(&settings.fleet, settings.pause_timeout, until).await?;
    let pause_ms = pause_started.elapsed().as_millis() as u64;
    let pausing = result.maybe_pausing();
    if pausing > 0 && !settings.max_pause.is_zero() {
        let extra = [
            NET_FLAG.into(),
            format!("{}ms", settings.max_pause.as_millis()).into(),
        ];
        if let Err(err) = detach::spawn(&extra) {
            tracing::warn!("could not start the pause safety net: {err:#}");
        }
    }
    let outcome = match (result.draining + result.uncertain, result.failed) {
        _ if pausing == 0 => "nothing paused",
        (0, 0) => "paused",
        (_, 0) => "pausing (still draining, or maybe)",
        _ => "partly paused",
    };
    done(outcome, Some(&result), pause_ms);
    Ok(if pausing > 0 { exit::OK } else { exit::FAILURE })
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
