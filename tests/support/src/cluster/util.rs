//! Time, log-timestamp and HTTP helpers for the cluster; the process, file and port
//! plumbing is the harness's one copy in `crate::process` (re-exported here).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::process::*;

/// Microseconds since the Unix epoch (wall clock: comparable with pgbench -l and logs).
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

pub fn log(msg: impl AsRef<str>) {
    let t = now_us();
    eprintln!("[e2e {}] {}", fmt_hms(t), msg.as_ref());
}

pub fn fmt_hms(us: i64) -> String {
    let s = us.div_euclid(1_000_000);
    let ms = us.rem_euclid(1_000_000) / 1000;
    let sod = s.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms
    )
}

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses the leading `YYYY-MM-DD HH:MM:SS[.fff][ UTC]` (or `T` separator) of a log line
/// as UTC. Every process here logs in UTC (TZ=UTC is set for all of them).
pub fn parse_log_ts(line: &str) -> Option<i64> {
    let b = line.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| line.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut us = 0i64;
    if b.len() > 20 && (b[19] == b'.' || b[19] == b',') {
        let frac: String = line[20..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if !frac.is_empty() {
            let digits = frac.len().min(6);
            us = frac[..digits].parse::<i64>().ok()? * 10i64.pow((6 - digits) as u32);
        }
    }
    Some(((days_from_civil(y, mo, d) * 86_400) + h * 3600 + mi * 60 + s) * 1_000_000 + us)
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).is_ok()
}

/// A plain HTTP/1.0 GET on 127.0.0.1; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Res<(u16, String)> {
    http_req(port, "GET", path, "")
}

pub fn http_req(port: u16, method: &str, path: &str, body: &str) -> Res<(u16, String)> {
    http_at(
        ([127, 0, 0, 1], port).into(),
        method,
        path,
        body,
        Duration::from_secs(5),
    )
}

/// A plain HTTP/1.0 request to `addr` (connect bounded by 1 s, reads and writes by `io`);
/// returns (status, body).
pub fn http_at(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    io: Duration,
) -> Res<(u16, String)> {
    let port = addr.port();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1).min(io))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(io)).ok();
    s.set_write_timeout(Some(io)).ok();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .map_err(|e| format!("read :{port}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad HTTP answer from :{port}{path}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn pid_alive(pid: i64) -> bool {
    // A zombie still has /proc/PID; treat state Z as dead.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(") ")
            .map(|x| !x.1.starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

pub fn children_of(pid: i64) -> Vec<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}
