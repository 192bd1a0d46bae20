//! End-to-end: real etcd + Patroni (3.x and 4.x) + PostgreSQL 15 + HAProxy + PgBouncer
//! under pgbench, with the release hook binaries configured in Patroni exactly as a user
//! would. See docs/e2e.md.
//!
//! Select Patroni with PPH_PATRONI=3|4|both (default both). Each scenario starts its own
//! cluster; a static mutex runs them one at a time.
//!
//! Ignored (run by scripts/bench and scripts/demo):
//!   cargo test --release --test e2e -- --ignored --nocapture bench_switchover
//!   cargo test --release --test e2e -- --ignored --nocapture demo_switchover

use pph_support::cluster;

use std::sync::Mutex;
use std::time::Duration;

use cluster::bench::{self as cbench, RunStats};
use cluster::util::*;
use cluster::workload::{self, Pgbench, PgbenchResult, Probe, ProbeResult};
use cluster::{Cluster, Hooks, Opts, ViewSource};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// pgbench -T for every scenario (the issue fixes it at 40 s).
fn bench_secs() -> u64 {
    std::env::var("PPH_PGBENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
}

/// What a scenario observed.
#[derive(Debug, Default)]
struct Outcome {
    label: String,
    patroni: u8,
    pgbench: Vec<PgbenchResult>,
    probes: Vec<ProbeResult>,
    /// longest gap between commits over the whole run (µs) and when it began
    stall_us: i64,
    stall_at: i64,
    /// [from, to] of the part of the scenario a stall bound applies to, and its stall
    window: Option<(i64, i64)>,
    window_stall_us: i64,
    /// PgBouncer PAUSE/RESUME events (per bouncer), from PgBouncer's log
    events: Vec<Vec<(i64, String)>>,
    paused_at_end: Vec<bool>,
    long_txn: Option<Result<(), String>>,
    /// when the action (and its wait for a healthy cluster) ended
    action_done: i64,
    /// before-stop summaries whose view came from patronictl (REST failed or lost the race)
    rest_fallbacks: Vec<String>,
}

impl Outcome {
    fn failed_txns(&self) -> u64 {
        self.pgbench.iter().map(|r| r.failed + r.log_failed).sum()
    }
    fn aborted(&self) -> u64 {
        self.pgbench.iter().map(|r| r.aborted_clients).sum()
    }
    fn probe_errors(&self) -> usize {
        self.probes.iter().map(|p| p.errors.len()).sum()
    }
    fn pauses_in_window(&self) -> usize {
        let Some((a, b)) = self.window else { return 0 };
        self.events
            .iter()
            .flatten()
            .filter(|(t, e)| e == "PAUSE" && *t >= a && *t <= b)
            .count()
    }

    fn summary(&self) -> String {
        format!(
            "RESULT {} patroni{}: failed_txns={} aborted_clients={} probe_errors={} processed={} longest_stall_ms={:.0} (at {}){} pauses={} resumes={} paused_at_end={:?} rest_fallbacks={}{}",
            self.label,
            self.patroni,
            self.failed_txns(),
            self.aborted(),
            self.probe_errors(),
            self.pgbench.iter().map(|r| r.processed).sum::<u64>(),
            ms(self.stall_us),
            fmt_hms(self.stall_at),
            match self.window {
                Some(_) => format!(" window_stall_ms={:.0}", ms(self.window_stall_us)),
                None => String::new(),
            },
            self.events.iter().flatten().filter(|e| e.1 == "PAUSE").count(),
            self.events.iter().flatten().filter(|e| e.1 == "RESUME").count(),
            self.paused_at_end,
            self.rest_fallbacks.len(),
            match &self.long_txn {
                Some(r) => format!(" long_txn={r:?}"),
                None => String::new(),
            }
        )
    }

    fn record(&self) {
        cluster::record_result(&self.label, self.patroni, &self.summary());
    }

    /// Assertions every scenario shares (scenario 6 relaxes the long transaction only).
    fn assert_clean(&self) {
        let s = self.summary();
        for r in &self.pgbench {
            // the action and its recovery must lie inside the measured run, else a
            // bound on stalls or errors would pass vacuously
            assert!(
                self.action_done + 2_000_000 < r.end_us,
                "the action ended {:.1} s after pgbench {} did: {s}",
                (self.action_done - r.end_us) as f64 / 1e6,
                r.tag
            );
            assert!(
                r.processed > 200,
                "pgbench {} barely ran: {s}\n{:?}",
                r.tag,
                r.errors
            );
            assert!(
                r.exit_ok,
                "pgbench {} exited with an error: {s}\n{:?}",
                r.tag, r.errors
            );
        }
        assert_eq!(
            self.aborted(),
            0,
            "aborted pgbench clients: {s}\n{:?}",
            self.pgbench_errors()
        );
        assert_eq!(
            self.failed_txns(),
            0,
            "failed transactions: {s}\n{:?}",
            self.pgbench_errors()
        );
        assert_eq!(
            self.probe_errors(),
            0,
            "reconnecting client saw errors: {s}\n{:?}",
            self.probes
                .iter()
                .flat_map(|p| p.errors.iter())
                .take(10)
                .collect::<Vec<_>>()
        );
        assert!(
            self.probes.iter().all(|p| p.ok > 100),
            "probe barely ran: {s}"
        );
        assert!(
            self.paused_at_end.iter().all(|p| !p),
            "PgBouncer left paused: {s}"
        );
    }

    /// before-stop read the view from its own Patroni's REST API, never falling back to
    /// patronictl (the member being stopped still answers GET /cluster and /history and
    /// holds the leader key). Not for SIGTERM: Patroni shuts its REST API down first.
    fn assert_rest_view(&self) {
        assert!(
            self.rest_fallbacks.is_empty(),
            "before-stop fell back to patronictl: {}\n{:?}",
            self.summary(),
            self.rest_fallbacks
        );
    }

    fn pgbench_errors(&self) -> Vec<String> {
        self.pgbench
            .iter()
            .flat_map(|r| r.errors.iter().take(10).cloned())
            .collect()
    }
}

/// Runs one scenario: cluster up, pgbench + probe on every PgBouncer, `warmup`, then
/// `action` (returns the window a stall bound applies to, if any), then collects.
fn scenario(
    opts: Opts,
    warmup: Duration,
    long_txn: bool,
    action: impl FnOnce(&mut Cluster) -> Res<Option<(i64, i64)>>,
) -> (Outcome, KeepOnFail) {
    let mut c = Cluster::start(opts.clone()).unwrap_or_else(|e| panic!("cluster start: {e}"));
    let secs = bench_secs();
    let benches: Vec<Pgbench> = c
        .bouncers
        .iter()
        .enumerate()
        .map(|(i, b)| {
            Pgbench::start(&c.dir, &format!("b{}", i + 1), b.port, 4, secs)
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let probes: Vec<Probe> = c
        .bouncers
        .iter()
        .map(|b| Probe::start(b.port, Duration::from_secs(secs + 30)))
        .collect();
    // scenario 6: a transaction held open until the action is over (then COMMIT fails
    // if, and only if, the old primary killed it)
    let release = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let long = long_txn.then(|| {
        workload::long_transaction(
            c.bouncers[0].port,
            release.clone(),
            Duration::from_secs(secs + 30),
        )
    });
    std::thread::sleep(warmup);
    let window = match action(&mut c) {
        Ok(w) => w,
        Err(e) => {
            c.keep = true;
            panic!("scenario action failed: {e}\n(logs in {})", c.dir.display());
        }
    };
    let action_done = now_us();
    release.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<PgbenchResult> = benches
        .into_iter()
        .map(|b| b.finish().unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let probes: Vec<ProbeResult> = probes.into_iter().map(|p| p.finish()).collect();
    let long_res = long.map(|h| {
        h.join()
            .unwrap_or_else(|_| Err("long txn thread panicked".into()))
    });
    // PgBouncer's PAUSE/RESUME log lines, read before the end check (which may RESUME)
    let events: Vec<Vec<(i64, String)>> = c.bouncers.iter().map(|b| b.admin_events()).collect();
    let paused_at_end: Vec<bool> = (0..c.bouncers.len())
        .map(|i| {
            c.bouncer_paused(i)
                .unwrap_or_else(|e| panic!("pgbouncer state: {e}"))
        })
        .collect();
    // per-run stall: the worst of the pgbench instances (each must keep flowing)
    let (stall_us, stall_at) = results.iter().map(|r| r.stall()).max().unwrap_or((0, 0));
    let window_stall_us = window
        .map(|(a, b)| {
            results
                .iter()
                .map(|r| workload::longest_stall(&r.commits, a, b).0)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let o = Outcome {
        label: opts.label.clone(),
        patroni: opts.patroni,
        pgbench: results,
        probes,
        stall_us,
        stall_at,
        window,
        window_stall_us,
        events,
        paused_at_end,
        long_txn: long_res,
        action_done,
        rest_fallbacks: c.rest_fallbacks(),
    };
    o.record();
    if std::env::var("PPH_KEEP").is_ok_and(|v| v == "1") {
        c.keep = true;
    }
    // The caller holds the guard over its assertions: a failing one keeps the logs.
    (o, KeepOnFail(Some(c)))
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

fn leader_is(c: &Cluster, want: &str) -> Res<()> {
    let l = c.wait_healthy(Duration::from_secs(60))?;
    if l != want {
        return Err(format!("leader is {l}, expected {want}"));
    }
    Ok(())
}

// ------------------------------------------------------------------ scenarios

fn s1_switchover(p: u8) {
    let (o, _c) = scenario(
        Opts::new("s1-switchover", p, Hooks::On),
        Duration::from_secs(8),
        false,
        |c| {
            leader_is(c, "m1")?;
            c.switchover("m1", "m2")?;
            leader_is(c, "m2")?;
            Ok(None)
        },
    );
    o.assert_clean();
    o.assert_rest_view();
}

fn s2_restart_primary(p: u8) {
    let (o, _c) = scenario(
        Opts::new("s2-restart-primary", p, Hooks::On),
        Duration::from_secs(8),
        false,
        |c| {
            leader_is(c, "m1")?;
            c.restart("m1")?;
            leader_is(c, "m1")?;
            Ok(None)
        },
    );
    o.assert_clean();
    o.assert_rest_view();
}

fn s3_restart_replica(p: u8) {
    let (o, _c) = scenario(
        Opts::new("s3-restart-replica", p, Hooks::On),
        Duration::from_secs(8),
        false,
        |c| {
            leader_is(c, "m1")?;
            let a = now_us();
            c.restart("m2")?;
            leader_is(c, "m1")?;
            Ok(Some((a, now_us() + 2_000_000)))
        },
    );
    o.assert_clean();
    o.assert_rest_view();
    assert_eq!(
        o.pauses_in_window(),
        0,
        "PgBouncer paused for a replica restart: {}",
        o.summary()
    );
    assert!(
        o.stall_us < 1_000_000,
        "stall >= 1 s on a replica restart: {}",
        o.summary()
    );
}

fn s4_restart_former_leader(p: u8) {
    let (o, _c) = scenario(
        Opts::new("s4-restart-former-leader", p, Hooks::On),
        Duration::from_secs(4),
        false,
        |c| {
            leader_is(c, "m1")?;
            c.switchover("m1", "m2")?;
            leader_is(c, "m2")?;
            c.switchover("m2", "m1")?;
            leader_is(c, "m1")?;
            // m2 is a replica now but was leader earlier: its restart must not pause
            std::thread::sleep(Duration::from_secs(2));
            let a = now_us();
            c.restart("m2")?;
            leader_is(c, "m1")?;
            Ok(Some((a, now_us() + 2_000_000)))
        },
    );
    o.assert_clean();
    o.assert_rest_view();
    assert_eq!(
        o.pauses_in_window(),
        0,
        "PgBouncer paused for a former leader's restart: {}",
        o.summary()
    );
    assert!(
        o.window_stall_us < 1_000_000,
        "stall >= 1 s on the former leader's restart: {}",
        o.summary()
    );
}

/// Pod deletion, wired as in production: before-stop has its own Patroni's REST API. On
/// SIGTERM Patroni shuts that API down before it stops Postgres (`Patroni._shutdown`:
/// `api.shutdown()`, then `ha.shutdown()`), yet the socket stays open: a GET is accepted and
/// never answered, so before-stop starts patronictl after its 50 ms head start and pauses on
/// patronictl's answer (about 1 s). HAProxy here keeps established sessions when its check
/// fails, as a Kubernetes Service does: with `on-marked-down shutdown-sessions` the same REST
/// silence cut the old primary's sessions about 1 s after the SIGTERM, a race against
/// patronictl's start-up that production does not have (and that lost once patronictl took
/// 1.03 s on this machine).
fn s5_sigterm_primary(p: u8) {
    let mut opts = Opts::new("s5-sigterm-primary", p, Hooks::On);
    opts.haproxy_cut_sessions = false;
    let (o, _c) = scenario(opts, Duration::from_secs(8), false, |c| {
        leader_is(c, "m1")?;
        c.sigterm_member("m1")?;
        leader_is(c, "m2")?;
        Ok(None)
    });
    o.assert_clean();
}

/// --pause-timeout for scenario 6 (short so the scenario fits the 40 s run).
const S6_PAUSE_TIMEOUT_S: u64 = 2;

fn s6_long_transaction(p: u8) {
    let mut opts = Opts::new("s6-long-transaction", p, Hooks::On);
    opts.hook_env.push((
        "HOOKS_PAUSE_TIMEOUT".into(),
        format!("{S6_PAUSE_TIMEOUT_S}s"),
    ));
    // the long transaction opens before the switchover and COMMITs only after it is over
    let (o, _c) = scenario(opts, Duration::from_secs(8), true, |c| {
        leader_is(c, "m1")?;
        c.switchover("m1", "m2")?;
        leader_is(c, "m2")?;
        Ok(None)
    });
    let s = o.summary();
    assert!(
        matches!(o.long_txn, Some(Err(_))),
        "the long transaction should have failed: {s}"
    );
    o.assert_clean();
    o.assert_rest_view();
}

fn s7_two_pgbouncers(p: u8) {
    let mut opts = Opts::new("s7-two-pgbouncers", p, Hooks::On);
    opts.pgbouncers = 2;
    let (o, _c) = scenario(opts, Duration::from_secs(8), false, |c| {
        leader_is(c, "m1")?;
        c.switchover("m1", "m2")?;
        leader_is(c, "m2")?;
        Ok(None)
    });
    o.assert_clean();
    o.assert_rest_view();
    for (i, ev) in o.events.iter().enumerate() {
        assert!(
            ev.iter().any(|e| e.1 == "PAUSE"),
            "pgbouncer{} never paused: {}",
            i + 1,
            o.summary()
        );
    }
}

/// Issue 10: parameters pending restart on every member, so `patronictl list -f tsv` would
/// print each member's row over three lines (`Pending restart reason`); then a switchover and
/// an in-place restart of the new primary (which applies them), with patronictl as
/// before-stop's only source. Both stops must pause: a before-stop that cannot read the view
/// pauses nothing and the clients abort.
fn s8_pending_restart(p: u8) {
    let mut opts = Opts::new("s8-pending-restart", p, Hooks::On);
    opts.patroni_url = false;
    let (o, c) = scenario(opts, Duration::from_secs(6), false, |c| {
        leader_is(c, "m1")?;
        c.edit_config(&[
            "shared_buffers=64MB",
            "max_connections=150",
            "max_wal_senders=12",
        ])?;
        c.wait_pending_restart(Duration::from_secs(20))?;
        c.switchover("m1", "m2")?;
        leader_is(c, "m2")?;
        c.restart("m2")?;
        leader_is(c, "m2")?;
        Ok(None)
    });
    o.assert_clean();
    let c = c.0.as_ref().expect("cluster");
    let failures = c.patroni_log_lines("before-stop failed");
    assert!(
        failures.is_empty(),
        "before-stop failed: {}\n{failures:?}",
        o.summary()
    );
    let pauses = o.events.iter().flatten().filter(|e| e.1 == "PAUSE").count();
    assert!(
        pauses >= 2,
        "expected a PAUSE for the switchover and one for the restart: {}",
        o.summary()
    );
}

macro_rules! per_patroni {
    ($($name:ident => $f:ident),* $(,)?) => {
        mod patroni3 { $( #[test] fn $name() { if pph_support::cluster::runs(stringify!($name), 3) { let _g = super::serial(); super::$f(3) } } )* }
        mod patroni4 { $( #[test] fn $name() { if pph_support::cluster::runs(stringify!($name), 4) { let _g = super::serial(); super::$f(4) } } )* }
    };
}

per_patroni! {
    s1_switchover => s1_switchover,
    s2_restart_primary => s2_restart_primary,
    s3_restart_replica => s3_restart_replica,
    s4_restart_former_leader => s4_restart_former_leader,
    s5_sigterm_primary => s5_sigterm_primary,
    s6_long_transaction => s6_long_transaction,
    s7_two_pgbouncers => s7_two_pgbouncers,
    s8_pending_restart => s8_pending_restart,
}

/// Control (no hooks): scenarios 1, 2, 5 must produce errors. Run by scripts/bench.
#[test]
#[ignore]
fn control_without_hooks() {
    let _g = serial();
    let p = if cluster::wants(4) { 4 } else { 3 };
    let (s1, c1) = scenario(
        Opts::new("control-s1-switchover", p, Hooks::Off),
        Duration::from_secs(8),
        false,
        |c| {
            c.switchover("m1", "m2")?;
            leader_is(c, "m2")?;
            Ok(None)
        },
    );
    drop(c1);
    let (s2, c2) = scenario(
        Opts::new("control-s2-restart-primary", p, Hooks::Off),
        Duration::from_secs(8),
        false,
        |c| {
            c.restart("m1")?;
            leader_is(c, "m1")?;
            Ok(None)
        },
    );
    drop(c2);
    let (s5, c5) = scenario(
        Opts::new("control-s5-sigterm-primary", p, Hooks::Off),
        Duration::from_secs(8),
        false,
        |c| {
            c.sigterm_member("m1")?;
            leader_is(c, "m2")?;
            Ok(None)
        },
    );
    drop(c5);
    for o in [&s1, &s2, &s5] {
        let errs = o.failed_txns() + o.aborted() + o.probe_errors() as u64;
        assert!(
            errs > 0,
            "without hooks {} should produce errors: {}",
            o.label,
            o.summary()
        );
    }
}

fn out_dir(sub: &str) -> std::path::PathBuf {
    let d = std::env::var("PPH_OUT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::var("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|_| {
                    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target")
                })
                .join("e2e")
                .join(sub)
        });
    std::fs::create_dir_all(&d).expect("create output dir");
    d
}

fn bench_patroni() -> u8 {
    if cluster::wants(4) {
        4
    } else {
        3
    }
}

/// Benchmark: on one cluster, PPH_BENCH_RUNS (3) switchovers without hooks and as many
/// with them (alternating), each under pgbench; then PPH_BENCH_CTL_RUNS (1) with the hooks
/// but before-stop reading the view with patronictl (REST API URL unset), for comparison;
/// then `patronictl list` + `patronictl history` one after the other, 3 times under the same
/// pgbench load and 3 times idle: the yardstick of before-stop's target (at most half of
/// that). Prints a table and writes the TPS series for the chart (scripts/bench draws
/// docs/switchover.png from them).
#[test]
#[ignore]
fn bench_switchover() {
    let _g = serial();
    let n: usize = std::env::var("PPH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let secs = bench_secs();
    let out = out_dir("bench");
    let mut c = Cluster::start(Opts::new("bench", bench_patroni(), Hooks::Timed))
        .unwrap_or_else(|e| panic!("cluster start: {e}"));
    let mut runs: Vec<RunStats> = vec![];
    for i in 0..n {
        for mode in [Hooks::Off, Hooks::Timed] {
            log(format!(
                "bench run {} of {}: hooks {:?}",
                runs.len() + 1,
                2 * n,
                mode
            ));
            let r = cbench::switchover_run(&mut c, mode, secs, Duration::from_secs(8))
                .unwrap_or_else(|e| {
                    c.keep = true;
                    panic!("bench run failed: {e}")
                });
            cbench::write_series(
                &out,
                &format!("run{}-{}", i + 1, if r.hooks { "hooks" } else { "nohooks" }),
                &r,
            );
            runs.push(r);
        }
    }
    let ctl_runs: usize = std::env::var("PPH_BENCH_CTL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    for i in 0..ctl_runs {
        log(format!(
            "bench run {}: hooks Timed, before-stop's view from patronictl (REST API URL unset)",
            runs.len() + 1
        ));
        let r = c
            .set_view(ViewSource::Patronictl)
            .and_then(|_| {
                cbench::switchover_run(&mut c, Hooks::Timed, secs, Duration::from_secs(8))
            })
            .unwrap_or_else(|e| {
                c.keep = true;
                panic!("bench run failed: {e}")
            });
        // not run*.csv: the chart shows the runs above
        cbench::write_series(&out, &format!("ctl{}-hooks", i + 1), &r);
        runs.push(r);
    }
    c.set_view(ViewSource::Rest)
        .unwrap_or_else(|e| panic!("reload: {e}"));
    log("patronictl list + history, one after the other: 3 samples under pgbench, 3 idle");
    let seq_loaded = cbench::patronictl_sequential_loaded(&c, 3)
        .unwrap_or_else(|e| panic!("patronictl under load: {e}"));
    let seq_idle =
        cbench::patronictl_sequential(&c, 3).unwrap_or_else(|e| panic!("patronictl idle: {e}"));
    let table = cbench::table(&runs);
    let with: Vec<&RunStats> = runs.iter().filter(|r| r.hooks).collect();
    let overhead: Vec<f64> = with
        .iter()
        .filter_map(|r| r.overhead_us())
        .map(ms)
        .collect();
    let max_over = overhead.iter().cloned().fold(f64::NAN, f64::max);
    let failed_with: u64 = with.iter().map(|r| r.errors()).sum();
    let mut text = format!(
        "Patroni {}, PgBouncer {}.{}, pgbench -c 4 -j 4 -T {secs}, one cluster, {} runs\n\n{table}\n",
        bench_patroni(),
        c.bouncers[0].version.0,
        c.bouncers[0].version.1,
        runs.len()
    );
    text.push_str(&format!(
        "targets: 0 failed transactions with hooks: {} ({failed_with} errors); overhead < 50 ms: {} (max {max_over:.0} ms)\n",
        if failed_with == 0 { "met" } else { "NOT met" },
        if max_over < 50.0 { "met" } else { "NOT met" },
    ));
    match cbench::before_stop_alone(&c) {
        Ok(h) => text.push_str(&format!(
            "before-stop alone (--dry-run from TSV files, no patronictl): peak RSS {} KiB, wall {} ms, CPU {} ms\n",
            h.rss_kib.map(|x| x.to_string()).unwrap_or("-".into()),
            h.wall_ms.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
            h.cpu_ms.map(|x| format!("{x:.0}")).unwrap_or("-".into()),
        )),
        Err(e) => text.push_str(&format!("before-stop alone: {e}\n")),
    }
    text.push_str(&before_stop_target(&runs, &seq_loaded, &seq_idle));
    for r in &with {
        text.push_str(&format!(
            "before-stop: {}\non-role-change: {}\n",
            r.before_stop.summary, r.on_role_change.summary
        ));
    }
    println!("\n{text}");
    write(&out.join("bench.md"), &text);
    log(format!("bench output in {}", out.display()));
}

/// The before-stop lines of the benchmark's summary: its times per source, the sequential
/// patronictl yardstick, and the target (before-stop total / sequential patronictl <= 0.5),
/// taken at its worst: the slowest REST run against the fastest patronictl sample.
fn before_stop_target(runs: &[RunStats], seq_loaded: &[f64], seq_idle: &[f64]) -> String {
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let min = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::min);
    let max = |v: &[f64]| v.iter().cloned().fold(f64::NAN, f64::max);
    let mut text = String::new();
    for view in [ViewSource::Rest, ViewSource::Patronictl] {
        let rs: Vec<&RunStats> = runs
            .iter()
            .filter(|r| r.hooks && r.view == Some(view))
            .collect();
        if rs.is_empty() {
            continue;
        }
        let fallbacks = rs.iter().filter(|r| r.rest_fallback).count();
        let get =
            |g: fn(&RunStats) -> Option<f64>| rs.iter().filter_map(|r| g(r)).collect::<Vec<f64>>();
        text.push_str(&format!(
            "before-stop, view from {}: read_view_ms {}; total_ms {}{}\n",
            match view {
                ViewSource::Rest => "its own Patroni's REST API (GET /cluster + /history)",
                ViewSource::Patronictl => "patronictl list + history, run concurrently",
            },
            join(&get(|r| r.before_stop.read_view_ms)),
            join(&get(|r| r.before_stop.total_ms)),
            match view {
                ViewSource::Rest => format!(" ({fallbacks} fell back to patronictl)"),
                ViewSource::Patronictl => String::new(),
            }
        ));
    }
    text.push_str(&format!(
        "patronictl list -f tsv, then patronictl history -f tsv (sequential, as postgres): {} ms under pgbench -c 4; {} ms idle\n",
        join(seq_loaded),
        join(seq_idle)
    ));
    let rest: Vec<f64> = runs
        .iter()
        .filter(|r| r.hooks && r.view == Some(ViewSource::Rest) && !r.rest_fallback)
        .filter_map(|r| r.before_stop.total_ms)
        .collect();
    let n_rest = runs
        .iter()
        .filter(|r| r.hooks && r.view == Some(ViewSource::Rest))
        .count();
    let worst = if rest.len() == n_rest {
        max(&rest)
    } else {
        f64::NAN
    };
    let (r_load, r_idle) = (worst / min(seq_loaded), worst / min(seq_idle));
    text.push_str(&format!(
        "target: before-stop total / sequential patronictl <= 0.5: {} (slowest before-stop {worst:.0} ms / fastest sequential patronictl {:.0} ms under load = {r_load:.3}; / {:.0} ms idle = {r_idle:.3})\n",
        if r_load <= 0.5 && r_idle <= 0.5 { "met" } else { "NOT met" },
        min(seq_loaded),
        min(seq_idle),
    ));
    text
}

type DemoCell = Box<dyn Fn(&RunStats) -> String>;

/// The newcomer's demo: one loopback cluster, one switchover under pgbench without the
/// hooks, one with them, and a short plain result.
#[test]
#[ignore]
fn demo_switchover() {
    let _g = serial();
    let secs: u64 = std::env::var("PPH_DEMO_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let out = out_dir("demo");
    let mut c = Cluster::start(Opts::new("demo", bench_patroni(), Hooks::On))
        .unwrap_or_else(|e| panic!("cluster start: {e}"));
    let off = cbench::switchover_run(&mut c, Hooks::Off, secs, Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("switchover without hooks: {e}"));
    let on = cbench::switchover_run(&mut c, Hooks::On, secs, Duration::from_secs(6))
        .unwrap_or_else(|e| panic!("switchover with hooks: {e}"));
    let rows: Vec<(&str, DemoCell)> = vec![
        (
            "failed transactions",
            Box::new(|r: &RunStats| r.failed().to_string()),
        ),
        (
            "aborted pgbench clients",
            Box::new(|r: &RunStats| format!("{} of 4", r.pgbench.aborted_clients)),
        ),
        (
            "reconnecting client errors",
            Box::new(|r: &RunStats| r.probe.errors.len().to_string()),
        ),
        (
            "longest stall",
            Box::new(|r: &RunStats| format!("{:.2} s", r.stall_us as f64 / 1e6)),
        ),
        (
            "PgBouncer at the end",
            Box::new(|r: &RunStats| {
                if r.paused_at_end {
                    "PAUSED".into()
                } else {
                    "not paused".into()
                }
            }),
        ),
    ];
    let mut text = format!(
        "\n=== one switchover under pgbench -c 4 through PgBouncer (Patroni {}, PgBouncer {}.{}) ===\n{:<28}{:<16}{}\n",
        bench_patroni(),
        c.bouncers[0].version.0,
        c.bouncers[0].version.1,
        "",
        "without hooks",
        "with hooks"
    );
    for (name, f) in &rows {
        text.push_str(&format!("{:<28}{:<16}{}\n", name, f(&off), f(&on)));
    }
    println!("{text}");
    write(&out.join("demo.txt"), &text);
}
