//! What the watchdog knows, for people and machines: `/status` (JSON: is PgBouncer paused,
//! since when, whose pause, who ends it and when), `/metrics` (Prometheus text exposition),
//! `/healthz` (the look loop is alive) and `/readyz` (it can see PgBouncer and its route).
//! A tiny HTTP/1.1 server: one request per connection, bounded reads, no keep-alive.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::watchdog::Settings;

pub type Shared = Arc<Mutex<Status>>;

/// One PgBouncer, as of the last look.
#[derive(Clone, Debug, Default)]
pub struct TargetStatus {
    pub pgbouncer: String,
    /// The last look reached its admin console.
    pub seen: bool,
    pub show_state: bool,
    pub paused: bool,
    pub since: Option<SystemTime>,
    pub owner: Option<&'static str>,
    pub pause_id: Option<String>,
}

/// Everything the endpoints show.
#[derive(Debug)]
pub struct Status {
    pub max_pause: Duration,
    pub interval: Duration,
    pub look_timeout: Duration,
    pub started: std::time::Instant,
    /// The end of the last look (monotonic, for liveness) and on the wall clock.
    pub looked: Option<std::time::Instant>,
    pub looked_at: Option<SystemTime>,
    pub targets: Vec<TargetStatus>,
    /// Failing now, by kind: what, and since when.
    pub failing: BTreeMap<&'static str, (String, std::time::Instant)>,
    /// Looks that failed, by kind, since the start.
    pub errors: BTreeMap<&'static str, u64>,
    pub pauses: BTreeMap<&'static str, u64>,
    pub resumes: BTreeMap<&'static str, u64>,
    pub last_pause_ms: Option<u64>,
    /// The writable primary's postmaster start (µs since the epoch) the route reached last.
    pub primary: Option<String>,
}

impl Status {
    pub fn new(settings: &Settings) -> Status {
        Status {
            max_pause: settings.max_pause,
            interval: settings.interval,
            look_timeout: settings.look_timeout,
            started: std::time::Instant::now(),
            looked: None,
            looked_at: None,
            targets: Vec::new(),
            failing: BTreeMap::new(),
            errors: BTreeMap::new(),
            pauses: BTreeMap::new(),
            resumes: BTreeMap::new(),
            last_pause_ms: None,
            primary: None,
        }
    }

    /// The look loop is alive: a look ended recently (or it just started).
    pub fn live(&self) -> bool {
        let stale = 3 * (self.interval + 3 * self.look_timeout) + Duration::from_secs(2);
        match self.looked {
            Some(at) => at.elapsed() < stale,
            None => self.started.elapsed() < stale,
        }
    }

    /// Why the watchdog cannot do its job, if it cannot: it cannot see a PgBouncer, or its
    /// route has reached no writable primary for longer than --max-pause (a switchover's
    /// moment without a primary is not a reason).
    pub fn not_ready(&self) -> Option<String> {
        if !self.live() {
            return Some("the look loop is stuck".into());
        }
        if self.looked.is_none() {
            return Some("no look yet".into());
        }
        if self.targets.is_empty() {
            return Some("no PgBouncer resolved".into());
        }
        for (kind, (detail, since)) in &self.failing {
            let sticky = matches!(*kind, "route" | "other-cluster");
            if !sticky || since.elapsed() >= self.max_pause {
                return Some(format!("{kind}: {detail}"));
            }
        }
        None
    }

    /// `/status` as JSON.
    pub fn report(&self) -> Report {
        let epoch = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let pgbouncers = self
            .targets
            .iter()
            .map(|t| {
                let since = t.since.map(epoch);
                let ends = match t.owner {
                    None => None,
                    Some("hooks") => Some(format!(
                        "the hooks: on-role-change on the new primary, or this watchdog once the route reaches a new primary, at the latest at {:.0} (since + --max-pause)",
                        since.unwrap_or(0.0) + self.max_pause.as_secs_f64()
                    )),
                    Some("held") => Some("the operator who holds it (a pph-hold session): RESUME by hand, then close that session".into()),
                    Some(_) => Some("not the hooks: whoever paused it (RESUME by hand); the watchdog never ends a pause it did not see the hooks make".into()),
                };
                PgBouncerReport {
                    pgbouncer: t.pgbouncer.clone(),
                    reachable: t.seen,
                    show_state: t.show_state,
                    paused: t.paused,
                    paused_since: since,
                    owner: t.owner,
                    pause_id: t.pause_id.clone(),
                    ended_by: ends,
                }
            })
            .collect();
        Report {
            live: self.live(),
            ready: self.not_ready().is_none(),
            not_ready: self.not_ready(),
            max_pause_s: self.max_pause.as_secs_f64(),
            last_look: self.looked_at.map(epoch),
            pgbouncers,
            failing: self
                .failing
                .iter()
                .map(|(k, (d, _))| (k.to_string(), d.clone()))
                .collect(),
            last_pause_ms: self.last_pause_ms,
        }
    }

    /// `/metrics`, Prometheus text exposition format 0.0.4.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let label = |pairs: &[(&str, &str)]| {
            let inner: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        family(
            "pph_watchdog_up",
            "gauge",
            "1 when the watchdog can see every PgBouncer and its route (as /readyz)",
            vec![(
                String::new(),
                f64::from(u8::from(self.not_ready().is_none())),
            )],
        );
        family(
            "pph_watchdog_paused",
            "gauge",
            "1 while PgBouncer is paused (SHOW STATE), by owner: hooks, held, other",
            self.targets
                .iter()
                .map(|t| {
                    let owner = t.owner.unwrap_or("none");
                    (
                        label(&[("pgbouncer", &t.pgbouncer), ("owner", owner)]),
                        f64::from(u8::from(t.paused)),
                    )
                })
                .collect(),
        );
        family(
            "pph_watchdog_pause_start_time_seconds",
            "gauge",
            "when the current pause was first seen (Unix time), 0 when not paused",
            self.targets
                .iter()
                .map(|t| {
                    let at = t.since.map_or(0.0, |s| {
                        s.duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64())
                    });
                    (label(&[("pgbouncer", &t.pgbouncer)]), at)
                })
                .collect(),
        );
        let counts = |map: &BTreeMap<&'static str, u64>, key: &str, keys: &[&str]| {
            let mut samples: Vec<(String, f64)> = keys
                .iter()
                .map(|k| (label(&[(key, k)]), *map.get(k).unwrap_or(&0) as f64))
                .collect();
            for (k, v) in map {
                if !keys.contains(k) {
                    samples.push((label(&[(key, k)]), *v as f64));
                }
            }
            samples
        };
        family(
            "pph_watchdog_pauses_total",
            "counter",
            "pauses seen, by owner",
            counts(&self.pauses, "owner", &["hooks", "held", "other"]),
        );
        family(
            "pph_watchdog_resumes_total",
            "counter",
            "RESUMEs the watchdog sent, by reason",
            counts(&self.resumes, "reason", &["new-primary", "max-pause"]),
        );
        family(
            "pph_watchdog_last_pause_duration_seconds",
            "gauge",
            "how long the last pause that ended lasted",
            vec![(
                String::new(),
                self.last_pause_ms.map_or(0.0, |ms| ms as f64 / 1000.0),
            )],
        );
        family(
            "pph_watchdog_look_errors_total",
            "counter",
            "looks that failed, by kind",
            counts(
                &self.errors,
                "kind",
                &[
                    "password",
                    "resolve",
                    "admin",
                    "show-state",
                    "show-clients",
                    "route",
                    "resume",
                ],
            ),
        );
        family(
            "pph_watchdog_max_pause_seconds",
            "gauge",
            "--max-pause",
            vec![(String::new(), self.max_pause.as_secs_f64())],
        );
        out
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub live: bool,
    pub ready: bool,
    pub not_ready: Option<String>,
    pub max_pause_s: f64,
    pub last_look: Option<f64>,
    pub pgbouncers: Vec<PgBouncerReport>,
    pub failing: BTreeMap<String, String>,
    pub last_pause_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct PgBouncerReport {
    pub pgbouncer: String,
    pub reachable: bool,
    pub show_state: bool,
    pub paused: bool,
    pub paused_since: Option<f64>,
    pub owner: Option<&'static str>,
    pub pause_id: Option<String>,
    pub ended_by: Option<String>,
}

/// Serves until the process ends; one task per connection, each bounded.
pub async fn serve(listener: tokio::net::TcpListener, shared: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &shared)).await;
        });
    }
}

async fn answer(mut stream: tokio::net::TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let (code, kind, body) = respond(path, shared);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        _ => "Service Unavailable",
    };
    let reply = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// (status code, content type, body) for a path.
pub fn respond(path: &str, shared: &Shared) -> (u16, &'static str, String) {
    let Ok(status) = shared.lock() else {
        return (503, "text/plain", "state unavailable\n".into());
    };
    match path.split('?').next().unwrap_or(path) {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            status.metrics(),
        ),
        "/status" => (
            200,
            "application/json",
            serde_json::to_string_pretty(&status.report()).unwrap_or_default() + "\n",
        ),
        "/healthz" if status.live() => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "the look loop is stuck\n".into()),
        "/readyz" => match status.not_ready() {
            None => (200, "text/plain", "ready\n".into()),
            Some(why) => (503, "text/plain", format!("{why}\n")),
        },
        _ => (
            404,
            "text/plain",
            "try /status, /metrics, /healthz, /readyz\n".into(),
        ),
    }
}
