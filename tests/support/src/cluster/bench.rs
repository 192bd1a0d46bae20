//! One measured switchover on a running cluster (for the benchmark and the demo):
//! pgbench + probe through PgBouncer, `patronictl switchover`, then the numbers:
//! failures, longest stall, the floor Patroni imposes (old primary's shutdown request to
//! the new primary's `received promote request`, from Postgres' logs), the hooks' own
//! wall time (their summary events' `total_ms`) and peak RSS (/usr/bin/time -v).
//! Also the yardstick of before-stop's target: `patronictl list` then `patronictl history`,
//! one after the other, on the same cluster.

use std::path::Path;
use std::time::{Duration, Instant};

use super::util::*;
use super::workload::{Pgbench, PgbenchResult, Probe, ProbeResult};
use super::{fell_back, Cluster, Hooks, ViewSource};
use crate::events;

#[derive(Debug, Clone, Default)]
pub struct HookRun {
    /// the hook's own summary event: total_ms
    pub total_ms: Option<f64>,
    /// before-stop's summary event: read_view_ms (reading the cluster view)
    pub read_view_ms: Option<f64>,
    /// /usr/bin/time -v: elapsed wall (10 ms resolution), max RSS, CPU
    pub wall_ms: Option<f64>,
    pub rss_kib: Option<u64>,
    pub cpu_ms: Option<f64>,
    pub summary: String,
}

#[derive(Debug, Clone, Default)]
pub struct RunStats {
    pub hooks: bool,
    /// before-stop's configured source of the cluster view (with the hooks on)
    pub view: Option<ViewSource>,
    /// before-stop logged that the REST API failed and used patronictl
    pub rest_fallback: bool,
    pub from: String,
    pub to: String,
    pub t_action: i64,
    pub pgbench: PgbenchResult,
    pub probe: ProbeResult,
    pub stall_us: i64,
    pub stall_at: i64,
    pub shutdown_at: Option<i64>,
    pub promote_at: Option<i64>,
    pub pause_at: Option<i64>,
    pub resume_at: Option<i64>,
    pub before_stop: HookRun,
    pub on_role_change: HookRun,
    pub paused_at_end: bool,
}

impl RunStats {
    pub fn failed(&self) -> u64 {
        self.pgbench.failed + self.pgbench.log_failed
    }
    pub fn errors(&self) -> u64 {
        self.failed() + self.pgbench.aborted_clients + self.probe.errors.len() as u64
    }
    pub fn floor_us(&self) -> Option<i64> {
        Some(self.promote_at? - self.shutdown_at?)
    }
    pub fn overhead_us(&self) -> Option<i64> {
        Some(self.stall_us - self.floor_us()?)
    }
}

fn tail_from(path: &Path, offset: usize) -> String {
    let s = read(path);
    s.get(offset.min(s.len())..).unwrap_or("").to_string()
}

fn len_of(path: &Path) -> usize {
    std::fs::metadata(path)
        .map(|m| m.len() as usize)
        .unwrap_or(0)
}

/// Entries of `/usr/bin/time -v -a -o FILE`, each with the command it timed.
fn time_entries(text: &str) -> Vec<(String, HookRun)> {
    let mut out: Vec<(String, HookRun)> = vec![];
    for line in text.lines() {
        let l = line.trim();
        if let Some(cmd) = l.strip_prefix("Command being timed: ") {
            out.push((cmd.trim_matches('"').to_string(), HookRun::default()));
            continue;
        }
        let Some((_, h)) = out.last_mut() else {
            continue;
        };
        if let Some(v) = l.strip_prefix("Maximum resident set size (kbytes): ") {
            h.rss_kib = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("Elapsed (wall clock) time (h:mm:ss or m:ss): ") {
            // m:ss.cc or h:mm:ss
            let parts: Vec<f64> = v.trim().split(':').filter_map(|x| x.parse().ok()).collect();
            let secs = parts.iter().fold(0.0, |acc, x| acc * 60.0 + x);
            h.wall_ms = Some(secs * 1000.0);
        } else if let Some(v) = l.strip_prefix("User time (seconds): ") {
            h.cpu_ms =
                Some(h.cpu_ms.unwrap_or(0.0) + v.trim().parse::<f64>().unwrap_or(0.0) * 1000.0);
        } else if let Some(v) = l.strip_prefix("System time (seconds): ") {
            h.cpu_ms =
                Some(h.cpu_ms.unwrap_or(0.0) + v.trim().parse::<f64>().unwrap_or(0.0) * 1000.0);
        }
    }
    out
}

/// One switchover from the current leader to the other member, under pgbench.
pub fn switchover_run(c: &mut Cluster, hooks: Hooks, secs: u64, warmup: Duration) -> Res<RunStats> {
    if c.hooks != hooks {
        c.set_hooks(hooks)?;
    }
    let from = c.wait_healthy(Duration::from_secs(90))?;
    let to = c
        .members
        .iter()
        .find(|m| m.name != from)
        .unwrap()
        .name
        .clone();
    let (fi, ti) = (c.idx(&from), c.idx(&to));
    let tag = format!(
        "{}-{}",
        if hooks == Hooks::Off { "off" } else { "on" },
        now_us() / 1000 % 1_000_000
    );
    let port = c.bouncers[0].port;
    let bench = Pgbench::start(&c.dir, &tag, port, 4, secs)?;
    let probe = Probe::start(port, Duration::from_secs(secs + 30));
    std::thread::sleep(warmup);
    let offs: Vec<(usize, usize, usize)> = c
        .members
        .iter()
        .map(|m| {
            (
                len_of(&m.patroni_log()),
                len_of(&m.dir.join("time-before-stop.log")),
                len_of(&m.dir.join("time-on-role-change.log")),
            )
        })
        .collect();
    let t_action = now_us();
    c.switchover(&from, &to)?;
    let leader = c.wait_healthy(Duration::from_secs(90))?;
    if leader != to {
        return Err(format!("leader is {leader}, expected {to}"));
    }
    let pgbench = bench.finish()?;
    let probe = probe.finish();
    let mut st = RunStats {
        hooks: hooks != Hooks::Off,
        view: (hooks != Hooks::Off).then_some(c.view),
        from: from.clone(),
        to: to.clone(),
        t_action,
        ..Default::default()
    };
    let end = pgbench.end_us;
    (st.stall_us, st.stall_at) = pgbench.stall();
    st.pgbench = pgbench;
    st.probe = probe;
    st.shutdown_at = c
        .pg_log_events(&from, "received fast shutdown request")
        .into_iter()
        .find(|&t| t >= t_action);
    st.promote_at = c
        .pg_log_events(&to, "received promote request")
        .into_iter()
        .find(|&t| t >= t_action);
    let ev = c.bouncers[0].admin_events();
    st.pause_at = ev
        .iter()
        .find(|(t, e)| e == "PAUSE" && *t >= t_action && *t <= end)
        .map(|x| x.0);
    st.resume_at = ev
        .iter()
        .find(|(t, e)| e == "RESUME" && *t >= t_action && *t <= end)
        .map(|x| x.0);
    if st.hooks {
        let fm = &c.members[fi];
        let tm = &c.members[ti];
        let log_from = tail_from(&fm.patroni_log(), offs[fi].0);
        let log_to = tail_from(&tm.patroni_log(), offs[ti].0);
        let stopped = events::summaries(&log_from, "before-stop");
        if let Some(e) = stopped.first() {
            st.before_stop.total_ms = e["total_ms"].as_f64();
            st.before_stop.read_view_ms = e["read_view_ms"].as_f64();
            st.before_stop.summary = e.to_string();
        }
        st.rest_fallback = stopped.iter().any(fell_back);
        if let Some(e) = events::summaries(&log_to, "on-role-change")
            .into_iter()
            .find(|e| e["decision"] == "Resume")
        {
            st.on_role_change.total_ms = e["total_ms"].as_f64();
            st.on_role_change.summary = e.to_string();
        }
        if hooks == Hooks::Timed {
            let bs = time_entries(&tail_from(&fm.dir.join("time-before-stop.log"), offs[fi].1));
            if let Some((_, h)) = bs.first() {
                let b = &st.before_stop;
                st.before_stop = HookRun {
                    total_ms: b.total_ms,
                    read_view_ms: b.read_view_ms,
                    summary: b.summary.clone(),
                    ..h.clone()
                };
            }
            let orc = time_entries(&tail_from(
                &tm.dir.join("time-on-role-change.log"),
                offs[ti].2,
            ));
            if let Some((_, h)) = orc.iter().find(|(cmd, _)| cmd.contains("on_role_change")) {
                let (t, s) = (
                    st.on_role_change.total_ms,
                    st.on_role_change.summary.clone(),
                );
                st.on_role_change = HookRun {
                    total_ms: t,
                    summary: s,
                    ..h.clone()
                };
            }
        }
    }
    st.paused_at_end = c.bouncer_paused(0)?;
    Ok(st)
}

fn f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

fn fus(v: Option<i64>) -> String {
    v.map(|x| format!("{:.0}", ms(x)))
        .unwrap_or_else(|| "-".into())
}

/// Markdown table of runs.
pub fn table(runs: &[RunStats]) -> String {
    let mut s = String::from(
        "| run | hooks (before-stop's view) | failed txns | aborted clients | probe errors | longest stall ms | floor ms | overhead ms | PAUSE→shutdown ms | promote→RESUME ms | before-stop ms | before-stop read view ms | on-role-change ms | before-stop RSS KiB¹ | on-role-change RSS KiB | before-stop CPU ms¹ | on-role-change CPU ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (i, r) in runs.iter().enumerate() {
        let d = |a: Option<i64>, b: Option<i64>| Some(b? - a?);
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            i + 1,
            view_label(r),
            r.failed(),
            r.pgbench.aborted_clients,
            r.probe.errors.len(),
            ms(r.stall_us),
            fus(r.floor_us()),
            fus(r.overhead_us()),
            fus(d(r.pause_at, r.shutdown_at)),
            fus(d(r.promote_at, r.resume_at)),
            f(r.before_stop.total_ms),
            f(r.before_stop.read_view_ms),
            f(r.on_role_change.total_ms),
            r.before_stop
                .rss_kib
                .map(|x| x.to_string())
                .unwrap_or("-".into()),
            r.on_role_change
                .rss_kib
                .map(|x| x.to_string())
                .unwrap_or("-".into()),
            f(r.before_stop.cpu_ms),
            f(r.on_role_change.cpu_ms),
        ));
    }
    s.push_str(
        "\n¹ /usr/bin/time -v counts the largest waited-for child too: with the REST API as the source before-stop starts no child; with patronictl (or after a fallback) its figures include the two `patronictl` (Python) runs it makes.\n",
    );
    s
}

/// `off`, `on (REST)`, `on (patronictl)`; `on (REST → patronictl)` if before-stop fell back.
pub fn view_label(r: &RunStats) -> &'static str {
    match (r.hooks, r.view, r.rest_fallback) {
        (false, _, _) => "off",
        (true, Some(ViewSource::Rest), false) => "on (REST)",
        (true, Some(ViewSource::Rest), true) => "on (REST → patronictl)",
        (true, _, _) => "on (patronictl)",
    }
}

/// The yardstick of before-stop's target ("at most half the time of running `patronictl
/// list` and `patronictl history` one after the other"): `patronictl list -f tsv`, then
/// `patronictl history -f tsv`, as user postgres with the environment Patroni gives the
/// hooks on the current leader (its patroni.yml as PATRONICTL_CONFIG_FILE), `samples`
/// times. Returns each sample's wall time of the pair, in ms.
pub fn patronictl_sequential(c: &Cluster, samples: usize) -> Res<Vec<f64>> {
    let leader = c.wait_healthy(Duration::from_secs(60))?;
    let i = c.idx(&leader);
    let ctl = c.tools.venv.join("bin/patronictl").display().to_string();
    // what the hook inherits: Patroni's environment, less the PATRONI_* it pops
    let env: Vec<(String, String)> = c
        .patroni_env(i)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("PATRONI_"))
        .collect();
    let mut out = vec![];
    for _ in 0..samples {
        let t = Instant::now();
        for sub in ["list", "history"] {
            let text = run_ok(
                as_postgres(&ctl)
                    .env("TZ", "UTC")
                    .envs(env.iter().cloned())
                    .args([sub, "-f", "tsv"]),
                Duration::from_secs(30),
            )?;
            if sub == "list" && !text.contains(&leader) {
                return Err(format!("patronictl list does not show {leader}: {text}"));
            }
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// `patronictl_sequential` while pgbench -c 4 -j 4 and the probe run through PgBouncer,
/// as during a switchover (before-stop runs under that load).
pub fn patronictl_sequential_loaded(c: &Cluster, samples: usize) -> Res<Vec<f64>> {
    let port = c.bouncers[0].port;
    let tag = format!("ctl-{}", now_us() / 1000 % 1_000_000);
    let bench = Pgbench::start(&c.dir, &tag, port, 4, 15)?;
    let probe = Probe::start(port, Duration::from_secs(45));
    std::thread::sleep(Duration::from_secs(4));
    let r = patronictl_sequential(c, samples);
    let _ = bench.finish();
    let _ = probe.finish();
    r
}

/// before-stop alone: `--dry-run` from `patronictl list/history -f tsv` files under
/// /usr/bin/time -v, so neither patronictl nor Python is counted. Returns (RSS KiB, wall ms, CPU ms).
pub fn before_stop_alone(c: &Cluster) -> Res<HookRun> {
    let leader = c.wait_healthy(Duration::from_secs(60))?;
    let m = c.member(&leader);
    let ctl = c.tools.venv.join("bin/patronictl");
    let list = m.dir.join("list.tsv");
    let hist = m.dir.join("history.tsv");
    for (sub, path) in [("list", &list), ("history", &hist)] {
        let out = run_ok(
            std::process::Command::new(&ctl)
                .arg("-c")
                .arg(&m.cfg)
                .args([sub, "-f", "tsv"]),
            Duration::from_secs(30),
        )?;
        write(path, &out);
    }
    let timef = m.dir.join("time-alone.log");
    let _ = std::fs::remove_file(&timef);
    let urls: Vec<String> = c.bouncers.iter().map(|b| b.admin_url()).collect();
    let (_, out, err) = run(
        std::process::Command::new("/usr/bin/time")
            .arg("-v")
            .arg("-o")
            .arg(&timef)
            .arg(c.tools.hooks_dir.join("before-stop"))
            .args(["--member", &leader, "--dry-run", "--list-tsv"])
            .arg(&list)
            .arg("--history-tsv")
            .arg(&hist)
            .env("PGBOUNCER_URLS", urls.join(","))
            .env("PGBOUNCER_PASSWORD", super::ADMIN_PASSWORD),
        Duration::from_secs(30),
    )?;
    let mut h = time_entries(&read(&timef))
        .pop()
        .map(|x| x.1)
        .unwrap_or_default();
    h.summary = format!("{} {}", out.trim(), err.lines().last().unwrap_or(""));
    Ok(h)
}

/// TPS per 100 ms around the switchover (t = 0 at the switchover command), for the chart.
pub fn write_series(dir: &Path, name: &str, r: &RunStats) {
    let mut csv = String::from("t_s,tps\n");
    for (t, tps) in r.pgbench.tps_series(r.pgbench.start_us, 100) {
        let rel = t - (r.t_action - r.pgbench.start_us) as f64 / 1e6;
        csv.push_str(&format!("{rel:.3},{tps:.1}\n"));
    }
    write(&dir.join(format!("{name}.csv")), &csv);
    let rel = |t: Option<i64>| {
        t.map(|t| format!("{:.3}", (t - r.t_action) as f64 / 1e6))
            .unwrap_or_default()
    };
    let ev = format!(
        "event,t_s\nPAUSE,{}\nRESUME,{}\nshutdown,{}\npromote,{}\naborted_clients,{}\nerrors,{}\n",
        rel(r.pause_at),
        rel(r.resume_at),
        rel(r.shutdown_at),
        rel(r.promote_at),
        r.pgbench.aborted_clients,
        r.errors(),
    );
    write(&dir.join(format!("{name}-events.csv")), &ev);
}
