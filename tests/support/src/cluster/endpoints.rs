//! The endpoints-controller stand-in for the `pg` Service of the pod network (netns.rs).
//!
//! With Patroni's Kubernetes DCS (what StackGres runs, `use_endpoints: true`), the leader
//! lock *is* the Endpoints object of the primary Service: "both the annotations, containing
//! the leader information, and the actual addresses pointing to the running leader pod are
//! updated simultaneously in one go" (patroni/patroni docs/kubernetes.rst, "Use Endpoints").
//! kube-proxy then rewrites the node's DNAT rule some milliseconds to seconds later. Here the
//! DCS is etcd, so the stand-in reads the same fact from it: the leader key
//! `/service/<scope>/leader` and that member's `conn_url` (the address Patroni itself
//! published), and applies it to the node's DNAT rule `lag` after it changed (the newest
//! state wins, as kube-proxy's sync applies the latest Endpoints). No leader key: no
//! endpoints (new connections rejected). A leader killed without grace keeps the key, and so
//! the Service keeps pointing at its dead address, until the key's TTL runs out.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::netns::{self, PodNet};
use super::util::*;

/// Longest the stand-in runs: far beyond any scenario.
const LIFETIME: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(100);

/// Changes applied to the DNAT rule: (µs since epoch, target; None: no endpoints).
pub type Changes = Arc<Mutex<Vec<(i64, Option<Ipv4Addr>)>>>;

pub struct Endpoints {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
    /// Every change applied to the DNAT rule: (µs since epoch, target).
    pub changes: Changes,
}

impl Endpoints {
    /// Starts following the leader of `scope` in etcd at `etcd` (read from the node
    /// namespace), applying each change to `net`'s `pg` Service `lag` after it appeared.
    pub fn start(net: &PodNet, etcd: SocketAddr, scope: &str, lag: Duration) -> Endpoints {
        let stop = Arc::new(AtomicBool::new(false));
        let changes: Changes = Arc::new(Mutex::new(vec![]));
        let (s2, c2) = (stop.clone(), changes.clone());
        let node = net.node.clone();
        let prefix = format!("/service/{scope}/");
        let handle = std::thread::spawn(move || {
            if let Err(e) = netns::enter(&node) {
                log(format!("endpoints stand-in: {e}"));
                return;
            }
            let started = Instant::now();
            let mut applied: Option<Ipv4Addr> = None;
            let mut pending: Option<(Option<Ipv4Addr>, Instant)> = None;
            while !s2.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
                if let Ok(want) = leader_ip(etcd, &prefix) {
                    if want == applied {
                        pending = None;
                    } else {
                        if pending.map(|p| p.0) != Some(want) {
                            pending = Some((want, Instant::now()));
                        }
                        let since = pending.unwrap().1;
                        if since.elapsed() >= lag {
                            match netns::set_endpoint(&node, want) {
                                Ok(()) => {
                                    log(format!(
                                        "endpoints stand-in: Service pg -> {} ({:?} after the leader changed)",
                                        want.map_or("no endpoints".into(), |a| a.to_string()),
                                        since.elapsed()
                                    ));
                                    c2.lock().unwrap().push((now_us(), want));
                                    applied = want;
                                    pending = None;
                                }
                                Err(e) => log(format!("endpoints stand-in: {e}")),
                            }
                        }
                    }
                }
                std::thread::sleep(POLL);
            }
        });
        Endpoints {
            stop,
            handle: Some(handle),
            changes,
        }
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The leader's address as Patroni published it (its member key's `conn_url`), or None
/// when no member holds the leader key.
fn leader_ip(etcd: SocketAddr, prefix: &str) -> Res<Option<Ipv4Addr>> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let body = format!(
        r#"{{"key":"{}","range_end":"{}"}}"#,
        b64(prefix.as_bytes()),
        b64(&end)
    );
    let (st, text) = http_at(
        etcd,
        "POST",
        "/v3/kv/range",
        &body,
        Duration::from_millis(500),
    )?;
    if st != 200 {
        return Err(format!("etcd range: {st}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let mut leader = None;
    let mut members = std::collections::HashMap::new();
    for kv in v["kvs"].as_array().into_iter().flatten() {
        let key = unb64(kv["key"].as_str().unwrap_or_default());
        let val = unb64(kv["value"].as_str().unwrap_or_default());
        let Some(rest) = key.strip_prefix(prefix) else {
            continue;
        };
        if rest == "leader" {
            leader = Some(val);
        } else if let Some(name) = rest.strip_prefix("members/") {
            members.insert(name.to_string(), val);
        }
    }
    let Some(leader) = leader else {
        return Ok(None);
    };
    let conn_url = members
        .get(&leader)
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .and_then(|m| m["conn_url"].as_str().map(str::to_string))
        .ok_or_else(|| format!("no conn_url for leader {leader}"))?;
    Ok(Some(host_of(&conn_url).ok_or_else(|| {
        format!("leader {leader}: no address in {conn_url}")
    })?))
}

/// The IPv4 host of `postgres://10.213.0.5:5432/postgres`.
fn host_of(url: &str) -> Option<Ipv4Addr> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let host = hostport.rsplit_once('@').map_or(hostport, |x| x.1);
    host.split(':').next()?.parse().ok()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(s: &str) -> String {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = vec![];
    for c in s.bytes() {
        let Some(v) = B64.iter().position(|&x| x == c) else {
            continue;
        };
        bits = bits << 6 | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "/service/e2e/",
            "/service/e2e0",
        ] {
            assert_eq!(unb64(&b64(s.as_bytes())), s);
        }
        assert_eq!(b64(b"/service/x/"), "L3NlcnZpY2UveC8=");
    }

    #[test]
    fn host_of_conn_urls() {
        let cases = [
            ("postgres://10.213.0.5:5432/postgres", Some([10, 213, 0, 5])),
            ("postgres://u@10.0.0.1:5432/x", Some([10, 0, 0, 1])),
            ("postgres://127.0.0.1/postgres", Some([127, 0, 0, 1])),
            ("postgres://pg-0:5432/postgres", None),
            ("nonsense", None),
        ];
        for (url, want) in cases {
            assert_eq!(host_of(url), want.map(Ipv4Addr::from), "{url}");
        }
    }
}
