//! End-to-end on a pod network (issue 16): every pod (both Patroni members, two PgBouncers
//! each with its watchdog sidecar, etcd, the clients) in its own network namespace with its
//! own address; the primary Service `pg` a virtual IP that the node DNATs (iptables, real
//! conntrack) to the pod the endpoints stand-in names, following the Patroni leader after a
//! lag; `pgbouncer-admin` a headless name for both PgBouncer pods; the hooks wired with the
//! manifests' names (configmap/sgcluster.yaml: `PGBOUNCER_URLS=...@pgbouncer-admin:6432`,
//! `HOOKS_UPSTREAM_URLS=...@pg:5432`, `HOOKS_PATRONI_URL=http://127.0.0.1:8009`;
//! configmap/pgbouncer-config.yaml: `* = host=pg port=5432`). A deleted pod's address
//! answers nothing afterwards: connections to it hang instead of being refused.
//!
//! Each scenario runs pgbench -c 4 and a reconnecting probe through PgBouncer 1 (from the
//! clients' pod) and prints one `RESULT` line (also in target/e2e/). Needs root (ip netns).

use pph_support::cluster;

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

/// The watchdogs' --max-pause here (as in tests/e2e_pods.rs).
const WATCHDOG_MAX_PAUSE: Duration = Duration::from_secs(5);
/// before-stop's own safety net (HOOKS_MAX_PAUSE).
const NET_MAX_PAUSE: Duration = Duration::from_secs(15);
/// Measuring slack on a pause bound: PgBouncer's log has ms stamps, the watchdog polls.
const PAUSE_SLACK: Duration = Duration::from_millis(1500);
/// The endpoints stand-in's lag unless a scenario says otherwise.
const LAG: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Outcome {
    scenario: String,
    patroni: u8,
    lag: Duration,
    /// the watchdogs' --max-pause
    max_pause: Duration,
    pgbench: PgbenchResult,
    probe: ProbeResult,
    /// per PgBouncer: its paused intervals (start, length µs), from its log
    spans: Vec<Vec<(i64, i64)>>,
    /// per PgBouncer still running at the end: paused?
    paused_at_end: Vec<bool>,
    action_done: i64,
    facts: Vec<(String, String)>,
}

impl Outcome {
    fn failed(&self) -> u64 {
        self.pgbench.failed + self.pgbench.log_failed
    }
    fn longest_pause_us(&self) -> i64 {
        self.spans.iter().flatten().map(|s| s.1).max().unwrap_or(0)
    }
    fn fact(&self, k: &str) -> Option<&str> {
        self.facts.iter().find(|f| f.0 == k).map(|f| f.1.as_str())
    }

    fn summary(&self) -> String {
        let mut f: Vec<(String, String)> = vec![
            ("scenario".into(), self.scenario.clone()),
            ("patroni".into(), self.patroni.to_string()),
            ("net".into(), format!("pods-lag{}ms", self.lag.as_millis())),
            ("failed".into(), self.failed().to_string()),
            ("aborted".into(), self.pgbench.aborted_clients.to_string()),
            ("probe_errors".into(), self.probe.errors.len().to_string()),
            (
                "longest_stall_ms".into(),
                format!("{:.0}", ms(self.pgbench.stall().0)),
            ),
            (
                "longest_pause_ms".into(),
                format!("{:.0}", ms(self.longest_pause_us())),
            ),
            (
                "paused_at_end".into(),
                self.paused_at_end.iter().any(|p| *p).to_string(),
            ),
            ("processed".into(), self.pgbench.processed.to_string()),
            (
                "pauses".into(),
                self.spans
                    .iter()
                    .map(|s| s.len().to_string())
                    .collect::<Vec<_>>()
                    .join("+"),
            ),
        ];
        // facts named `_...` are for the assertions only
        f.extend(self.facts.iter().filter(|f| !f.0.starts_with('_')).cloned());
        let mut s = String::from("RESULT");
        for (k, v) in f {
            s.push_str(&format!(" {k}={}", v.replace(' ', "_")));
        }
        s
    }

    /// PgBouncer never paused beyond the watchdog's bound (+ slack), none paused at the end.
    fn assert_pauses(&self) {
        let s = self.summary();
        assert!(
            !self.paused_at_end.iter().any(|p| *p),
            "PgBouncer paused at the end: {s}"
        );
        let max = self.max_pause;
        assert!(
            self.longest_pause_us() <= (max + PAUSE_SLACK).as_micros() as i64,
            "PgBouncer paused longer than {max:?} (+{PAUSE_SLACK:?}): {s}"
        );
    }

    /// No client error at all, the action inside the run, pauses bounded.
    fn assert_clean(&self) {
        let s = self.summary();
        let r = &self.pgbench;
        assert!(
            self.action_done + 2_000_000 < r.end_us,
            "the action ended after pgbench: {s}"
        );
        assert!(r.processed > 200, "pgbench barely ran: {s}\n{:?}", r.errors);
        assert_eq!(r.aborted_clients, 0, "aborted clients: {s}\n{:?}", r.errors);
        assert_eq!(self.failed(), 0, "failed transactions: {s}\n{:?}", r.errors);
        assert!(
            self.probe.errors.is_empty(),
            "probe errors: {s}\n{:?}",
            &self.probe.errors[..self.probe.errors.len().min(10)]
        );
        assert!(self.probe.ok > 100, "probe barely ran: {s}");
        self.assert_pauses();
    }

    /// Both PgBouncers (PgBouncer 1 and 2, every one behind `pgbouncer-admin`) were paused
    /// and resumed at least `n` times.
    fn assert_both_paused(&self, n: usize) {
        for (i, sp) in self.spans.iter().enumerate() {
            assert!(
                sp.len() >= n,
                "PgBouncer {} paused {} times, expected {n}: {}",
                i + 1,
                sp.len(),
                self.summary()
            );
        }
    }
}

/// The cluster is stopped (and its pod network removed) when this drops; a panic in flight
/// keeps its logs.
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

type Facts = Vec<(String, String)>;

/// The pod-network options of a scenario. The watchdogs' --max-pause is 5 s, plus the
/// Service's lag when that is longer than the default 1 s: a watchdog that resumes blind at
/// --max-pause while the Service still leads to the old primary (a replica by then) sends
/// PgBouncer's logins there, and every write fails ("cannot execute UPDATE in a read-only
/// transaction", measured with a 5 s lag and a 5 s --max-pause: 4 aborted clients).
fn net_opts(scenario: &str, p: u8, lag: Duration) -> Opts {
    let mut o = Opts::net(&format!("net-{scenario}"), p, lag);
    o.watchdog = Some(if lag > LAG {
        WATCHDOG_MAX_PAUSE + lag
    } else {
        WATCHDOG_MAX_PAUSE
    });
    o.hook_env.push((
        "HOOKS_MAX_PAUSE".into(),
        format!("{}s", NET_MAX_PAUSE.as_secs()),
    ));
    o
}

/// Cluster up on the pod network, pgbench + probe through PgBouncer 1 from the clients'
/// pod (and, with `long_txn`, a transaction held open until the action is over), 3 s,
/// the action, then a bounded wait until every running PgBouncer is out of its pause (the
/// action returns the deadline, µs), pgbench's end, the facts.
fn scenario(
    opts: Opts,
    scenario: &str,
    bench_secs: u64,
    long_txn: bool,
    action: impl FnOnce(&mut Cluster, &mut Facts) -> Res<i64>,
) -> (Outcome, KeepOnFail) {
    if !wants_net() {
        panic!("the pod network needs root (ip netns)");
    }
    let (patroni, lag) = (opts.patroni, opts.net.unwrap_or_default());
    let max_pause = opts.watchdog.unwrap_or(NET_MAX_PAUSE);
    let c = Cluster::start(opts).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let mut guard = KeepOnFail(Some(c));
    let c = guard.0.as_mut().unwrap();
    let to = c.bouncers[0].client_dest(c.app_ns.as_deref());
    let bench =
        Pgbench::start_via(&c.dir, "b1", &to, 4, bench_secs).unwrap_or_else(|e| panic!("{e}"));
    let probe = Probe::start_via(&to, Duration::from_secs(bench_secs + 60));
    let release = Arc::new(AtomicBool::new(false));
    let long = long_txn.then(|| {
        workload::long_transaction_via(&to, release.clone(), Duration::from_secs(bench_secs + 60))
    });
    std::thread::sleep(Duration::from_secs(3));
    let mut facts = Facts::new();
    let action_start = now_us();
    let settle_until = match action(c, &mut facts) {
        Ok(t) => t,
        Err(e) => {
            c.keep = true;
            panic!("scenario action failed: {e}\n(logs in {})", c.dir.display());
        }
    };
    let action_done = now_us();
    facts.push((
        "action_ms".into(),
        format!("{:.0}", ms(action_done - action_start)),
    ));
    release.store(true, Ordering::Relaxed);
    let running: Vec<usize> = (0..c.bouncers.len())
        .filter(|&i| c.bouncers[i].proc.is_some())
        .collect();
    let _ = wait_for(
        "every PgBouncer out of its pause",
        Duration::from_micros((settle_until - now_us()).max(0) as u64),
        Duration::from_millis(100),
        || {
            running
                .iter()
                .all(|&i| !workload::bouncer_paused(&c.bouncers[i]).unwrap_or(true))
                .then_some(())
        },
    );
    if let Some(h) = long {
        let r = h.join().unwrap_or_else(|_| Err("panicked".into()));
        log(format!("long transaction: {r:?}"));
        facts.push((
            "long_txn".into(),
            if r.is_ok() { "ok" } else { "failed" }.into(),
        ));
    }
    let pgbench = bench.finish().unwrap_or_else(|e| panic!("{e}"));
    let probe = probe.finish();
    let end = now_us();
    let probe_stall = workload::longest_stall(
        &probe.commits,
        probe.commits.first().copied().unwrap_or(end),
        end,
    );
    facts.push(("probe_stall_ms".into(), format!("{:.0}", ms(probe_stall.0))));
    let spans = c
        .bouncers
        .iter()
        .map(|b| workload::pause_spans(&b.admin_events(), end))
        .collect();
    let paused_at_end = running
        .iter()
        .map(|&i| {
            c.bouncer_paused(i)
                .unwrap_or_else(|e| panic!("pgbouncer{} state: {e}", i + 1))
        })
        .collect();
    if let Some(e) = &c.endpoints {
        facts.push((
            "endpoint_changes".into(),
            e.changes.lock().unwrap().len().to_string(),
        ));
    }
    let o = Outcome {
        scenario: scenario.into(),
        patroni,
        lag,
        max_pause,
        pgbench,
        probe,
        spans,
        paused_at_end,
        action_done,
        facts,
    };
    cluster::record_result(
        &format!("net-{scenario}-lag{}", lag.as_millis()),
        patroni,
        &o.summary(),
    );
    if std::env::var("PPH_KEEP").is_ok_and(|v| v == "1") {
        c.keep = true;
    }
    (o, guard)
}

fn wants_net() -> bool {
    pph_support::is_root()
}

fn leader_is(c: &Cluster, want: &str) -> Res<()> {
    let l = c.wait_healthy(Duration::from_secs(60))?;
    if l != want {
        return Err(format!("leader is {l}, expected {want}"));
    }
    Ok(())
}

/// Time (µs) of PgBouncer `i`'s first PAUSE after `after`.
fn first_pause_after(c: &Cluster, i: usize, after: i64) -> Option<i64> {
    c.bouncers[i]
        .admin_events()
        .into_iter()
        .find(|e| e.1 == "PAUSE" && e.0 >= after)
        .map(|e| e.0)
}

// ------------------------------------------------------------------ scenarios

/// A switchover m1 -> m2 under load: both PgBouncers paused and resumed, no client error.
fn n_switchover(p: u8, lag: Duration) {
    let (o, _c) = scenario(
        net_opts("switchover", p, lag),
        "switchover",
        25,
        false,
        |c, f| {
            leader_is(c, "m1")?;
            let t0 = now_us();
            c.switchover("m1", "m2")?;
            leader_is(c, "m2")?;
            f.push(("switchover_ms".into(), format!("{:.0}", ms(now_us() - t0))));
            Ok(now_us() + 20_000_000)
        },
    );
    o.assert_clean();
    o.assert_both_paused(1);
}

/// The primary's pod deleted with a grace period (5 s, Patroni stops within it): before-stop
/// pauses, m2 takes over, the StatefulSet's fresh pod (new address) joins as a replica.
fn n_delete_primary(p: u8) {
    let (o, _c) = scenario(
        net_opts("delete-primary", p, LAG),
        "delete-primary",
        30,
        false,
        |c, f| {
            leader_is(c, "m1")?;
            let t0 = now_us();
            let g = c.opts.grace;
            let end = c.delete_pod("m1", g)?;
            f.push(("pod_killed".into(), end.killed.to_string()));
            f.push(("pod_gone_ms".into(), format!("{:.0}", ms(end.took_us))));
            c.start_pod("m1")?;
            leader_is(c, "m2")?;
            f.push(("failover_ms".into(), format!("{:.0}", ms(now_us() - t0))));
            Ok(now_us() + 20_000_000)
        },
    );
    o.assert_clean();
    o.assert_both_paused(1);
}

/// The primary's pod deleted without grace (`--grace-period=0 --force`: SIGKILL): no
/// before-stop, Postgres gone mid-transaction, its address silent; the leader key (and so the
/// Service's endpoint) stays on the dead pod until Patroni's ttl (20 s) runs out. What was in
/// flight on the killed primary is lost; afterwards the clients must work again, and
/// PgBouncer must never be left paused.
fn n_kill_primary(p: u8) {
    let (o, _c) = scenario(
        net_opts("kill-primary", p, LAG),
        "kill-primary",
        60,
        false,
        |c, f| {
            leader_is(c, "m1")?;
            let t0 = now_us();
            let end = c.delete_pod("m1", Duration::ZERO)?;
            f.push(("pod_killed".into(), end.killed.to_string()));
            f.push(("_killed_at".into(), t0.to_string()));
            let l = c.wait_healthy(Duration::from_secs(60)).or_else(|_| {
                // the old pod is gone: healthy means m2 leads
                wait_for(
                    "m2 leads",
                    Duration::from_secs(60),
                    Duration::from_millis(200),
                    || (c.leader().as_deref() == Some("m2")).then_some("m2".to_string()),
                )
            })?;
            f.push(("new_leader".into(), l));
            f.push(("failover_ms".into(), format!("{:.0}", ms(now_us() - t0))));
            let m2 = c.member("m2").ip;
            // the stand-in applies the new leader `lag` after Patroni reports it
            let moved = wait_for(
                "the Service to reach m2",
                Duration::from_secs(15),
                Duration::from_millis(50),
                || {
                    c.endpoints.as_ref().and_then(|e| {
                        e.changes
                            .lock()
                            .unwrap()
                            .iter()
                            .find(|ch| ch.0 > t0 && ch.1 == m2)
                            .map(|ch| ch.0)
                    })
                },
            )?;
            f.push(("service_moved_ms".into(), format!("{:.0}", ms(moved - t0))));
            f.push(("_moved_at".into(), moved.to_string()));
            c.start_pod("m1")?;
            leader_is(c, "m2")?;
            Ok(now_us() + 20_000_000)
        },
    );
    let s = o.summary();
    o.assert_pauses();
    assert_eq!(o.fact("pod_killed"), Some("true"), "{s}");
    // What was in flight on the killed primary is lost (pgbench aborts a client on its first
    // error: at most its 4 clients; the probe reconnects: at most a few errors), nothing else.
    assert!(o.pgbench.aborted_clients <= 4, "{s}");
    // The probe sees errors while no server answers: PgBouncer fails logins fast with its
    // cached error (server_login_retry) once a connect to the dying pod was refused. None
    // later than 2 s (server_login_retry 1 s, and slack) after the Service reached m2.
    let moved: i64 = o
        .fact("_moved_at")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let late: Vec<_> = o
        .probe
        .errors
        .iter()
        .filter(|e| e.0 > moved + 2_000_000)
        .collect();
    assert!(
        late.is_empty(),
        "probe errors after the Service moved: {s}\n{late:?}"
    );
    // after the failover the clients work again: the probe committed in the last 10 s
    let last = o.probe.commits.last().copied().unwrap_or(0);
    assert!(
        last > o.pgbench.end_us - 10_000_000,
        "the probe never recovered: {s}"
    );
    assert!(o.pgbench.processed > 200, "{s}");
}

/// A PgBouncer pod deleted while PgBouncer is paused for a switchover (with the hooks'
/// PAUSE held open by a transaction, so the pause lasts): the new primary's on-role-change
/// resumes every address `pgbouncer-admin` names, one of which now answers nothing (or, once
/// the Deployment's replacement is up, a fresh PgBouncer that was never paused).
fn n_delete_bouncer_in_pause(p: u8) {
    let mut opts = net_opts("delete-pgbouncer-in-pause", p, LAG);
    opts.hook_env
        .push(("HOOKS_PAUSE_TIMEOUT".into(), "3s".into()));
    // The switchover waits out the held transaction (3 s) before Postgres stops: a 5 s
    // --max-pause ended the pause while the old primary shut down (CI, Patroni 3: 4 clients
    // aborted, "terminating connection due to administrator command"). This scenario is about
    // the deleted PgBouncer pod, so the watchdog's bound stays out of its way.
    opts.watchdog = Some(Duration::from_secs(20));
    let (o, _c) = scenario(opts, "delete-pgbouncer-in-pause", 30, true, |c, f| {
        leader_is(c, "m1")?;
        let t0 = now_us();
        // switchover in the background; delete PgBouncer 2's pod once it is paused
        let paused = {
            let log2 = c.bouncers[1].log_path();
            move || {
                read(&log2).lines().any(|l| {
                    l.contains("PAUSE command issued") && parse_log_ts(l).is_some_and(|t| t >= t0)
                })
            }
        };
        let sw_thread = {
            let mut cmd = c.switchover_cmd("m1", "m2");
            std::thread::spawn(move || run_ok(&mut cmd, Duration::from_secs(90)))
        };
        wait_for(
            "PgBouncer 2 paused",
            Duration::from_secs(60),
            Duration::from_millis(5),
            || paused().then_some(()),
        )?;
        let g = Duration::from_secs(1);
        c.delete_bouncer_pod(1, g);
        f.push((
            "pgbouncer2_deleted_after_pause_ms".into(),
            format!(
                "{:.0}",
                ms(now_us() - first_pause_after(c, 1, t0).unwrap_or(t0))
            ),
        ));
        sw_thread
            .join()
            .map_err(|_| "switchover thread panicked".to_string())??;
        leader_is(c, "m2")?;
        c.start_bouncer_pod(1)?;
        f.push(("switchover_ms".into(), format!("{:.0}", ms(now_us() - t0))));
        Ok(now_us() + 20_000_000)
    });
    let s = o.summary();
    // The held transaction fails at the pause timeout; everything else is clean.
    assert_eq!(o.fact("long_txn"), Some("failed"), "{s}");
    o.assert_clean();
    assert!(!o.spans[0].is_empty(), "PgBouncer 1 never paused: {s}");
}

/// `patronictl restart` of the primary in place (on_restart): paused and resumed, no error.
fn n_restart_primary(p: u8) {
    let (o, _c) = scenario(
        net_opts("restart-primary", p, LAG),
        "restart-primary",
        25,
        false,
        |c, _| {
            leader_is(c, "m1")?;
            c.restart("m1")?;
            leader_is(c, "m1")?;
            Ok(now_us() + 20_000_000)
        },
    );
    o.assert_clean();
}

/// `patronictl restart` of the replica: no PAUSE at all, no error.
fn n_restart_replica(p: u8) {
    let (o, _c) = scenario(
        net_opts("restart-replica", p, LAG),
        "restart-replica",
        20,
        false,
        |c, _| {
            leader_is(c, "m1")?;
            c.restart("m2")?;
            leader_is(c, "m1")?;
            Ok(now_us())
        },
    );
    o.assert_clean();
    assert_eq!(
        o.longest_pause_us(),
        0,
        "a replica restart paused: {}",
        o.summary()
    );
}

/// Two switchovers back to back (m1 -> m2, then at once m2 -> m1).
fn n_two_switchovers(p: u8) {
    let (o, _c) = scenario(
        net_opts("two-switchovers", p, LAG),
        "two-switchovers",
        30,
        false,
        |c, _| {
            leader_is(c, "m1")?;
            c.switchover("m1", "m2")?;
            wait_for(
                "m2 leads",
                Duration::from_secs(60),
                Duration::from_millis(100),
                || {
                    (c.leader().as_deref() == Some("m2") && c.member("m2").is_primary())
                        .then_some(())
                },
            )?;
            leader_is(c, "m2")?;
            c.switchover("m2", "m1")?;
            leader_is(c, "m1")?;
            Ok(now_us() + 20_000_000)
        },
    );
    o.assert_clean();
    o.assert_both_paused(2);
}

/// SGDbOps-like rolling restart: the replica's pod, wait until it streams, switchover to it,
/// the old primary's pod. `late`: the controller stand-in adds the hooks only 30 s after each
/// pod start (StackGres' start-patroni.sh, then the next reconcile), so the new primary's
/// on_role_change never runs; the watchdogs end the pause when `pg` reaches it.
fn n_rolling_restart(p: u8, late: bool) {
    let name = if late {
        "rolling-restart-late-hooks"
    } else {
        "rolling-restart"
    };
    let mut opts = net_opts(name, p, LAG);
    if late {
        opts.controller_delay = Duration::from_secs(30);
    }
    let (o, _c) = scenario(opts, name, 60, false, |c, f| {
        leader_is(c, "m1")?;
        c.restart_pod("m2")?;
        leader_is(c, "m1")?;
        let t1 = now_us();
        c.switchover("m1", "m2")?;
        wait_for(
            "m2 leads",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || (c.leader().as_deref() == Some("m2") && c.member("m2").is_primary()).then_some(()),
        )?;
        let hooks_on_m2 = c.reconciled.lock().unwrap().iter().any(|r| r.0 == "m2");
        f.push((
            "hooks_on_new_primary".into(),
            (c.opts.controller_delay.is_zero() || hooks_on_m2).to_string(),
        ));
        c.restart_pod("m1")?;
        leader_is(c, "m2")?;
        let pause = first_pause_after(c, 0, t1).ok_or("no PAUSE at the switchover")?;
        Ok(pause + NET_MAX_PAUSE.as_micros() as i64 + 3_000_000)
    });
    o.assert_clean();
    if late {
        assert_eq!(
            o.fact("hooks_on_new_primary"),
            Some("false"),
            "{}",
            o.summary()
        );
    }
}

/// The new primary's RESUME refused: from the PAUSE on, for 3 s, the node rejects (TCP
/// reset) every connection from the new primary's pod to port 6432, as a NetworkPolicy
/// flap would; on-role-change tries again (--resume-retry), the watchdogs bound it anyway.
fn n_resume_refused(p: u8) {
    let (o, _c) = scenario(
        net_opts("resume-refused", p, LAG),
        "resume-refused",
        25,
        false,
        |c, f| {
            leader_is(c, "m1")?;
            let node = c.net.as_ref().ok_or("no pod network")?.node.clone();
            let m2 = c.member("m2").ip.ok_or("m2 has no address")?;
            let log1 = c.bouncers[0].log_path();
            let t0 = now_us();
            let armed = Arc::new(AtomicBool::new(true));
            let a2 = armed.clone();
            let cutter = std::thread::spawn(move || {
                let paused = || {
                    read(&log1).lines().any(|l| {
                        l.contains("PAUSE command issued")
                            && parse_log_ts(l).is_some_and(|t| t >= t0)
                    })
                };
                let r = wait_for(
                    "the switchover's PAUSE",
                    Duration::from_secs(60),
                    Duration::from_millis(5),
                    || (paused() || !a2.load(Ordering::Relaxed)).then_some(()),
                );
                if r.is_ok() && a2.load(Ordering::Relaxed) {
                    let _ = cluster::netns::reject(&node, m2, 6432, true);
                    std::thread::sleep(Duration::from_secs(3));
                    let _ = cluster::netns::reject(&node, m2, 6432, false);
                }
            });
            let sw = c.switchover("m1", "m2").and_then(|_| leader_is(c, "m2"));
            armed.store(false, Ordering::Relaxed);
            let _ = cutter.join();
            sw?;
            f.push(("cut_ms".into(), "3000".into()));
            Ok(now_us() + 20_000_000)
        },
    );
    o.assert_clean();
    o.assert_both_paused(1);
}

macro_rules! per_patroni {
    ($($(#[$m:meta])* $name:ident => $body:expr),* $(,)?) => {
        mod patroni3 { $( $(#[$m])* #[test] fn $name() { if pph_support::cluster::wants(3) { let _g = super::serial(); let f: fn(u8) = $body; f(3) } } )* }
        mod patroni4 { $( $(#[$m])* #[test] fn $name() { if pph_support::cluster::wants(4) { let _g = super::serial(); let f: fn(u8) = $body; f(4) } } )* }
    };
}

per_patroni! {
    switchover => |p| super::n_switchover(p, super::LAG),
    delete_primary_pod => super::n_delete_primary,
    kill_primary_pod => super::n_kill_primary,
    delete_pgbouncer_pod_in_pause => super::n_delete_bouncer_in_pause,
    restart_primary => super::n_restart_primary,
    restart_replica => super::n_restart_replica,
    two_switchovers => super::n_two_switchovers,
    rolling_restart => |p| super::n_rolling_restart(p, false),
    rolling_restart_late_hooks => |p| super::n_rolling_restart(p, true),
    resume_refused => super::n_resume_refused,
}

/// The endpoints stand-in's lag, on the switchover: none and 5 s (1 s is `switchover`).
/// Patroni 4 only: the lag is the Service's, not Patroni's.
mod lag {
    #[test]
    fn switchover_lag0_patroni4() {
        if pph_support::cluster::wants(4) {
            let _g = super::serial();
            super::n_switchover(4, std::time::Duration::ZERO)
        }
    }
    #[test]
    fn switchover_lag5s_patroni4() {
        if pph_support::cluster::wants(4) {
            let _g = super::serial();
            super::n_switchover(4, std::time::Duration::from_secs(5))
        }
    }
}

/// A test process killed before its Drop leaves its namespaces; the next `PodNet::new`
/// sweeps every `pph-<pid>-*` namespace (and hosts directory) whose process is gone, and
/// leaves those of live processes alone.
#[test]
fn stale_namespaces_are_swept() {
    if !wants_net() {
        panic!("the pod network needs root (ip netns)");
    }
    let _g = serial();
    // a pid that is certainly gone: a child we started and reaped
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("pph-{dead}-0-node");
    let live = format!("pph-{}-999-live", std::process::id());
    for ns in [&stale, &live] {
        run_ok(
            std::process::Command::new("ip").args(["netns", "add", ns]),
            Duration::from_secs(10),
        )
        .unwrap();
        std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
    }
    cluster::netns::sweep();
    let exists = |ns: &str| std::path::Path::new(&format!("/run/netns/{ns}")).exists();
    let stale_left =
        exists(&stale) || std::path::Path::new(&format!("/etc/netns/{stale}")).exists();
    let live_left = exists(&live);
    let _ = run(
        std::process::Command::new("ip").args(["netns", "del", &live]),
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_dir_all(format!("/etc/netns/{live}"));
    assert!(!stale_left, "stale namespace {stale} not swept");
    assert!(live_left, "a live test's namespace {live} was swept");
}
