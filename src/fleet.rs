//! Every PgBouncer at once: resolve each URL (a headless Service name is every pod), drive all
//! targets concurrently, and log one outcome line per target. PAUSE, RESUME, the preflight and
//! the safety net are the four jobs; each is only what it does to one PgBouncer.
//!
//! Concurrency matters: with several PgBouncer pods the stall must be the slowest one's, not
//! their sum.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::time::Instant;

use crate::owner::{self, Owner};
use crate::pgbouncer::{Admin, Answer, Paused, State, Target, Url};

/// Where the admin password comes from: `PGBOUNCER_PASSWORD`, else a file. Read when a job
/// needs it, so a dry run never touches the secret.
#[derive(Clone, Debug, Default)]
pub struct Password {
    pub file: Option<PathBuf>,
}

impl Password {
    pub fn read(&self) -> Result<Option<String>> {
        if let Ok(password) = std::env::var("PGBOUNCER_PASSWORD") {
            if !password.is_empty() {
                return Ok(Some(password));
            }
        }
        let Some(path) = &self.file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --pgbouncer-password-file {}", path.display()))?;
        let password = text.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            bail!("--pgbouncer-password-file {} is empty", path.display());
        }
        Ok(Some(password))
    }
}

/// The PgBouncers and how long to wait for each.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub urls: Vec<Url>,
    pub password: Password,
    /// Bounds resolving, connecting and authenticating, per target.
    pub connect_timeout: Duration,
    /// Bounds each admin command other than PAUSE.
    pub command_timeout: Duration,
}

/// One target's result, with how long it took.
pub struct Outcome<T> {
    pub target: Target,
    pub result: Result<T>,
    pub elapsed: Duration,
}

impl Fleet {
    /// The addresses as they may be logged (no password), unresolved.
    pub fn shown(&self) -> Vec<String> {
        self.urls.iter().map(|u| u.shown.clone()).collect()
    }

    /// Resolves every URL (bounded by `resolve_within` as well as the connect timeout), runs
    /// `work` against every target at once, and returns one outcome per target, in order,
    /// plus one line per URL that did not resolve.
    pub async fn drive<T, F, Fut>(
        &self,
        resolve_within: Duration,
        work: F,
    ) -> Result<(Vec<Outcome<T>>, Vec<String>)>
    where
        T: Send + 'static,
        F: Fn(Target) -> Fut,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let password = self.password.read()?;
        let (targets, unresolved) = self
            .resolve(
                password.as_deref(),
                self.connect_timeout.min(resolve_within),
            )
            .await;
        let outcomes = each(&targets, work)
            .await
            .into_iter()
            .zip(&targets)
            .map(|((result, elapsed), target)| Outcome {
                target: target.clone(),
                result,
                elapsed,
            })
            .collect();
        Ok((outcomes, unresolved))
    }

    /// Resolves every URL at once (one slow name must not delay the others), each bounded by
    /// `timeout`: the targets, and one line per URL that did not resolve.
    pub async fn resolve(
        &self,
        password: Option<&str>,
        timeout: Duration,
    ) -> (Vec<Target>, Vec<String>) {
        let found = each(&self.urls, |url| {
            let password = password.map(str::to_string);
            async move { url.resolve(password.as_deref(), timeout).await }
        })
        .await;
        let mut targets = Vec::new();
        let mut failures = Vec::new();
        for (url, (result, _)) in self.urls.iter().zip(found) {
            match result {
                Ok(found) if found.is_empty() => {
                    failures.push(format!("{}: resolves to no address", url.shown))
                }
                Ok(found) => targets.extend(found),
                Err(err) => failures.push(format!("{}: {err:#}", url.shown)),
            }
        }
        (targets, failures)
    }
}

/// Runs `work` on every item at once; one result per item, in item order, with how long it
/// took.
async fn each<I, T, F, Fut>(items: &[I], work: F) -> Vec<(Result<T>, Duration)>
where
    I: Clone,
    T: Send + 'static,
    F: Fn(I) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    for (index, item) in items.iter().enumerate() {
        let future = work(item.clone());
        set.spawn(async move {
            let started = Instant::now();
            let result = future.await;
            (index, result, started.elapsed())
        });
    }
    let mut results: Vec<Option<(Result<T>, Duration)>> = items.iter().map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        if let Ok((index, result, elapsed)) = joined {
            results[index] = Some((result, elapsed));
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| (Err(anyhow!("the task driving it failed")), Duration::ZERO)))
        .collect()
}

// ------------------------------------------------------------------------------ PAUSE

#[derive(Debug, Default)]
pub struct PauseResult {
    /// PAUSE answered, or PgBouncer was already in another hooks' pause (joined).
    pub paused: usize,
    /// PAUSE sent but still waiting for transactions when the bound ran out.
    pub draining: usize,
    /// The connection broke after PAUSE went out: PgBouncer may be pausing.
    pub uncertain: usize,
    /// Already paused by somebody else (no hooks' mark) or held by an operator: left alone,
    /// and never resumed by the hooks.
    pub left_alone: usize,
    pub failed: usize,
}

impl PauseResult {
    /// PgBouncers that are, or may be, in this pause: each needs a RESUME, so the net holds
    /// the mark for them.
    pub fn maybe_pausing(&self) -> usize {
        self.paused + self.draining + self.uncertain
    }
}

enum PauseOutcome {
    Paused(Answer),
    Draining,
    Uncertain(String),
    /// Already paused, and not by the hooks.
    LeftAlone(Owner),
}

/// The admin sessions that carry this pause's mark: kept open until the safety net holds
/// the mark itself, so a look at `SHOW CLIENTS` never finds the hooks' pause unmarked.
pub struct Marks(#[allow(dead_code)] Vec<Admin>);

/// Sends PAUSE everywhere, on sessions marked as pause `id` ([`crate::owner`]), and waits for
/// it at most `pause_timeout`, and never past `until` (resolution, connection and drain
/// included).
///
/// A PAUSE still draining when the bound runs out is left pending: PgBouncer stays pausing
/// after the connection closes, Postgres' fast shutdown ends the long transactions, and the
/// queued clients then wait for RESUME on the new primary. A PgBouncer that somebody else
/// paused is left alone: the hooks do not take over a pause they did not make.
pub async fn pause_all(
    fleet: &Fleet,
    pause_timeout: Duration,
    until: Instant,
    id: &str,
) -> Result<(PauseResult, Marks)> {
    let (connect_timeout, command_timeout) = (fleet.connect_timeout, fleet.command_timeout);
    let mark = owner::pause_mark(id);
    let id = id.to_string();
    let left = until.saturating_duration_since(Instant::now());
    let (outcomes, unresolved) = fleet
        .drive(left, |target| {
            let (mark, id) = (mark.clone(), id.clone());
            async move {
                let left = until.saturating_duration_since(Instant::now());
                let admin = Admin::connect(&target.named(&mark), connect_timeout.min(left)).await?;
                let left = until.saturating_duration_since(Instant::now());
                let outcome = match tokio::time::timeout(pause_timeout.min(left), admin.pause())
                    .await
                {
                    Ok(Ok(Paused::Yes(Answer::Done))) => PauseOutcome::Paused(Answer::Done),
                    Ok(Ok(Paused::Yes(Answer::AlreadyThere))) => {
                        let left = until.saturating_duration_since(Instant::now());
                        let owner = tokio::time::timeout(command_timeout.min(left), admin.owner())
                            .await
                            .map_err(|_| anyhow!("SHOW CLIENTS got no answer"))??
                            .without(&id);
                        match owner {
                            Owner::Hooks(_) => PauseOutcome::Paused(Answer::AlreadyThere),
                            other => PauseOutcome::LeftAlone(other),
                        }
                    }
                    Ok(Ok(Paused::Maybe(why))) => PauseOutcome::Uncertain(why),
                    Ok(Err(err)) => return Err(err),
                    Err(_) => PauseOutcome::Draining,
                };
                let keep = !matches!(outcome, PauseOutcome::LeftAlone(_));
                Ok((outcome, keep.then_some(admin)))
            }
        })
        .await?;
    let mut result = PauseResult {
        failed: unresolved.len(),
        ..PauseResult::default()
    };
    let mut marks = Vec::new();
    for problem in unresolved {
        tracing::error!(command = "PAUSE", result = "failed", "{problem}");
    }
    for outcome in outcomes {
        let ms = outcome.elapsed.as_millis() as u64;
        let pgbouncer = outcome.target.shown.as_str();
        let outcome = match outcome.result {
            Ok((outcome, session)) => {
                marks.extend(session);
                Ok(outcome)
            }
            Err(err) => Err(err),
        };
        match outcome {
            Ok(PauseOutcome::Paused(answer)) => {
                let said = if answer == Answer::Done {
                    "paused"
                } else {
                    "already in a hooks' pause"
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
                    "PAUSE still waiting for in-flight transactions at its bound; leaving it pausing (Postgres' shutdown ends them, queued clients wait for RESUME)"
                );
                result.draining += 1;
            }
            Ok(PauseOutcome::Uncertain(why)) => {
                tracing::warn!(
                    pgbouncer,
                    command = "PAUSE",
                    result = "maybe paused",
                    ms,
                    "PAUSE went out but the connection broke before an answer ({why}): PgBouncer may be pausing, so it counts as paused"
                );
                result.uncertain += 1;
            }
            Ok(PauseOutcome::LeftAlone(owner)) => {
                tracing::warn!(
                    pgbouncer,
                    command = "PAUSE",
                    result = "left alone",
                    owner = owner.as_str(),
                    ms,
                    "PgBouncer was already paused by somebody else ({}): the hooks leave that pause alone and will not RESUME it",
                    if matches!(owner, Owner::Held(_)) { "an operator holds it" } else { "no hooks' mark" }
                );
                result.left_alone += 1;
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
    Ok((result, Marks(marks)))
}

// ----------------------------------------------------------------------------- RESUME

#[derive(Debug, Default)]
pub struct ResumeResult {
    /// RESUME answered and SHOW STATE says not paused.
    pub resumed: usize,
    /// RESUME answered but SHOW STATE is missing (PgBouncer < 1.19).
    pub unverified: usize,
    /// SHOW STATE said not paused: nothing sent.
    pub not_paused: usize,
    /// Paused, but not by the hooks (no mark), held by an operator, or a later hooks' pause
    /// than the one this RESUME was for: nothing sent.
    pub left_alone: usize,
    pub failed: usize,
}

impl ResumeResult {
    /// No PgBouncer is left in a pause of the hooks that this RESUME was for.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

/// What one target's RESUME came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumeOutcome {
    Resumed {
        answer: Answer,
        /// SHOW STATE confirmed it; false where PgBouncer has no SHOW STATE.
        verified: bool,
    },
    NotPaused,
    LeftAlone(String),
}

/// Sends RESUME to every PgBouncer that is in a hooks' pause ([`crate::owner`]), then checks
/// with SHOW STATE that it is no longer paused. A pause nobody marked, or one an operator
/// holds, is left alone. A target that fails (unreachable, no answer, still paused) is tried
/// again, backing off from 250 ms to 2 s, for `retry_for`, but only while the pause is the one
/// first seen: a retry never ends a later pause.
pub async fn resume_all(fleet: &Fleet, retry_for: Duration) -> Result<ResumeResult> {
    let (connect_timeout, command_timeout) = (fleet.connect_timeout, fleet.command_timeout);
    let (outcomes, unresolved) = fleet
        .drive(connect_timeout, |target| async move {
            let until = Instant::now() + retry_for;
            let mut pause = Duration::from_millis(250);
            let mut first = None;
            loop {
                let admin = Admin::connect(&target, connect_timeout).await;
                let result = match admin {
                    Ok(admin) => resume_owned(&admin, command_timeout, &mut first, false).await,
                    Err(err) => Err(err),
                };
                match result {
                    Ok(outcome) => return Ok(outcome),
                    Err(err) if Instant::now() + pause > until => return Err(err),
                    Err(err) => {
                        tracing::warn!(pgbouncer = %target.shown, command = "RESUME", result = "retrying", "RESUME failed, trying again in {pause:?}: {err:#}");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                    }
                }
            }
        })
        .await?;
    let mut result = ResumeResult {
        failed: unresolved.len(),
        ..ResumeResult::default()
    };
    for problem in unresolved {
        tracing::error!(command = "RESUME", result = "failed", "{problem}");
    }
    for outcome in outcomes {
        let ms = outcome.elapsed.as_millis() as u64;
        let pgbouncer = outcome.target.shown.as_str();
        match outcome.result {
            Ok(outcome) => {
                log_resume(pgbouncer, &outcome, ms);
                match outcome {
                    ResumeOutcome::Resumed { verified: true, .. } => result.resumed += 1,
                    ResumeOutcome::Resumed { .. } => result.unverified += 1,
                    ResumeOutcome::NotPaused => result.not_paused += 1,
                    ResumeOutcome::LeftAlone(_) => result.left_alone += 1,
                }
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
    Ok(result)
}

/// One log line for one target's RESUME outcome (`command=RESUME`, `result`).
pub fn log_resume(pgbouncer: &str, outcome: &ResumeOutcome, ms: u64) {
    match outcome {
        ResumeOutcome::Resumed { answer, verified } => {
            let said = if *answer == Answer::Done {
                "resumed"
            } else {
                "was not paused"
            };
            let proof = if *verified {
                "SHOW STATE says not paused"
            } else {
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
        ResumeOutcome::NotPaused => tracing::info!(
            pgbouncer,
            command = "RESUME",
            result = "not paused",
            ms,
            "SHOW STATE says not paused: no RESUME sent"
        ),
        ResumeOutcome::LeftAlone(why) => tracing::warn!(
            pgbouncer,
            command = "RESUME",
            result = "left alone",
            ms,
            "not resumed: {why}"
        ),
    }
}

/// Why a paused PgBouncer must not be resumed by the hooks, if it must not: an operator holds
/// the pause, nobody marked it, or (on a retry: `first` holds the ids seen on the first try)
/// it is a later hooks' pause than the one this RESUME was for. On the first try, `first`
/// takes the ids marked now. `show_state`: whether SHOW STATE said it is paused at all.
pub fn not_ours(
    show_state: bool,
    owner: &Owner,
    first: &mut Option<Vec<String>>,
) -> Option<String> {
    let ids = match owner {
        Owner::Held(_) => {
            return Some("an operator holds this pause (a pph-hold session is connected)".into())
        }
        Owner::Other if !show_state => return Some(
            "no hooks' pause is marked (PgBouncer < 1.19 cannot say whether it is paused at all)"
                .into(),
        ),
        Owner::Other => {
            return Some(
                "paused by somebody else (no hooks' mark): the hooks never end such a pause".into(),
            )
        }
        Owner::Hooks(ids) => ids,
    };
    match first {
        Some(seen) if !ids.iter().any(|id| seen.contains(id)) => Some(format!(
            "a later hooks' pause ({}) than the one this RESUME was for ({})",
            ids.join(","),
            seen.join(",")
        )),
        Some(_) => None,
        None => {
            *first = Some(ids.clone());
            None
        }
    }
}

/// On one session: if PgBouncer is in a hooks' pause, RESUME it and check. `first` is the
/// owner seen on the first try; on a retry, a pause with none of those ids is a later one.
/// `no_show_state`: the caller knows this PgBouncer has none (< 1.19), so it is not asked
/// (each such question is an error line in PgBouncer's log).
pub async fn resume_owned(
    admin: &Admin,
    command_timeout: Duration,
    first: &mut Option<Vec<String>>,
    no_show_state: bool,
) -> Result<ResumeOutcome> {
    let bounded =
        |what: &'static str| move |_| anyhow!("{what} got no answer within {command_timeout:?}");
    let state = if no_show_state {
        None
    } else {
        tokio::time::timeout(command_timeout, admin.state())
            .await
            .map_err(bounded("SHOW STATE"))??
    };
    if matches!(
        state,
        Some(State {
            paused: false,
            suspended: false
        })
    ) {
        return Ok(ResumeOutcome::NotPaused);
    }
    let owner = tokio::time::timeout(command_timeout, admin.owner())
        .await
        .map_err(bounded("SHOW CLIENTS"))??;
    if let Some(why) = not_ours(state.is_some(), &owner, first) {
        return Ok(ResumeOutcome::LeftAlone(why));
    }
    let answer = tokio::time::timeout(command_timeout, admin.resume())
        .await
        .map_err(bounded("RESUME"))??;
    if state.is_none() {
        return Ok(ResumeOutcome::Resumed {
            answer,
            verified: false,
        });
    }
    match tokio::time::timeout(command_timeout, admin.state())
        .await
        .map_err(bounded("SHOW STATE"))??
    {
        Some(state) if state.paused || state.suspended => bail!(
            "RESUME answered but SHOW STATE still says paused={} suspended={}",
            state.paused,
            state.suspended
        ),
        state => Ok(ResumeOutcome::Resumed {
            answer,
            verified: state.is_some(),
        }),
    }
}

// -------------------------------------------------------------------------- preflight

/// `--check`: reach every target and report what would stop a real switchover.
/// `route_checked`: whether RESUME waits for the route (on-role-change `--upstream`); when it
/// does not, a slow `server_login_retry` is worth a warning.
pub async fn preflight(fleet: &Fleet, route_checked: bool) -> bool {
    if fleet.urls.is_empty() {
        tracing::error!("check: no PgBouncer configured: set --pgbouncer or PGBOUNCER_URLS");
        return false;
    }
    let (connect_timeout, command_timeout) = (fleet.connect_timeout, fleet.command_timeout);
    let driven = fleet
        .drive(connect_timeout, |target| async move {
            let admin = Admin::connect(&target, connect_timeout).await?;
            tokio::time::timeout(command_timeout, inspect(&admin))
                .await
                .map_err(|_| anyhow!("admin commands got no answer within {command_timeout:?}"))?
        })
        .await;
    let (outcomes, unresolved) = match driven {
        Ok(driven) => driven,
        Err(err) => {
            tracing::error!("check: {err:#}");
            return false;
        }
    };
    let mut ok = unresolved.is_empty();
    for problem in unresolved {
        tracing::error!("check: {problem}");
    }
    for outcome in outcomes {
        let pgbouncer = outcome.target.shown.as_str();
        match outcome.result {
            Ok(report) => {
                ok &= report.problems.is_empty();
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
                if !route_checked {
                    report_login_retry(pgbouncer, report.server_login_retry);
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

/// A `server_login_retry` up to this (seconds) keeps a too-early RESUME cheap.
const MAX_LOGIN_RETRY: f64 = 1.0;

fn report_login_retry(pgbouncer: &str, retry: Option<f64>) {
    match retry {
        Some(retry) if retry <= MAX_LOGIN_RETRY => tracing::info!(
            pgbouncer,
            server_login_retry = retry,
            "check: no route check, but server_login_retry is {retry} s: a RESUME that beats the route costs about that"
        ),
        retry => tracing::warn!(
            pgbouncer,
            warning = "late-route",
            server_login_retry = retry.unwrap_or(15.0),
            "check: neither a route check (on-role-change --upstream) nor a short server_login_retry (it is {} s): a RESUME that reaches PgBouncer before its route to the new primary stalls clients that long; set server_login_retry = 1 and --upstream",
            retry.map_or("unknown".to_string(), |r| r.to_string())
        ),
    }
}

struct Inspection {
    server_login_retry: Option<f64>,
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
        server_login_retry: login_retry_seconds(&setting("server_login_retry")),
        version,
        pool_mode,
        show_state: state.is_some(),
        warnings,
        problems,
    })
}

/// `SHOW CONFIG`'s `server_login_retry`, in seconds: a bare number of seconds, or with a unit
/// as PgBouncer accepts them in its ini file.
fn login_retry_seconds(value: &str) -> Option<f64> {
    crate::config::parse_duration(value)
        .ok()
        .map(|d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_retry_values() {
        let table = [
            ("15", Some(15.0)),
            ("1", Some(1.0)),
            ("500ms", Some(0.5)),
            ("2s", Some(2.0)),
            ("1min", Some(60.0)),
            ("", None),
            ("x", None),
        ];
        for (text, want) in table {
            assert_eq!(login_retry_seconds(text), want, "{text:?}");
        }
    }

    #[test]
    fn only_the_hooks_own_pause_is_resumed_and_a_retry_never_ends_a_later_one() {
        let hooks = |ids: &[&str]| Owner::Hooks(ids.iter().map(|s| s.to_string()).collect());
        // (SHOW STATE known, owner, ids seen on the first try) -> left alone?, ids after
        type Row = (
            bool,
            Owner,
            Option<Vec<&'static str>>,
            bool,
            Option<Vec<&'static str>>,
        );
        let table: Vec<Row> = vec![
            (true, hooks(&["a"]), None, false, Some(vec!["a"])),
            (false, hooks(&["a"]), None, false, Some(vec!["a"])),
            (true, Owner::Other, None, true, None),
            (false, Owner::Other, None, true, None),
            (true, Owner::Held(vec!["a".into()]), None, true, None),
            (
                true,
                Owner::Held(vec![]),
                Some(vec!["a"]),
                true,
                Some(vec!["a"]),
            ),
            // a retry: the same pause (also joined by another before-stop) ...
            (true, hooks(&["a"]), Some(vec!["a"]), false, Some(vec!["a"])),
            (
                true,
                hooks(&["a", "b"]),
                Some(vec!["a"]),
                false,
                Some(vec!["a"]),
            ),
            // ... or a later one, after somebody else's RESUME and a new PAUSE
            (true, hooks(&["b"]), Some(vec!["a"]), true, Some(vec!["a"])),
            (true, Owner::Other, Some(vec!["a"]), true, Some(vec!["a"])),
        ];
        for (i, (state, owner, seen, left, after)) in table.into_iter().enumerate() {
            let to_strings = |v: Option<Vec<&str>>| {
                v.map(|v| v.into_iter().map(str::to_string).collect::<Vec<_>>())
            };
            let mut first = to_strings(seen);
            let why = not_ours(state, &owner, &mut first);
            assert_eq!(why.is_some(), left, "row {i}: {why:?}");
            assert_eq!(first, to_strings(after), "row {i}");
        }
    }

    #[tokio::test]
    async fn outcomes_keep_target_order_whatever_finishes_first() {
        let url =
            Url::parse("postgresql://a@127.0.0.1:1,127.0.0.2:2,127.0.0.3:3/pgbouncer").unwrap();
        let fleet = Fleet {
            urls: vec![url],
            password: Password::default(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
        };
        let (outcomes, unresolved) = fleet
            .drive(Duration::from_secs(1), |target| async move {
                let last: u64 = target.shown.split(':').nth(2).unwrap()[..1].parse()?;
                tokio::time::sleep(Duration::from_millis(30 - 10 * last)).await;
                Ok(last)
            })
            .await
            .unwrap();
        assert!(unresolved.is_empty());
        let order: Vec<u64> = outcomes.into_iter().map(|o| o.result.unwrap()).collect();
        assert_eq!(order, [1, 2, 3]);
    }
}
