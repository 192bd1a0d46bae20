//! Workload through PgBouncer: pgbench (-l log parsed for commits, failures and stalls),
//! a reconnecting probe client that counts every error, a long-transaction client, and
//! the PgBouncer admin-console state check.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::netns;
use super::util::*;
use super::{Bouncer, ADMIN_PASSWORD, ADMIN_USER, APP_PASSWORD, APP_USER, PG_BIN};

/// Where a client connects: host and port, from network namespace `ns` (None: here).
#[derive(Clone, Debug)]
pub struct Dest {
    pub host: String,
    pub port: u16,
    pub ns: Option<String>,
}

impl Dest {
    /// 127.0.0.1:port, from here.
    pub fn local(port: u16) -> Dest {
        Dest {
            host: "127.0.0.1".into(),
            port,
            ns: None,
        }
    }
}

pub struct Pgbench {
    pub tag: String,
    pub port: u16,
    pub dir: PathBuf,
    pub start_us: i64,
    pub secs: u64,
    child: Child,
}

#[derive(Debug, Default, Clone)]
pub struct PgbenchResult {
    pub tag: String,
    pub exit_ok: bool,
    pub processed: u64,
    pub failed: u64,
    pub aborted_clients: u64,
    /// stderr lines that look like errors (client aborts, connection failures)
    pub errors: Vec<String>,
    /// Completion time (µs since epoch) of every committed transaction, sorted.
    pub commits: Vec<i64>,
    /// Transactions that the -l log marks failed (time field not a number).
    pub log_failed: u64,
    pub start_us: i64,
    pub end_us: i64,
}

impl Pgbench {
    /// `pgbench -c C -j C -T secs -P 1 -l -n` against PgBouncer's `app` database.
    pub fn start(dir: &Path, tag: &str, port: u16, clients: u32, secs: u64) -> Res<Pgbench> {
        Pgbench::start_via(dir, tag, &Dest::local(port), clients, secs)
    }

    /// `start` against `to` (from its network namespace).
    pub fn start_via(dir: &Path, tag: &str, to: &Dest, clients: u32, secs: u64) -> Res<Pgbench> {
        use std::os::unix::process::CommandExt;
        let port = to.port;
        let d = dir.join(format!("pgbench-{tag}"));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let out = std::fs::File::create(d.join("stdout")).map_err(|e| e.to_string())?;
        let err = std::fs::File::create(d.join("stderr")).map_err(|e| e.to_string())?;
        let c = clients.to_string();
        let mut cmd = Command::new(format!("{PG_BIN}/pgbench"));
        cmd.args([
            "-n",
            "-c",
            &c,
            "-j",
            &c,
            "-T",
            &secs.to_string(),
            "-P",
            "1",
            "-l",
        ])
        .arg(format!("--log-prefix={}", d.join("pgb").display()))
        .args([
            "-h",
            &to.host,
            "-p",
            &port.to_string(),
            "-U",
            APP_USER,
            "app",
        ])
        .env("PGPASSWORD", APP_PASSWORD);
        let child = super::in_pod(cmd, to.ns.as_deref())
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn pgbench: {e}"))?;
        log(format!(
            "pgbench {tag}: -c {c} -j {c} -T {secs} via :{port} (pid {})",
            child.id()
        ));
        Ok(Pgbench {
            tag: tag.into(),
            port,
            dir: d,
            start_us: now_us(),
            secs,
            child,
        })
    }

    /// Waits (bounded: -T plus 60 s) and parses the summary and the -l logs.
    pub fn finish(mut self) -> Res<PgbenchResult> {
        let limit = Duration::from_secs(self.secs + 60);
        let st = wait_child(&mut self.child, limit);
        if st.is_none() {
            signal(-(self.child.id() as i64), "KILL");
            let _ = wait_child(&mut self.child, Duration::from_secs(5));
        }
        let end_us = now_us();
        let stdout = read(&self.dir.join("stdout"));
        let stderr = read(&self.dir.join("stderr"));
        let grab = |key: &str| -> u64 {
            stdout
                .lines()
                .find(|l| l.trim_start().starts_with(key))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.split('/').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let mut r = PgbenchResult {
            tag: self.tag.clone(),
            exit_ok: st.map(|s| s.success()).unwrap_or(false),
            processed: grab("number of transactions actually processed"),
            failed: grab("number of failed transactions"),
            start_us: self.start_us,
            end_us,
            ..Default::default()
        };
        if st.is_none() {
            r.errors
                .push(format!("pgbench did not finish within {limit:?} (killed)"));
        }
        for l in stderr.lines() {
            // "client 2 aborted in command 6 ..." / "client 0 script 0 aborted in command 8 ..."
            let w: Vec<&str> = l.split_whitespace().collect();
            let client_at = w.iter().position(|x| *x == "client");
            if client_at.is_some_and(|i| w.get(i + 1).is_some_and(|n| n.parse::<u32>().is_ok()))
                && w.contains(&"aborted")
            {
                r.aborted_clients += 1;
            }
            if !l.starts_with("progress:") && !l.trim().is_empty() && !l.starts_with("pgbench (") {
                r.errors.push(l.to_string());
            }
        }
        // -l: "client_id transaction_no time script_no time_epoch time_us"
        let entries = std::fs::read_dir(&self.dir).map_err(|e| e.to_string())?;
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with("pgb.") {
                continue;
            }
            for line in read(&e.path()).lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 6 {
                    continue;
                }
                let (Ok(sec), Ok(us)) = (f[4].parse::<i64>(), f[5].parse::<i64>()) else {
                    continue;
                };
                if f[2].parse::<i64>().is_ok() {
                    r.commits.push(sec * 1_000_000 + us);
                } else {
                    r.log_failed += 1;
                }
            }
        }
        r.commits.sort_unstable();
        log(format!(
            "pgbench {}: processed {} failed {} aborted clients {} (exit ok: {})",
            r.tag, r.processed, r.failed, r.aborted_clients, r.exit_ok
        ));
        Ok(r)
    }
}

/// Longest gap between consecutive commits that overlaps [from, to] (µs), with the
/// time the gap started. The run's first second is skipped (connection set-up).
pub fn longest_stall(commits: &[i64], from: i64, to: i64) -> (i64, i64) {
    let mut best = (0, from);
    for w in commits.windows(2) {
        if w[1] >= from && w[0] <= to {
            let g = w[1] - w[0];
            if g > best.0 {
                best = (g, w[0]);
            }
        }
    }
    best
}

impl PgbenchResult {
    pub fn stall(&self) -> (i64, i64) {
        let from = self.commits.first().copied().unwrap_or(self.start_us) + 1_000_000;
        let mut c = self.commits.clone();
        // a run that never recovered stalls until its end
        c.push(self.end_us.min(self.start_us + 3_600_000_000));
        longest_stall(&c, from, self.end_us)
    }

    /// Transactions per `bucket_ms` bucket, as (seconds since `t0`, tps).
    pub fn tps_series(&self, t0: i64, bucket_ms: i64) -> Vec<(f64, f64)> {
        let b = bucket_ms * 1000;
        let mut out: Vec<(f64, f64)> = vec![];
        if self.commits.is_empty() {
            return out;
        }
        let last = *self.commits.last().unwrap();
        let n = ((last - t0) / b + 1).max(0) as usize;
        let mut counts = vec![0u64; n];
        for &c in &self.commits {
            let k = (c - t0) / b;
            if k >= 0 && (k as usize) < n {
                counts[k as usize] += 1;
            }
        }
        for (k, cnt) in counts.into_iter().enumerate() {
            out.push((
                (k as i64 * b) as f64 / 1e6,
                cnt as f64 * 1000.0 / bucket_ms as f64,
            ));
        }
        out
    }
}

/// A Postgres error as the server said it (tokio-postgres' Display says just "db error").
pub fn err_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {} ({})", d.severity(), d.message(), d.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s.push_str(&format!(": {x}"));
                src = x.source();
            }
            s
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn app_conninfo(to: &Dest) -> String {
    format!(
        "host={} port={} user={APP_USER} password={APP_PASSWORD} dbname=app connect_timeout=5",
        to.host, to.port
    )
}

async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, String> {
    let fut = tokio_postgres::connect(conninfo, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {}", err_text(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A client that runs one small write transaction after another, reconnects after any
/// error, and counts every error it sees.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    pub state: Arc<Mutex<ProbeResult>>,
}

#[derive(Debug, Default, Clone)]
pub struct ProbeResult {
    pub ok: u64,
    pub errors: Vec<(i64, String)>,
    pub commits: Vec<i64>,
}

impl Probe {
    pub fn start(port: u16, max: Duration) -> Probe {
        Probe::start_via(&Dest::local(port), max)
    }

    /// `start` against `to`, from its network namespace.
    pub fn start_via(to: &Dest, max: Duration) -> Probe {
        let to = to.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(ProbeResult::default()));
        let (s2, st2) = (stop.clone(), state.clone());
        let handle = std::thread::spawn(move || {
            if let Some(ns) = &to.ns {
                if let Err(e) = netns::enter(ns) {
                    st2.lock().unwrap().errors.push((now_us(), e));
                    return;
                }
            }
            rt().block_on(async move {
                let started = Instant::now();
                let info = app_conninfo(&to);
                let mut client: Option<tokio_postgres::Client> = None;
                // bounded: by time and by iteration count
                for _ in 0..5_000_000u64 {
                    if s2.load(Ordering::Relaxed) || started.elapsed() > max {
                        break;
                    }
                    if client.is_none() {
                        match connect(&info).await {
                            Ok(c) => client = Some(c),
                            Err(e) => {
                                st2.lock().unwrap().errors.push((now_us(), e));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                    let c = client.as_ref().unwrap();
                    let q = c.simple_query("INSERT INTO e2e_probe (client) VALUES ('probe')");
                    match tokio::time::timeout(Duration::from_secs(30), q).await {
                        Ok(Ok(_)) => {
                            let mut s = st2.lock().unwrap();
                            s.ok += 1;
                            s.commits.push(now_us());
                        }
                        Ok(Err(e)) => {
                            st2.lock()
                                .unwrap()
                                .errors
                                .push((now_us(), format!("query: {}", err_text(&e))));
                            client = None;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(_) => {
                            st2.lock()
                                .unwrap()
                                .errors
                                .push((now_us(), "query timed out (30 s)".into()));
                            client = None;
                        }
                    }
                    // ~100 transactions/s: a steady stream, not a second pgbench
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        });
        Probe {
            stop,
            handle: Some(handle),
            state,
        }
    }

    pub fn finish(mut self) -> ProbeResult {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let r = self.state.lock().unwrap().clone();
        log(format!(
            "probe: {} ok, {} errors {:?}",
            r.ok,
            r.errors.len(),
            r.errors.iter().take(5).collect::<Vec<_>>()
        ));
        r
    }
}

/// Opens a transaction through PgBouncer and holds it until `release` is set (polled
/// every 50 ms, at most `max_hold`), then COMMITs. The thread returns Ok(()) if the COMMIT
/// succeeded, Err(message) otherwise.
pub fn long_transaction(
    port: u16,
    release: Arc<AtomicBool>,
    max_hold: Duration,
) -> std::thread::JoinHandle<Result<(), String>> {
    long_transaction_via(&Dest::local(port), release, max_hold)
}

/// `long_transaction` against `to`, from its network namespace.
pub fn long_transaction_via(
    to: &Dest,
    release: Arc<AtomicBool>,
    max_hold: Duration,
) -> std::thread::JoinHandle<Result<(), String>> {
    let to = to.clone();
    std::thread::spawn(move || {
        if let Some(ns) = &to.ns {
            netns::enter(ns)?;
        }
        rt().block_on(async move {
            let c = connect(&app_conninfo(&to)).await?;
            c.simple_query("BEGIN; INSERT INTO e2e_probe (client) VALUES ('long')")
                .await
                .map_err(|e| format!("begin: {}", err_text(&e)))?;
            log("long transaction open");
            let start = Instant::now();
            while !release.load(Ordering::Relaxed) && start.elapsed() < max_hold {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            log(format!(
                "long transaction: COMMIT after {:?}",
                start.elapsed()
            ));
            let r = tokio::time::timeout(Duration::from_secs(30), c.simple_query("COMMIT")).await;
            match r {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("commit: {}", err_text(&e))),
                Err(_) => Err("commit timed out".into()),
            }
        })
    })
}

/// Is PgBouncer paused? `SHOW STATE` (>= 1.19), else RESUME and look for
/// `pooler is not paused/suspended`.
pub fn bouncer_paused(b: &Bouncer) -> Res<bool> {
    if b.proc.is_none() {
        return Err("PgBouncer is not running".into());
    }
    let info = format!(
        "host=127.0.0.1 port={} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname=pgbouncer connect_timeout=5",
        b.port
    );
    let ver = b.version;
    netns::in_ns(b.ns.as_deref(), || {
        rt().block_on(async move {
            let c = connect(&info).await?;
            if ver >= (1, 19) {
                let msgs = c
                    .simple_query("SHOW STATE")
                    .await
                    .map_err(|e| format!("SHOW STATE: {}", err_text(&e)))?;
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        if r.get(0) == Some("paused") {
                            return Ok(r.get(1) == Some("yes"));
                        }
                    }
                }
                Err("SHOW STATE: no `paused` row".into())
            } else {
                match c.simple_query("RESUME").await {
                    Ok(_) => Ok(true),
                    Err(e) => {
                        let msg = e
                            .as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or(e.to_string());
                        if msg.contains("not paused") {
                            Ok(false)
                        } else {
                            Err(format!("RESUME: {msg}"))
                        }
                    }
                }
            }
        })
    })
}

/// One admin command on PgBouncer's console (e.g. `RESUME`, to clean up by hand).
pub fn bouncer_admin(b: &Bouncer, sql: &str) -> Res<()> {
    let info = format!(
        "host=127.0.0.1 port={} user={ADMIN_USER} password={ADMIN_PASSWORD} dbname=pgbouncer connect_timeout=5",
        b.port
    );
    let sql = sql.to_string();
    netns::in_ns(b.ns.as_deref(), || {
        rt().block_on(async move {
            let c = connect(&info).await?;
            c.simple_query(&sql)
                .await
                .map(|_| ())
                .map_err(|e| format!("{sql}: {}", err_text(&e)))
        })
    })
}

/// The paused intervals in PgBouncer's PAUSE/RESUME log events, as (start, length) in µs: a
/// PAUSE while paused (PgBouncer refuses it) and a RESUME while not paused change nothing; a
/// pause ends with the PgBouncer (`GONE`: its pod deleted); a pause still open at `end`
/// lasts until `end`.
pub fn pause_spans(events: &[(i64, String)], end: i64) -> Vec<(i64, i64)> {
    let mut out = vec![];
    let mut since: Option<i64> = None;
    for (t, e) in events {
        match (e.as_str(), since) {
            ("PAUSE", None) => since = Some(*t),
            ("RESUME" | "GONE", Some(s)) => {
                out.push((s, t - s));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        out.push((s, end - s));
    }
    out
}
