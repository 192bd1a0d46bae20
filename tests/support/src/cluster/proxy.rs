//! A small TCP proxy on 127.0.0.1 in front of one PgBouncer's port, used only by the hooks
//! (their PGBOUNCER_URLS point at it; clients and the harness use PgBouncer directly), so a
//! scenario can make the admin console unreachable for the hooks alone: while cut, every
//! new connection is accepted and closed at once (the hook sees the connection closed
//! before the startup reply), established ones keep flowing. Every loop is bounded.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::util::*;

/// Longest a proxy (and each of its pumps) lives: far beyond any scenario.
const LIFETIME: Duration = Duration::from_secs(3600);

pub struct Proxy {
    pub port: u16,
    pub target: u16,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// connections refused while cut
    refused: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: u16) -> Res<Proxy> {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy bind: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let port = l.local_addr().map_err(|e| e.to_string())?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (c2, s2, r2) = (cut.clone(), stop.clone(), refused.clone());
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            while !s2.load(Ordering::Relaxed) && start.elapsed() < LIFETIME {
                match l.accept() {
                    Ok((down, _)) => {
                        if c2.load(Ordering::Relaxed) {
                            r2.fetch_add(1, Ordering::Relaxed);
                            let _ = down.shutdown(Shutdown::Both);
                            continue;
                        }
                        let _ = down.set_nonblocking(false);
                        let s3 = s2.clone();
                        std::thread::spawn(move || splice(down, target, s3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        log(format!("admin proxy :{port} -> :{target}"));
        Ok(Proxy {
            port,
            target,
            cut,
            stop,
            refused,
            handle: Some(handle),
        })
    }

    pub fn set_cut(&self, on: bool) {
        log(format!(
            "admin proxy :{} {}",
            self.port,
            if on {
                "CUT (new connections closed)"
            } else {
                "restored"
            }
        ));
        self.cut.store(on, Ordering::Relaxed);
    }

    /// The cut switch, for a thread that cuts the proxy on an event.
    pub fn cut_switch(&self) -> Arc<AtomicBool> {
        self.cut.clone()
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies both ways until either side closes (or the proxy stops; reads time out every
/// 200 ms to look at the flag).
fn splice(down: TcpStream, target: u16, stop: Arc<AtomicBool>) {
    let Ok(up) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], target).into(), Duration::from_secs(2))
    else {
        return;
    };
    let pairs = [
        (down.try_clone(), up.try_clone()),
        (up.try_clone(), down.try_clone()),
    ];
    let mut hs = vec![];
    for (r, w) in pairs {
        let (Ok(mut r), Ok(mut w)) = (r, w) else {
            return;
        };
        let stop = stop.clone();
        hs.push(std::thread::spawn(move || {
            let _ = r.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 16 * 1024];
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < LIFETIME {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => break,
                }
            }
            let _ = w.shutdown(Shutdown::Both);
            let _ = r.shutdown(Shutdown::Both);
        }));
    }
    for h in hs {
        let _ = h.join();
    }
}
