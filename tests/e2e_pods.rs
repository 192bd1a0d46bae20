//! End-to-end with members in pods (issue 11): each Patroni member in its own PID namespace
//! with tini as PID 1, so deleting a pod ends every process in it (the detached
//! on-role-change worker and before-stop's safety net included), as in a Kubernetes pod
//! with shareProcessNamespace. Pod restarts go through a stand-in for StackGres'
//! cluster-controller, which adds the hooks to a fresh pod's Patroni config only after
//! `controller_delay`.
//!
//! Scenarios (Patroni 3 and 4, pgbench -c 4 and a reconnecting probe through PgBouncer 1.24):
//!   p1 rolling restart, hooks present from the start (N = 0): must end clean.
//!   p2 rolling restart, the controller adds the hooks only after the switchover (issue 11
//!      case B): without a watchdog PgBouncer stays paused (the proof), with one it must not.
//!   p3 a RESUME failure injected (hooks' path to the admin console cut for 3 s from the
//!      PAUSE on), then the old primary's pod restarted (case A): proof, and with a watchdog.
//!   p4 the primary's pod deleted under load (case C): SIGTERM to its init, grace, SIGKILL,
//!      then the StatefulSet's fresh pod.
//!
//!   p6 two switchovers back to back, watchdog on (issue 15): each pause judged against
//!      the primary that drains it.
//!
//! Variants "with watchdog" run `pgbouncer-watchdog` beside PgBouncer (`cluster::watchdog_args`).
//! Each scenario prints one `RESULT key=value ...` line (also written to target/e2e/).

use pph_support::cluster;
use pph_support::events;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::util::*;
use cluster::workload::{self, Pgbench, PgbenchResult, Probe, ProbeResult};
use cluster::{Cluster, Opts};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// pgbench -T for a pod scenario: `default` (as short as the action allows: the suite's
/// budget), or PPH_PODS_PGBENCH_SECS.
fn secs(default: u64) -> u64 {
    std::env::var("PPH_PODS_PGBENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The watchdog's --max-pause in these scenarios.
const WATCHDOG_MAX_PAUSE: Duration = Duration::from_secs(5);
/// before-stop's own safety net (HOOKS_MAX_PAUSE) in these scenarios: longer than the
/// watchdog's, short enough that the proofs can wait it out.
const NET_MAX_PAUSE: Duration = Duration::from_secs(15);
/// Measuring slack on a pause bound: PgBouncer's log has ms stamps, the watchdog polls.
const PAUSE_SLACK: Duration = Duration::from_millis(1500);
/// How long the admin console is cut for the hooks in p3.
const CUT: Duration = Duration::from_secs(3);
/// The controller stand-in's delay in p2: far longer than restart + switchover take.
const LATE_HOOKS: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Outcome {
    label: String,
    patroni: u8,
    watchdog: bool,
    pgbench: PgbenchResult,
    probe: ProbeResult,
    /// PgBouncer's paused intervals (start, length µs), from its log
    spans: Vec<(i64, i64)>,
    paused_at_end: bool,
    action_done: i64,
    /// scenario-specific facts, printed as key=value
    facts: BTreeMap<String, String>,
}

impl Outcome {
    fn failed(&self) -> u64 {
        self.pgbench.failed + self.pgbench.log_failed
    }
    fn longest_pause_us(&self) -> i64 {
        self.spans.iter().map(|s| s.1).max().unwrap_or(0)
    }
    fn total_paused_us(&self) -> i64 {
        self.spans.iter().map(|s| s.1).sum()
    }
    fn fact(&self, k: &str) -> Option<&str> {
        self.facts.get(k).map(|s| s.as_str())
    }

    /// `RESULT label=... patroni=... key=value ...`: one line, no spaces inside values.
    fn summary(&self) -> String {
        let mut f: Vec<(String, String)> = vec![
            ("label".into(), self.label.clone()),
            ("patroni".into(), self.patroni.to_string()),
            ("watchdog".into(), self.watchdog.to_string()),
            ("failed_txns".into(), self.failed().to_string()),
            (
                "aborted_clients".into(),
                self.pgbench.aborted_clients.to_string(),
            ),
            ("probe_errors".into(), self.probe.errors.len().to_string()),
            ("processed".into(), self.pgbench.processed.to_string()),
            ("pauses".into(), self.spans.len().to_string()),
            (
                "longest_pause_ms".into(),
                format!("{:.0}", ms(self.longest_pause_us())),
            ),
            (
                "total_paused_ms".into(),
                format!("{:.0}", ms(self.total_paused_us())),
            ),
            ("paused_at_end".into(), self.paused_at_end.to_string()),
            (
                "longest_stall_ms".into(),
                format!("{:.0}", ms(self.pgbench.stall().0)),
            ),
        ];
        f.extend(self.facts.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut s = String::from("RESULT");
        for (k, v) in f {
            s.push_str(&format!(" {k}={}", v.replace(' ', "_")));
        }
        s
    }

    fn record(&self) {
        cluster::record_result(&self.label, self.patroni, &self.summary());
    }

    /// What every pod scenario must show when the hooks (and, where needed, the watchdog)
    /// did their job: no client error, PgBouncer never paused beyond `max_pause` (+ slack)
    /// and not paused at the end, and the action inside the pgbench run.
    fn assert_clean(&self, max_pause: Duration) {
        let s = self.summary();
        let r = &self.pgbench;
        assert!(
            self.action_done + 2_000_000 < r.end_us,
            "the action ended after pgbench: {s}"
        );
        assert!(r.processed > 200, "pgbench barely ran: {s}\n{:?}", r.errors);
        assert!(
            r.exit_ok,
            "pgbench exited with an error: {s}\n{:?}",
            r.errors
        );
        assert_eq!(r.aborted_clients, 0, "aborted clients: {s}\n{:?}", r.errors);
        assert_eq!(self.failed(), 0, "failed transactions: {s}\n{:?}", r.errors);
        assert!(
            self.probe.errors.is_empty(),
            "probe errors: {s}\n{:?}",
            &self.probe.errors[..self.probe.errors.len().min(10)]
        );
        assert!(self.probe.ok > 100, "probe barely ran: {s}");
        self.assert_pauses(max_pause);
    }

    fn assert_pauses(&self, max_pause: Duration) {
        let s = self.summary();
        assert!(!self.paused_at_end, "PgBouncer paused at the end: {s}");
        assert!(
            self.longest_pause_us() <= (max_pause + PAUSE_SLACK).as_micros() as i64,
            "PgBouncer paused longer than {max_pause:?} (+{PAUSE_SLACK:?}): {s}"
        );
        assert_eq!(
            self.fact("resumed_by_hand"),
            Some("false"),
            "PgBouncer had to be resumed by hand: {s}"
        );
    }
}

/// The cluster is stopped when this drops; a panic in flight keeps its logs.
struct KeepOnFail(Option<Cluster>);
impl Drop for KeepOnFail {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if std::thread::panicking() {
                c.keep = true;
            }
            c.stop();
        }
    }
}

type Facts = BTreeMap<String, String>;

/// Cluster up (pods), pgbench + probe through PgBouncer 1, `warmup`, the action, then
/// `settle`: a bounded wait (until `settle_until` µs, set by the action; 0 = none) for
/// PgBouncer to leave its pause by itself; if it is still paused then, the harness RESUMEs
/// it by hand (fact resumed_by_hand=true, paused_for_ms = how long it had been paused).
fn scenario(
    opts: Opts,
    bench_secs: u64,
    warmup: Duration,
    action: impl FnOnce(&mut Cluster, &mut Facts) -> Res<i64>,
) -> (Outcome, KeepOnFail) {
    scenario_with(opts, bench_secs, false, warmup, action)
}

/// `scenario` with its own pgbench -T and, if `long_txn`, a transaction held open through
/// PgBouncer from the start until the action is over (fact long_txn=ok|failed).
fn scenario_with(
    opts: Opts,
    bench_secs: u64,
    long_txn: bool,
    warmup: Duration,
    action: impl FnOnce(&mut Cluster, &mut Facts) -> Res<i64>,
) -> (Outcome, KeepOnFail) {
    let bench_secs = secs(bench_secs);
    let mut c = Cluster::start(opts.clone()).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let port = c.bouncers[0].port;
    let bench = Pgbench::start(&c.dir, "b1", port, 4, bench_secs).unwrap_or_else(|e| panic!("{e}"));
    let probe = Probe::start(port, Duration::from_secs(bench_secs + 60));
    let release = Arc::new(AtomicBool::new(false));
    let long = long_txn.then(|| {
        workload::long_transaction(port, release.clone(), Duration::from_secs(bench_secs + 60))
    });
    std::thread::sleep(warmup);
    let mut facts = Facts::new();
    let action_start = now_us();
    let settle_until = match action(&mut c, &mut facts) {
        Ok(t) => t,
        Err(e) => {
            c.keep = true;
            panic!("scenario action failed: {e}\n(logs in {})", c.dir.display());
        }
    };
    let action_done = now_us();
    release.store(true, Ordering::Relaxed);
    // Bounded wait for PgBouncer to be resumed by whatever is supposed to do it.
    let b = &c.bouncers[0];
    let still = wait_for(
        "PgBouncer not paused",
        Duration::from_micros((settle_until - now_us()).max(0) as u64),
        Duration::from_millis(100),
        || (!workload::bouncer_paused(b).unwrap_or(true)).then_some(()),
    )
    .is_err()
        && workload::bouncer_paused(b).unwrap_or(true);
    facts.insert("resumed_by_hand".into(), still.to_string());
    if still {
        let since = c.bouncers[0]
            .admin_events()
            .iter()
            .rev()
            .find(|e| e.1 == "PAUSE")
            .map(|e| e.0)
            .unwrap_or(0);
        facts.insert(
            "paused_for_ms_before_hand_resume".into(),
            format!("{:.0}", ms(now_us() - since)),
        );
        log("PgBouncer still paused at the end of the bounded wait: RESUME by hand");
        workload::bouncer_admin(&c.bouncers[0], "RESUME")
            .unwrap_or_else(|e| panic!("RESUME by hand: {e}"));
    }
    if let Some(h) = long {
        let r = h.join().unwrap_or_else(|_| Err("panicked".into()));
        log(format!("long transaction: {r:?}"));
        facts.insert(
            "long_txn".into(),
            if r.is_ok() { "ok" } else { "failed" }.into(),
        );
    }
    let pgbench = bench.finish().unwrap_or_else(|e| panic!("{e}"));
    let probe = probe.finish();
    let events = c.bouncers[0].admin_events();
    let paused_at_end = c
        .bouncer_paused(0)
        .unwrap_or_else(|e| panic!("pgbouncer state: {e}"));
    let spans = workload::pause_spans(&events, now_us());
    for (k, v) in hook_summaries(&c, action_start) {
        facts.insert(k, v);
    }
    let o = Outcome {
        label: opts.label.clone(),
        patroni: opts.patroni,
        watchdog: opts.watchdog.is_some(),
        pgbench,
        probe,
        spans,
        paused_at_end,
        action_done,
        facts,
    };
    o.record();
    if std::env::var("PPH_KEEP").is_ok_and(|v| v == "1") {
        c.keep = true;
    }
    (o, KeepOnFail(Some(c)))
}

/// Counts of the hooks' summary events logged from `since` on (JSON logs in each member's
/// Patroni log), as facts: `orc_<outcome>=n` for on-role-change, `bs_<outcome>=n` for
/// before-stop, `nets_armed=n`.
fn hook_summaries(c: &Cluster, since: i64) -> Vec<(String, String)> {
    let mut n: BTreeMap<String, u32> = BTreeMap::new();
    for m in &c.members {
        for e in events::parse(&read(&m.patroni_log())) {
            if e["timestamp"]
                .as_str()
                .and_then(parse_log_ts)
                .map_or(true, |t| t < since)
            {
                continue;
            }
            if events::matches(&e, &[("event", "summary")]) {
                let hook = match e["hook"].as_str() {
                    Some("on-role-change") => "orc",
                    Some("before-stop") => "bs",
                    _ => continue,
                };
                let out = e["outcome"].as_str().unwrap_or("?").replace(' ', "_");
                *n.entry(format!("{hook}_{out}")).or_default() += 1;
            }
            if events::matches(&e, &[("event", "safety-net"), ("action", "armed")]) {
                *n.entry("nets_armed".into()).or_default() += 1;
            }
        }
    }
    n.into_iter().map(|(k, v)| (k, v.to_string())).collect()
}

fn pod_opts(label: &str, p: u8, watchdog: bool) -> Opts {
    let mut o = Opts::pods(label, p);
    o.hook_env.push((
        "HOOKS_MAX_PAUSE".into(),
        format!("{}s", NET_MAX_PAUSE.as_secs()),
    ));
    o.hook_env.push(("HOOKS_LOG_FORMAT".into(), "json".into()));
    if watchdog {
        o.watchdog = Some(WATCHDOG_MAX_PAUSE);
    }
    o
}

fn leader_is(c: &Cluster, want: &str) -> Res<()> {
    let l = c.wait_healthy(Duration::from_secs(60))?;
    if l != want {
        return Err(format!("leader is {l}, expected {want}"));
    }
    Ok(())
}

/// Waits until `want` is the leader and passes HAProxy's check (GET /primary), without
/// waiting for the old primary to stream again: SGDbOps goes on with the old primary's pod.
fn new_leader(c: &Cluster, want: &str) -> Res<()> {
    wait_for(
        "the new leader",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (c.leader().as_deref() == Some(want) && c.member(want).is_primary()).then_some(()),
    )
}

/// Restarts the old primary's pod right after the switchover and records when it was gone,
/// counted from the switchover's PAUSE (`old_pod_gone_after_pause_ms`): the proofs need it
/// gone before the safety net's deadline, else the net (not killed yet) resumes.
fn restart_old_primary(c: &mut Cluster, facts: &mut Facts, since: i64) -> Res<()> {
    let end = c.restart_pod("m1")?;
    let gone = now_us();
    facts.insert("old_primary_pod_killed".into(), end.killed.to_string());
    if let Some(p) = first_pause_after(c, since) {
        facts.insert(
            "old_pod_gone_after_pause_ms".into(),
            format!("{:.0}", ms(gone - p)),
        );
    }
    Ok(())
}

/// The proofs' premise: the old primary's pod (with before-stop's net in it) was gone
/// before the net's deadline.
fn assert_net_died_first(o: &Outcome) {
    let gone: f64 = o
        .fact("old_pod_gone_after_pause_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(
        gone < NET_MAX_PAUSE.as_millis() as f64,
        "inconclusive: the old primary's pod outlived its safety net's deadline: {}",
        o.summary()
    );
}

/// Time (µs) of PgBouncer 1's first PAUSE after `after`.
fn first_pause_after(c: &Cluster, after: i64) -> Option<i64> {
    c.bouncers[0]
        .admin_events()
        .into_iter()
        .find(|e| e.1 == "PAUSE" && e.0 >= after)
        .map(|e| e.0)
}

/// The SGDbOps-like rolling restart: the replica's pod, wait until it streams, switch over
/// to it, the old primary's pod. Returns the end of the bounded wait for the end of the
/// pause: the net's deadline (counted from the PAUSE) plus 3 s, so that a pause still open
/// then has outlived the safety net too.
fn rolling_restart(c: &mut Cluster, facts: &mut Facts) -> Res<i64> {
    leader_is(c, "m1")?;
    let t0 = now_us();
    c.restart_pod("m2")?;
    leader_is(c, "m1")?;
    facts.insert(
        "replica_restart_ms".into(),
        format!("{:.0}", ms(now_us() - t0)),
    );
    let t1 = now_us();
    c.switchover("m1", "m2")?;
    new_leader(c, "m2")?;
    facts.insert("switchover_ms".into(), format!("{:.0}", ms(now_us() - t1)));
    let hooks_on_m2 = c.reconciled.lock().unwrap().iter().any(|r| r.0 == "m2");
    facts.insert(
        "hooks_on_new_primary_at_switchover".into(),
        (c.opts.controller_delay.is_zero() || hooks_on_m2).to_string(),
    );
    restart_old_primary(c, facts, t1)?;
    leader_is(c, "m2")?;
    facts.insert("action_ms".into(), format!("{:.0}", ms(now_us() - t0)));
    let pause = first_pause_after(c, t1).ok_or("no PAUSE during the switchover")?;
    Ok(pause + NET_MAX_PAUSE.as_micros() as i64 + 3_000_000)
}

// ------------------------------------------------------------------ scenarios

/// p1: hooks present from the start in every pod (N = 0): the new primary's on-role-change
/// resumes; no watchdog needed.
fn p1_rolling_restart(p: u8) {
    let (o, _c) = scenario(
        pod_opts("p1-rolling-restart", p, false),
        28,
        Duration::from_secs(3),
        rolling_restart,
    );
    o.assert_clean(WATCHDOG_MAX_PAUSE);
    assert_eq!(o.fact("orc_resumed"), Some("1"), "{}", o.summary());
}

/// p2 (case B): the controller adds the hooks to the restarted replica only after the
/// switchover, so on-role-change never runs on the new primary, and the old primary's
/// pod restart kills its safety net.
fn p2_late_hooks(p: u8, watchdog: bool) {
    let label = if watchdog {
        "p2-late-hooks-watchdog"
    } else {
        "p2-late-hooks"
    };
    let mut opts = pod_opts(label, p, watchdog);
    opts.controller_delay = LATE_HOOKS;
    let (o, _c) = scenario(opts, 25, Duration::from_secs(3), rolling_restart);
    let s = o.summary();
    assert_eq!(
        o.fact("hooks_on_new_primary_at_switchover"),
        Some("false"),
        "{s}"
    );
    assert_eq!(o.fact("orc_resumed"), None, "on-role-change ran: {s}");
    if watchdog {
        o.assert_clean(WATCHDOG_MAX_PAUSE);
    } else {
        // The proof of case B: nothing resumes PgBouncer; its clients wait (no error yet,
        // query_wait_timeout is 120 s) until the harness RESUMEs by hand.
        assert_net_died_first(&o);
        assert_eq!(
            o.fact("resumed_by_hand"),
            Some("true"),
            "case B disproved: {s}"
        );
        assert_eq!(o.failed(), 0, "{s}");
    }
}

/// p3 (case A): the hooks' path to PgBouncer's admin console is cut for 3 s from the
/// switchover's PAUSE on (existing connections keep flowing, so the PAUSE lands): the new
/// primary's RESUME falls inside the cut; then the old primary's pod is restarted. It must
/// end clean with or without a watchdog: on-role-change tries its RESUME again for
/// `--resume-retry` (30 s), past the cut. (With a RESUME tried once, this was the proof of
/// case A: the net died with the old primary's pod and PgBouncer stayed paused.)
fn p3_resume_fails(p: u8, watchdog: bool) {
    let label = if watchdog {
        "p3-resume-fails-watchdog"
    } else {
        "p3-resume-fails"
    };
    let mut opts = pod_opts(label, p, watchdog);
    opts.admin_proxy = true;
    let (o, _c) = scenario(opts, 25, Duration::from_secs(3), |c, facts| {
        leader_is(c, "m1")?;
        let cut = c.admin_proxies[0].cut_switch();
        let log_path = c.bouncers[0].log_path();
        let t0 = now_us();
        let armed = Arc::new(AtomicBool::new(true));
        let a2 = armed.clone();
        let cutter = std::thread::spawn(move || {
            let bouncer_paused = || {
                read(&log_path).lines().any(|l| {
                    l.contains("PAUSE command issued") && parse_log_ts(l).is_some_and(|t| t >= t0)
                })
            };
            let r = wait_for(
                "the switchover's PAUSE",
                Duration::from_secs(60),
                Duration::from_millis(5),
                || (bouncer_paused() || !a2.load(Ordering::Relaxed)).then_some(()),
            );
            if r.is_ok() && a2.load(Ordering::Relaxed) {
                log("PAUSE seen: cutting the hooks' path to the admin console");
                cut.store(true, Ordering::Relaxed);
                std::thread::sleep(CUT);
                cut.store(false, Ordering::Relaxed);
                log("hooks' path to the admin console restored");
            }
        });
        let sw = c.switchover("m1", "m2").and_then(|_| new_leader(c, "m2"));
        armed.store(false, Ordering::Relaxed);
        let _ = cutter.join();
        sw?;
        facts.insert(
            "admin_connections_cut".into(),
            c.admin_proxies[0].refused().to_string(),
        );
        restart_old_primary(c, facts, t0)?;
        leader_is(c, "m2")?;
        let pause = first_pause_after(c, t0).ok_or("no PAUSE during the switchover")?;
        Ok(pause + NET_MAX_PAUSE.as_micros() as i64 + 3_000_000)
    });
    // The watchdog, or on-role-change trying its RESUME again past the cut (--resume-retry).
    o.assert_clean(WATCHDOG_MAX_PAUSE);
}

/// p4 (case C): the primary's pod is deleted under load: SIGTERM to its init, the grace
/// period, SIGKILL; then the StatefulSet's fresh pod for it. HAProxy does not cut
/// sessions here (see `Opts::haproxy_cut_sessions`), so before-stop keeps its REST source.
fn p4_delete_primary_pod(p: u8, watchdog: bool) {
    let label = if watchdog {
        "p4-delete-primary-pod-watchdog"
    } else {
        "p4-delete-primary-pod"
    };
    let opts = pod_opts(label, p, watchdog);
    let (o, _c) = scenario(opts, 25, Duration::from_secs(3), |c, facts| {
        leader_is(c, "m1")?;
        let t0 = now_us();
        let g = c.opts.grace;
        let end = c.delete_pod("m1", g)?;
        facts.insert("pod_killed".into(), end.killed.to_string());
        facts.insert("pod_gone_ms".into(), format!("{:.0}", ms(end.took_us)));
        leader_is(c, "m2")?;
        facts.insert("failover_ms".into(), format!("{:.0}", ms(now_us() - t0)));
        c.start_pod("m1")?;
        leader_is(c, "m2")?;
        let pause = first_pause_after(c, t0).unwrap_or(now_us());
        Ok(pause + NET_MAX_PAUSE.as_micros() as i64 + 3_000_000)
    });
    if watchdog {
        o.assert_clean(WATCHDOG_MAX_PAUSE);
    } else {
        let s = o.summary();
        assert_eq!(o.failed(), 0, "{s}");
        assert_eq!(o.pgbench.aborted_clients, 0, "{s}");
        assert!(!o.paused_at_end, "{s}");
    }
}

/// p5 (case C, the hard half): the primary's pod is deleted while before-stop drains (a
/// transaction held open, --pause-timeout 10 s) and the grace period (2 s) ends first: SIGKILL
/// to the pod's init kills before-stop, its net, Patroni and Postgres. The leader key
/// stays until Patroni's ttl (20 s) runs out; only then does the replica take over (and its
/// on-role-change RESUMEs). The transaction held open is lost with its server: unavoidable.
fn p5_kill_while_draining(p: u8, watchdog: bool) {
    let label = if watchdog {
        "p5-kill-while-draining-watchdog"
    } else {
        "p5-kill-while-draining"
    };
    let mut opts = pod_opts(label, p, watchdog);
    opts.grace = Duration::from_secs(2);
    opts.hook_env
        .push(("HOOKS_PAUSE_TIMEOUT".into(), "10s".into()));
    let (o, _c) = scenario_with(opts, 32, true, Duration::from_secs(3), |c, facts| {
        leader_is(c, "m1")?;
        let t0 = now_us();
        let g = c.opts.grace;
        let end = c.delete_pod("m1", g)?;
        facts.insert("pod_killed".into(), end.killed.to_string());
        // ttl 20 s: the replica takes the key only after it has expired
        let l = c.wait_healthy(Duration::from_secs(60))?;
        if l != "m2" {
            return Err(format!("leader is {l}, expected m2"));
        }
        facts.insert("failover_ms".into(), format!("{:.0}", ms(now_us() - t0)));
        c.start_pod("m1")?;
        leader_is(c, "m2")?;
        let pause = first_pause_after(c, t0).ok_or("no PAUSE")?;
        Ok(pause + 30_000_000)
    });
    let s = o.summary();
    assert_eq!(
        o.fact("pod_killed"),
        Some("true"),
        "grace not exceeded: {s}"
    );
    assert_eq!(o.fact("long_txn"), Some("failed"), "{s}");
    if watchdog {
        // Guaranteed: the pause is bounded and PgBouncer is not paused at the end. Clients
        // queued then may fail while no primary exists (recorded, not asserted).
        o.assert_pauses(WATCHDOG_MAX_PAUSE);
    } else {
        // The hooks alone: PgBouncer stays paused until the replica's promotion (ttl), far
        // beyond --max-pause, and then its on-role-change resumes.
        assert_eq!(o.fact("resumed_by_hand"), Some("false"), "{s}");
        assert!(
            o.longest_pause_us() > (WATCHDOG_MAX_PAUSE + PAUSE_SLACK).as_micros() as i64,
            "case C (kill while draining) disproved: {s}"
        );
        assert!(!o.paused_at_end, "{s}");
    }
}

/// p6 (issue 15): two switchovers back to back, watchdog on: m1→m2, and as soon as PgBouncer
/// is resumed and m1 runs as a replica again, m2→m1. The second pause begins while the
/// watchdog's last view of the primary is still fresh from the first: it must be judged
/// against the primary that drains now (m2), so nothing RESUMEs while m2 drains.
fn p6_back_to_back(p: u8) {
    let (o, _c) = scenario(
        pod_opts("p6-back-to-back-watchdog", p, true),
        30,
        Duration::from_secs(3),
        |c, facts| {
            leader_is(c, "m1")?;
            let t0 = now_us();
            c.switchover("m1", "m2")?;
            new_leader(c, "m2")?;
            let resumed = wait_for(
                "the first RESUME",
                Duration::from_secs(30),
                Duration::from_millis(20),
                || {
                    c.bouncers[0]
                        .admin_events()
                        .into_iter()
                        .find(|e| e.1 == "RESUME" && e.0 >= t0)
                        .map(|e| e.0)
                },
            )?;
            wait_for(
                "m1 running as a replica",
                Duration::from_secs(60),
                Duration::from_millis(50),
                || {
                    let v = c.cluster_json()?;
                    v["members"].as_array()?.iter().find(|m| {
                        m["name"] == "m1"
                            && m["role"] != "leader"
                            && (m["state"] == "streaming" || m["state"] == "running")
                    })?;
                    Some(())
                },
            )?;
            let t1 = now_us();
            c.switchover("m2", "m1")?;
            new_leader(c, "m1")?;
            let second = first_pause_after(c, t1).ok_or("no second PAUSE")?;
            facts.insert(
                "second_pause_after_first_resume_ms".into(),
                format!("{:.0}", ms(second - resumed)),
            );
            Ok(second + 10_000_000)
        },
    );
    let s = o.summary();
    o.assert_clean(WATCHDOG_MAX_PAUSE);
    assert_eq!(o.spans.len(), 2, "two pauses: {s}");
    // Each pause was the hooks' and was ended by them: on-role-change, or the watchdog when
    // its route reached the new primary first (then on-role-change finds nothing to resume).
    let c = _c.0.as_ref().expect("the cluster");
    let dog = events::parse(&read(&c.bouncers[0].dir.join("watchdog.log")));
    let seen = events::select(&dog, &[("event", "watchdog"), ("action", "pause-seen")]);
    assert_eq!(seen.len(), 2, "{s}");
    assert!(seen.iter().all(|e| e["owner"] == "hooks"), "{seen:?}");
    let by_watchdog = events::select(&dog, &[("event", "watchdog"), ("action", "resume")]);
    assert!(
        by_watchdog.iter().all(|e| e["reason"] == "new-primary"),
        "a RESUME at --max-pause: {by_watchdog:?}"
    );
    let orc: usize = o.fact("orc_resumed").map_or(0, |n| n.parse().unwrap());
    assert_eq!(orc + by_watchdog.len(), 2, "{s}");
}

macro_rules! per_patroni {
    ($($(#[$m:meta])* $name:ident => $body:expr),* $(,)?) => {
        mod patroni3 { $( $(#[$m])* #[test] fn $name() { if pph_support::cluster::runs(stringify!($name), 3) { let _g = super::serial(); let f: fn(u8) = $body; f(3) } } )* }
        mod patroni4 { $( $(#[$m])* #[test] fn $name() { if pph_support::cluster::runs(stringify!($name), 4) { let _g = super::serial(); let f: fn(u8) = $body; f(4) } } )* }
    };
}

// Must pass (Patroni 3 and 4).
per_patroni! {
    p1_rolling_restart => super::p1_rolling_restart,
    p4_delete_primary_pod_watchdog => |p| super::p4_delete_primary_pod(p, true),
    p2_late_hooks_watchdog => |p| super::p2_late_hooks(p, true),
    p3_resume_fails_watchdog => |p| super::p3_resume_fails(p, true),
    p5_kill_while_draining_watchdog => |p| super::p5_kill_while_draining(p, true),
    p6_back_to_back_watchdog => |p| super::p6_back_to_back(p),
}

/// The proofs of issue 11's cases without a watchdog: what the hooks alone leave behind
/// (asserted, so a change in it shows). Patroni 4 in the suite; Patroni 3 on demand
/// (`--ignored`): the outcome depends on the hooks and the pods, not on Patroni's version.
mod proofs {
    /// Without a watchdog, the pause's mark dies with the deleted pod's safety net: when the
    /// pod is gone before the new primary's on-role-change looks (CI, Patroni 3: gone 1.9 s
    /// after the delete, failover 2.1 s), that pause is indistinguishable from a DBA's and
    /// on-role-change leaves it alone (`orc_left_alone`); when the pod outlives the failover,
    /// on-role-change sees the mark and resumes. A race, so on demand; no client error either
    /// way (they wait).
    #[test]
    #[ignore = "p4 without the watchdog: the mark dies with the pod (a race with the failover): run on demand"]
    fn p4_delete_primary_pod_patroni4() {
        if pph_support::cluster::runs("p4-delete-primary-pod", 4) {
            let _g = super::serial();
            super::p4_delete_primary_pod(4, false)
        }
    }
    #[test]
    #[ignore = "proof of case B without the watchdog (PgBouncer stays paused past --max-pause until resumed by hand): run on demand"]
    fn p2_late_hooks_patroni4() {
        if pph_support::cluster::runs("p2-late-hooks", 4) {
            let _g = super::serial();
            super::p2_late_hooks(4, false)
        }
    }
    #[test]
    fn p3_resume_fails_patroni4() {
        if pph_support::cluster::runs("p3-resume-fails", 4) {
            let _g = super::serial();
            super::p3_resume_fails(4, false)
        }
    }
    #[test]
    #[ignore = "proof of case C without the watchdog (paused about Patroni's ttl): run on demand"]
    fn p5_kill_while_draining_patroni4() {
        if pph_support::cluster::runs("p5-kill-while-draining", 4) {
            let _g = super::serial();
            super::p5_kill_while_draining(4, false)
        }
    }
    #[test]
    #[ignore = "proof on Patroni 3: same outcome as on 4, run on demand"]
    fn p2_late_hooks_patroni3() {
        let _g = super::serial();
        super::p2_late_hooks(3, false)
    }
    #[test]
    #[ignore = "proof on Patroni 3: same outcome as on 4, run on demand"]
    fn p3_resume_fails_patroni3() {
        let _g = super::serial();
        super::p3_resume_fails(3, false)
    }
    #[test]
    #[ignore = "proof on Patroni 3: same outcome as on 4, run on demand"]
    fn p5_kill_while_draining_patroni3() {
        let _g = super::serial();
        super::p5_kill_while_draining(3, false)
    }
}

#[test]
fn pause_spans_from_log_events() {
    let ev = |v: &[(i64, &str)]| -> Vec<(i64, String)> {
        v.iter().map(|(t, e)| (*t, e.to_string())).collect()
    };
    type Case<'a> = (&'a [(i64, &'a str)], i64, &'a [(i64, i64)]);
    let cases: &[Case] = &[
        (&[], 100, &[]),
        (&[(10, "PAUSE"), (15, "RESUME")], 100, &[(10, 5)]),
        // a refused second PAUSE and a RESUME while not paused change nothing
        (
            &[(10, "PAUSE"), (12, "PAUSE"), (15, "RESUME"), (16, "RESUME")],
            100,
            &[(10, 5)],
        ),
        // still paused at the end
        (
            &[(10, "PAUSE"), (15, "RESUME"), (40, "PAUSE")],
            100,
            &[(10, 5), (40, 60)],
        ),
        // a pause ends with the PgBouncer whose pod was deleted
        (
            &[(10, "PAUSE"), (12, "GONE"), (20, "PAUSE"), (30, "RESUME")],
            100,
            &[(10, 2), (20, 10)],
        ),
    ];
    for (events, end, want) in cases {
        assert_eq!(
            workload::pause_spans(&ev(events), *end),
            want.to_vec(),
            "{events:?}"
        );
    }
}
