//! `on-role-change --upstream`: RESUME only once PgBouncer's own route reaches the new
//! primary. Real Postgres primary + standby and a real PgBouncer, with a small TCP proxy of
//! this file's own between PgBouncer and the cluster playing the read-write Service that
//! follows a switchover late: for [`ROUTE_DELAY`] after the promotion it still forwards to
//! the old (stopped) primary, so PgBouncer's login there fails; then it forwards to the new
//! one. PgBouncer runs with its DEFAULT `server_login_retry` (15 s) here.
//!
//! With `--upstream <proxy>` the held transaction completes within 0.5 s of the route's
//! delay and no client sees an error; without it, PgBouncer is RESUMEd while the route is
//! stale, its first login fails, the queued transaction waits out `server_login_retry`,
//! and clients arriving meanwhile are refused with an error.
//!
//! Times count from the moment the new primary left recovery, so a slow `pg_ctl promote`
//! on a busy machine does not blur them. `PPH_ROUTE_RUNS=N` repeats each scenario N times;
//! with `--include-ignored --nocapture` that gives the numbers in docs/route.md.

use pph_support as common;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{events, PgBouncer, PgBouncerBuild, Postgres};

/// How long after the promotion the proxy still routes to the old primary.
const ROUTE_DELAY: Duration = Duration::from_secs(2);
/// Allowed on top of the route's delay with `--upstream`.
const SLACK: Duration = Duration::from_millis(500);
/// PgBouncer's default `server_login_retry`.
const DEFAULT_LOGIN_RETRY_S: u64 = 15;
/// A transaction through PgBouncer is given this long to finish after the promotion.
const CLIENT_BOUND: Duration = Duration::from_secs(25);
/// Clients that arrive after the promotion: while the route is still stale, and after it
/// switched.
const EARLY_CLIENT_AT: Duration = Duration::from_millis(500);
const LATE_CLIENT_AT: Duration = Duration::from_secs(3);

// ------------------------------------------------------------------ the proxy

/// Where the proxy forwards: `old` until `switch` (if any), then `new`.
struct Route {
    old: u16,
    switch: Option<(Instant, u16)>,
}

struct ProxyState {
    route: Mutex<Route>,
    stop: AtomicBool,
    /// Open forwarded pairs, by id, so Drop can cut them.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    live: AtomicUsize,
    /// Connections accepted while the route pointed at the old / the new member.
    to_old: AtomicUsize,
    to_new: AtomicUsize,
}

/// A TCP proxy on 127.0.0.1:<port> (std::net, one thread per direction, at most
/// [`Proxy::MAX_LIVE`] connections at once). A connection to a backend that refuses is
/// accepted and closed at once, the way a Service in front of a stopped pod looks.
/// Drop: stops accepting, cuts every open connection, joins the acceptor.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    const MAX_LIVE: usize = 64;

    fn start(old: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            route: Mutex::new(Route { old, switch: None }),
            stop: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            to_old: AtomicUsize::new(0),
            to_new: AtomicUsize::new(0),
        });
        let st = state.clone();
        let acceptor = thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if st.live.load(Ordering::SeqCst) >= Self::MAX_LIVE {
                            continue; // dropped: closed
                        }
                        st.live.fetch_add(1, Ordering::SeqCst);
                        let st = st.clone();
                        thread::spawn(move || {
                            forward(&st, client);
                            st.live.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// From `at` on, new connections go to `new`.
    fn switch_at(&self, at: Instant, new: u16) {
        self.state.route.lock().unwrap().switch = Some((at, new));
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.state.to_old.load(Ordering::SeqCst),
            self.state.to_new.load(Ordering::SeqCst),
        )
    }
}

fn forward(st: &ProxyState, client: TcpStream) {
    let _ = client.set_nonblocking(false);
    let target = {
        let route = st.route.lock().unwrap();
        match route.switch {
            Some((at, new)) if Instant::now() >= at => {
                st.to_new.fetch_add(1, Ordering::SeqCst);
                new
            }
            _ => {
                st.to_old.fetch_add(1, Ordering::SeqCst);
                route.old
            }
        }
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], target));
    let Ok(upstream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        let _ = client.shutdown(Shutdown::Both);
        return; // the old member is down: the caller sees a closed connection
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let id = st.next_id.fetch_add(1, Ordering::SeqCst);
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    ) else {
        return;
    };
    st.open.lock().unwrap().insert(id, (c3, u3));
    if st.stop.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
    }
    let up = thread::spawn(move || pipe(c2, u2));
    pipe(upstream, client);
    let _ = up.join();
    st.open.lock().unwrap().remove(&id);
}

/// Copies `from` to `to` until EOF or an error, then passes the EOF on.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    if std::io::copy(&mut from, &mut to).is_err() {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    } else {
        let _ = to.shutdown(Shutdown::Write);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for (_, (a, b)) in self.state.open.lock().unwrap().drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

// ------------------------------------------------------------------ the scenario

/// Sets `server_login_retry` in the harness's pgbouncer.ini (it writes 1) and RELOADs.
/// The file exists (owned by the server's user, mode 0600): rewriting keeps both.
fn set_server_login_retry(pgb: &PgBouncer, seconds: u64) {
    let path = pgb.dir.join("pgbouncer.ini");
    let ini = std::fs::read_to_string(&path).expect("read pgbouncer.ini");
    let mut out = String::new();
    for line in ini.lines() {
        if line.trim_start().starts_with("server_login_retry") {
            out.push_str(&format!("server_login_retry = {seconds}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    std::fs::write(&path, out).expect("write pgbouncer.ini");
    pgb.admin("RELOAD")
        .unwrap_or_else(|e| panic!("RELOAD: {e}"));
    let config = pgb.admin("SHOW CONFIG").expect("SHOW CONFIG");
    assert!(
        config
            .lines()
            .any(|l| l.starts_with(&format!("server_login_retry|{seconds}|"))),
        "server_login_retry not {seconds} after RELOAD:\n{config}"
    );
}

/// What one switchover looked like from the clients' side. Times are counted from the
/// moment the new primary left recovery (seen by [`Promotion`]).
#[derive(Debug)]
struct Outcome {
    /// `pg_ctl promote` to the end of recovery (not the hooks' doing).
    promotion: Duration,
    /// The transaction queued during PAUSE: when it ended (the stall), and its result.
    held: Duration,
    held_result: Result<String, String>,
    /// A transaction starting at [`EARLY_CLIENT_AT`] (route still stale) and one at
    /// [`LATE_CLIENT_AT`] (route switched): how long each took, and its result.
    early: Duration,
    early_result: Result<String, String>,
    late: Duration,
    late_result: Result<String, String>,
    /// on-role-change's exit, its stderr, and when it ended.
    hook_ok: bool,
    hook_done: Duration,
    hook_stderr: String,
    /// Proxy connections routed to the old / the new member since `pg_ctl promote`.
    proxied: (usize, usize),
    pgbouncer_log: String,
}

fn result_of(out: Option<&Output>) -> Result<String, String> {
    match out {
        None => Err("still running".into()),
        Some(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().into()),
        Some(o) => Err(String::from_utf8_lossy(&o.stderr).trim().into()),
    }
}

/// Watches a standby for the end of its promotion over one open connection (tokio-postgres,
/// polled every 10 ms), so the route's delay counts from the promotion itself, however
/// long `pg_ctl promote` takes on a busy machine.
struct Promotion {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Promotion {
    fn watch(standby: &Postgres) -> Promotion {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(
                &format!(
                    "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
                    standby.port
                ),
                tokio_postgres::NoTls,
            )
            .await
            .expect("connect to the standby");
            tokio::spawn(connection);
            client
        });
        Promotion { runtime, client }
    }

    /// The moment the standby answers `pg_is_in_recovery()` false (bounded: 30 s).
    fn wait(&self) -> Instant {
        self.runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let rows = self
                    .client
                    .simple_query("SELECT pg_is_in_recovery()")
                    .await
                    .expect("pg_is_in_recovery()");
                let in_recovery = rows.iter().any(|m| {
                    matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("t"))
                });
                if !in_recovery {
                    return Instant::now();
                }
                assert!(Instant::now() < deadline, "the standby never left recovery");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}

/// Old primary A, standby B; PgBouncer -> proxy -> A. PAUSE, a transaction queues, A stops,
/// B is promoted, on-role-change starts right after `pg_ctl promote` (with `--upstream
/// <proxy>` or without), and the proxy keeps routing to the stopped A until
/// [`ROUTE_DELAY`] after B left recovery. PgBouncer has `server_login_retry = login_retry`.
fn switchover(build: PgBouncerBuild, with_upstream: bool, login_retry: u64) -> Outcome {
    let mut a = Postgres::start_primary();
    let b = Postgres::start_standby(&a);
    let proxy = Proxy::start(a.port);
    let pgb = PgBouncer::start(build, "127.0.0.1", proxy.port);
    set_server_login_retry(&pgb, login_retry);
    // A server connection through the proxy to A, as in production.
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(10));
    let promotion = Promotion::watch(&b);

    // before-stop's part, then the leader stops.
    pgb.admin("PAUSE").unwrap_or_else(|e| panic!("PAUSE: {e}"));
    let tx = "INSERT INTO public.t (v) VALUES ('route'); SELECT inet_server_port()";
    let mut held = common::spawn_psql(&pgb.app_url(), tx);
    a.stop_fast();

    let before = proxy.counts();
    let promote = Instant::now();
    b.promote();
    let mut hook = common::client(common::bin("on-role-change"));
    hook.args(["on_role_change", "primary", "demo"])
        .args(["--postgres", &b.url(), "--pgbouncer", &pgb.admin_url()])
        .env("PGBOUNCER_PASSWORD", PgBouncer::ADMIN_PASSWORD)
        .env("RUST_LOG", "info")
        .env("HOOKS_LOG_FORMAT", "json")
        // Wait and RESUME in the foreground process (when the binary offers a detached
        // worker): its exit code and log are what this test reads.
        .env("HOOKS_NO_DETACH", "true");
    if with_upstream {
        let upstream = format!("postgresql://postgres@127.0.0.1:{}/postgres", proxy.port);
        hook.args(["--upstream", &upstream]);
    }
    let mut hook = common::spawn_bg(hook);
    let t0 = promotion.wait();
    proxy.switch_at(t0 + ROUTE_DELAY, b.port);

    // (start after t0, the client once started, its duration once finished)
    let mut arrivals: [(Duration, Option<common::BgClient>, Option<Duration>); 2] =
        [(EARLY_CLIENT_AT, None, None), (LATE_CLIENT_AT, None, None)];
    let (mut held_at, mut hook_at) = (None, None);
    while t0.elapsed() < CLIENT_BOUND {
        if held_at.is_none() && held.is_finished() {
            held_at = Some(t0.elapsed());
        }
        if hook_at.is_none() && hook.is_finished() {
            hook_at = Some(t0.elapsed());
        }
        for (at, client, took) in arrivals.iter_mut() {
            if client.is_none() && t0.elapsed() >= *at {
                *client = Some(common::spawn_psql(&pgb.app_url(), tx));
            }
            if let Some(c) = client.as_mut() {
                if took.is_none() && c.is_finished() {
                    *took = Some(c.started.elapsed());
                }
            }
        }
        if held_at.is_some() && hook_at.is_some() && arrivals.iter().all(|a| a.2.is_some()) {
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let hook_out = hook.wait_timeout(Duration::ZERO).cloned();
    let [early, late] = arrivals.map(|(_, client, took)| {
        let mut client = client.expect("client started");
        let took = took.unwrap_or(client.started.elapsed());
        (took, result_of(client.wait_timeout(Duration::ZERO)))
    });
    Outcome {
        promotion: t0 - promote,
        held: held_at.unwrap_or(CLIENT_BOUND),
        held_result: result_of(held.wait_timeout(Duration::ZERO)),
        early: early.0,
        early_result: early.1,
        late: late.0,
        late_result: late.1,
        hook_ok: hook_out.as_ref().is_some_and(|o| o.status.success()),
        hook_done: hook_at.unwrap_or(CLIENT_BOUND),
        hook_stderr: hook_out
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|| "on-role-change still running".into()),
        proxied: {
            let after = proxy.counts();
            (after.0 - before.0, after.1 - before.1)
        },
        pgbouncer_log: pgb.log(),
    }
}

fn runs() -> usize {
    std::env::var("PPH_ROUTE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

fn short(r: &Result<String, String>) -> String {
    match r {
        Ok(v) => format!("ok({})", v.replace('\n', " ")),
        Err(e) => format!("ERROR({})", e.replace('\n', " / ")),
    }
}

fn report(build: PgBouncerBuild, with_upstream: bool, login_retry: u64, o: &Outcome) {
    eprintln!(
        "[route] {build:?} {} server_login_retry={login_retry}: promotion {:.2}s, then: held {:.2}s {} | early {:.2}s {} | late {:.2}s {} | hook done at {:.2}s | proxied old/new {:?}",
        if with_upstream { "--upstream   " } else { "no --upstream" },
        o.promotion.as_secs_f64(),
        o.held.as_secs_f64(),
        short(&o.held_result),
        o.early.as_secs_f64(),
        short(&o.early_result),
        o.late.as_secs_f64(),
        short(&o.late_result),
        o.hook_done.as_secs_f64(),
        o.proxied,
    );
    if std::env::var_os("PPH_ROUTE_VERBOSE").is_some() {
        eprintln!("{}\n{}", o.hook_stderr, o.pgbouncer_log);
    }
}

fn late_route_makes_the_difference(build: PgBouncerBuild) {
    for _ in 0..runs() {
        let with = switchover(build, true, DEFAULT_LOGIN_RETRY_S);
        report(build, true, DEFAULT_LOGIN_RETRY_S, &with);
        let context = || {
            format!(
                "{with:#?}\n--- on-role-change:\n{}\n--- pgbouncer:\n{}",
                with.hook_stderr, with.pgbouncer_log
            )
        };
        assert!(with.hook_ok, "on-role-change failed: {}", context());
        assert!(
            events::said(
                &with.hook_stderr,
                &[("event", "route"), ("action", "reached")]
            ),
            "{}",
            context()
        );
        assert!(
            with.held_result.is_ok(),
            "--upstream: the held transaction failed: {}",
            context()
        );
        assert!(
            with.held >= ROUTE_DELAY,
            "RESUMEd before the route switched?! {}",
            context()
        );
        assert!(
            with.held <= ROUTE_DELAY + SLACK,
            "--upstream: stall {:?} is more than {SLACK:?} past the route's delay {ROUTE_DELAY:?}: {}",
            with.held,
            context()
        );
        assert!(
            !with.pgbouncer_log.contains("server conn crashed?"),
            "--upstream: PgBouncer still tried the stale route: {}",
            context()
        );
        assert!(
            with.early_result.is_ok() && with.late_result.is_ok(),
            "--upstream: clients arriving after the promotion must see no error: {}",
            context()
        );
        assert!(
            with.late < Duration::from_secs(1),
            "--upstream: a client after the switch took {:?}: {}",
            with.late,
            context()
        );

        let without = switchover(build, false, DEFAULT_LOGIN_RETRY_S);
        report(build, false, DEFAULT_LOGIN_RETRY_S, &without);
        let context = || {
            format!(
                "{without:#?}\n--- on-role-change:\n{}\n--- pgbouncer:\n{}",
                without.hook_stderr, without.pgbouncer_log
            )
        };
        assert!(without.hook_ok, "on-role-change failed: {}", context());
        // The scenario itself: RESUME went out while the route was still stale.
        assert!(
            without.hook_done < ROUTE_DELAY,
            "promotion took longer than the route's delay; the scenario proves nothing: {}",
            context()
        );
        // What PgBouncer (1.18 and 1.24 alike) does: its first login after RESUME failed,
        // so the queued transaction waits out server_login_retry, and a client arriving
        // meanwhile is turned away at once.
        assert!(
            without.proxied.0 >= 1 && without.pgbouncer_log.contains("server conn crashed?"),
            "PgBouncer did not try the stale route: {}",
            context()
        );
        assert!(
            without.held > Duration::from_secs(10),
            "without --upstream the late route should cost a long stall: {}",
            context()
        );
        assert!(
            without.late_result.is_err(),
            "without --upstream a client during the retry wait should get an error: {}",
            context()
        );
    }
}

#[test]
fn late_route_pgbouncer_current() {
    late_route_makes_the_difference(PgBouncerBuild::Trixie);
}

#[test]
fn late_route_pgbouncer_1_18() {
    late_route_makes_the_difference(PgBouncerBuild::Debian);
}

/// The other measure, alone: the harness's `server_login_retry = 1` without `--upstream`.
/// Measurement only (the numbers in docs/route.md), not part of the proof:
/// `PPH_ROUTE_RUNS=3 cargo test --test route -- --ignored --nocapture`.
#[test]
#[ignore = "measurement for docs/route.md"]
fn measure_server_login_retry_1_without_upstream() {
    for _ in 0..runs() {
        for build in PgBouncerBuild::all() {
            let o = switchover(build, false, 1);
            report(build, false, 1, &o);
            assert!(o.hook_ok, "{}", o.hook_stderr);
        }
    }
}

/// on-role-change with `--upstream` pointing straight at `member` (no lag) through an
/// URL with other session settings: the route must be recognised at once.
fn direct_route(member: &Postgres, pgb: &PgBouncer, callback: &[&str]) -> (Duration, String) {
    pgb.admin("PAUSE").unwrap_or_else(|e| panic!("PAUSE: {e}"));
    // Another database or role, or `options=`, may bring another TimeZone and DateStyle.
    let upstream = format!(
        "postgresql://postgres@127.0.0.1:{}/template1?options=-c%20TimeZone%3DPacific%2FChatham%20-c%20DateStyle%3DGerman",
        member.port
    );
    let mut hook = common::client(common::bin("on-role-change"));
    hook.args(callback)
        .args(["--postgres", &member.url(), "--pgbouncer", &pgb.admin_url()])
        .args(["--upstream", &upstream, "--route-timeout", "3s"])
        .env("PGBOUNCER_PASSWORD", PgBouncer::ADMIN_PASSWORD)
        .env("RUST_LOG", "info")
        .env("HOOKS_LOG_FORMAT", "json")
        .env("HOOKS_NO_DETACH", "true");
    let started = Instant::now();
    let out = common::run_with_timeout(hook, Duration::from_secs(30));
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(!pgb.is_paused(), "{stderr}");
    (took, stderr)
}

/// The route check compares identities: the same server must count as this member whatever
/// the upstream URL's session settings, and a standby leader (RESUMEd without promotion,
/// in recovery by design) must count too. Otherwise every RESUME waits --route-timeout.
#[test]
fn the_route_check_recognises_this_member() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", primary.port);
    for (member, callback) in [
        (&primary, ["on_role_change", "primary", "demo"]),
        (&standby, ["on_start", "standby_leader", "demo"]),
    ] {
        let (took, stderr) = direct_route(member, &pgb, &callback);
        assert!(
            events::said(&stderr, &[("event", "route"), ("action", "reached")]),
            "{callback:?}: {stderr}"
        );
        assert!(
            !events::said(&stderr, &[("event", "route"), ("action", "stale")]),
            "{callback:?}: {stderr}"
        );
        assert!(
            took < Duration::from_secs(2),
            "{callback:?} took {took:?}: {stderr}"
        );
    }
}
