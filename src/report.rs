//! What a run tells the world: the one JSON object of `--dry-run` on stdout, and each hook's
//! summary event on stderr.
//!
//! The summary is the contract for tests, `scripts/bench` and log pipelines: under
//! `--log-format json` it is one object with `"event": "summary"`, `"hook"`, `"outcome"` and
//! the fields listed in docs/reference.md; those names stay stable. The message wording is
//! for people and may change.

use serde::Serialize;

use crate::decision::Action;
use crate::exit;
use crate::fleet::{PauseResult, ResumeResult};

/// What a run is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The real thing.
    Run,
    /// Read and decide, send nothing, print one JSON object on stdout.
    DryRun,
    /// Connect to everything, change nothing, say whether a switchover would work.
    Check,
}

/// The one JSON object `--dry-run` prints; CI pipelines read it.
#[derive(Debug, Serialize)]
pub struct DryRun<'a> {
    pub action: Action,
    pub reason: &'a str,
    pub member: Option<&'a str>,
    /// The PgBouncer URLs, passwords removed; not resolved, so no network is needed.
    pub targets: Vec<String>,
    pub hook: &'a str,
}

impl DryRun<'_> {
    pub fn print(&self) {
        use std::io::Write;
        let line = serde_json::to_string(self).unwrap_or_else(|_| "{}".into());
        let _ = writeln!(std::io::stdout(), "{line}");
    }
}

/// `before-stop`'s summary.
pub struct BeforeStop<'a> {
    pub decision: Action,
    /// Where the view came from: rest, patronictl or files.
    pub source: &'a str,
    pub read_view_ms: u64,
    pub pause_ms: u64,
    pub total_ms: u64,
    /// None when no PAUSE was sent.
    pub pause: Option<&'a PauseResult>,
    pub outcome: &'a str,
}

pub fn before_stop_summary(s: BeforeStop) {
    let none = PauseResult::default();
    let p = s.pause.unwrap_or(&none);
    tracing::info!(
        event = "summary",
        hook = "before-stop",
        decision = ?s.decision,
        source = s.source,
        read_view_ms = s.read_view_ms,
        pause_ms = s.pause_ms,
        total_ms = s.total_ms,
        paused = p.paused,
        draining = p.draining,
        uncertain = p.uncertain,
        left_alone = p.left_alone,
        failed = p.failed,
        outcome = s.outcome,
        "before-stop done"
    );
}

/// `on-role-change`'s summary.
pub struct OnRoleChange<'a> {
    pub decision: Action,
    pub wait_ms: u64,
    pub route_ms: u64,
    pub resume_ms: u64,
    pub total_ms: u64,
    pub resume: Option<&'a ResumeResult>,
    pub outcome: &'a str,
    /// Why, when it did not resume.
    pub problem: Option<&'a str>,
}

pub fn on_role_change_summary(s: OnRoleChange) {
    let none = ResumeResult::default();
    let r = s.resume.unwrap_or(&none);
    let message = match s.problem {
        Some(problem) => format!("on-role-change done: {problem}"),
        None => "on-role-change done".to_string(),
    };
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                event = "summary",
                hook = "on-role-change",
                decision = ?s.decision,
                wait_ms = s.wait_ms,
                route_ms = s.route_ms,
                resume_ms = s.resume_ms,
                total_ms = s.total_ms,
                resumed = r.resumed,
                unverified = r.unverified,
                not_paused = r.not_paused,
                left_alone = r.left_alone,
                failed = r.failed,
                outcome = s.outcome,
                "{message}"
            )
        };
    }
    if s.problem.is_some() {
        emit!(error);
    } else {
        emit!(info);
    }
}

/// A `--check`'s summary; returns its exit code.
pub fn check_summary(hook: &'static str, ok: bool) -> u8 {
    tracing::info!(
        event = "summary",
        hook,
        outcome = if ok { "ready" } else { "not ready" },
        "{hook} check done"
    );
    if ok {
        exit::OK
    } else {
        exit::FAILURE
    }
}
