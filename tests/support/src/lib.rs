//! The one test harness: starts REAL servers (PostgreSQL 15, PgBouncer 1.18 and 1.24+, and
//! in [`cluster`] whole Patroni clusters with etcd and HAProxy) on 127.0.0.1, on free ports,
//! in private directories under `/tmp/pph-tests` (override with `PPH_TEST_ROOT`), and stops
//! them by PID on Drop.
//!
//! A library crate of its own (a dev-dependency), so it is compiled once for every test
//! file: `use pph_support as common;`. Machine prerequisites come from `scripts/setup`.
//! What the hooks say is read with [`events`], the one parser of their JSON log lines; a test
//! that does not run says so with [`skipped`].
//!
//! * Servers run as user `postgres` when the tests run as root (initdb/postgres refuse
//!   root, PgBouncer too): `setpriv --reuid=postgres --regid=postgres --init-groups
//!   --pdeathsig ...`, which `exec`s, so the PID we hold is the server's own PID.
//!   `--pdeathsig` makes a server die with the *thread* that started it even if the test
//!   process is killed hard, so start servers on the test's own thread (or keep the
//!   starting thread alive as long as the server is needed).
//! * Clients (psql, pgbench, the hook binaries) run as the current user.
//! * Every wait is bounded; every failure panics with the server's log tail.
//! * A directory is removed on Drop when the test did not panic; after a panic it is
//!   kept for post-mortem (path printed on stderr) and removed by a later run once its
//!   owning process is gone and it is 15 minutes old.
//!
//! Environment overrides, all `PPH_*`: `PPH_PG_BIN` (default `/usr/lib/postgresql/15/bin`),
//! `PPH_PGBOUNCER_DEBIAN` (default `/usr/sbin/pgbouncer`), `PPH_PGBOUNCER_TRIXIE` (default
//! `/opt/pgbouncer-trixie/bin/pgbouncer`), `PPH_TEST_ROOT`, `PPH_TARGET` (another target's
//! release binaries, under qemu: [`foreign`]); for the cluster (docs/e2e.md): `PPH_PATRONI`
//! (3, 4 or both), `PPH_KEEP`, `PPH_HOOKS_DIR`, `PPH_E2E_TMP`, `PPH_OUT`, `PPH_PGBENCH_SECS`
//! and the benchmark's `PPH_BENCH_*`.

pub mod cluster;
pub mod events;
pub mod foreign;
pub mod manifests;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// A binary target of this package: `CARGO_BIN_EXE_<name>` if set in the environment, else
/// `<target>/<profile>/<name>` next to the test executable's `deps/` directory (where cargo
/// puts the bin targets it builds for integration tests). With `PPH_TARGET=<triple>` (e.g.
/// `aarch64-unknown-linux-musl`), that target's release binary instead, run under qemu
/// ([`foreign::runnable`]); a missing or stale one panics.
pub fn bin(name: &str) -> PathBuf {
    if let Some(triple) = std::env::var_os("PPH_TARGET").filter(|t| !t.is_empty()) {
        let triple = triple.to_string_lossy();
        return foreign::runnable(&triple, name)
            .unwrap_or_else(|e| panic!("PPH_TARGET={triple}: {e}"));
    }
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in <target>/<profile>/deps");
    let p = profile_dir.join(name);
    assert!(p.exists(), "binary {name} not found at {}", p.display());
    p
}

pub mod process;
pub mod session;
pub mod tls;
pub use process::*;

/// Says that `test` did not run, and why: `SKIPPED: <test> (<reason>)` on stderr. Written to
/// stderr itself, not through `eprintln!`, so that the test runner's output capture does not
/// swallow it: `cargo test` still counts the test as passed, and this line is what tells.
pub fn skipped(test: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test} ({reason})");
}

// ------------------------------------------------------------------ plumbing

/// Default bound for short commands (psql, pg_ctl, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::env::var_os("PPH_PG_BIN").unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into());
    PathBuf::from(dir).join(tool)
}

/// A client command (psql etc.) with a scrubbed libpq environment.
pub fn client(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    scrub_env(&mut cmd);
    cmd.env("PGCONNECT_TIMEOUT", "5");
    cmd
}

// ------------------------------------------------------- directories & ports

fn test_root() -> PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = PathBuf::from(
            std::env::var_os("PPH_TEST_ROOT").unwrap_or_else(|| "/tmp/pph-tests".into()),
        );
        fs::create_dir_all(&root).expect("create test root");
        // world-writable + sticky like /tmp: both root and postgres create entries.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o1777)).expect("chmod test root");
        remove_stale_dirs(&root);
        root
    })
    .clone()
}

/// Removes `<root>/<pid>-*` directories whose owning test process is gone: templates
/// at once, directories kept after a failure once they are 15 minutes old (time for a
/// post-mortem even when another test run starts meanwhile).
fn remove_stale_dirs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let age = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if name.ends_with("-template") || age > Duration::from_secs(15 * 60) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh private directory `<root>/<pid>-<n>-<kind>` owned by user postgres.
pub fn new_dir(kind: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let dir = test_root().join(format!("{}-{n}-{kind}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create test dir");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    chown_postgres(&dir);
    dir
}

/// Writes a file readable by the servers (owned by postgres, mode 0600).
fn write_private(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    chown_postgres(path);
}

fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Did the server log a bind failure after byte `offset` of `log`?
fn port_conflict(log: &Path, offset: u64) -> bool {
    let s = fs::read(log).unwrap_or_default();
    let s = String::from_utf8_lossy(s.get(offset as usize..).unwrap_or_default());
    s.contains("Address already in use") || s.contains("could not bind")
}

/// Attempts for a server start that failed because its port got taken meanwhile.
const START_ATTEMPTS: usize = 5;

// ----------------------------------------------------------------- Postgres

/// Password of the `app` role (in Postgres and in PgBouncer's auth_file).
pub const APP_PASSWORD: &str = "app-secret";

/// A PostgreSQL 15 server run by the harness. Drop: immediate shutdown (SIGQUIT to the
/// postmaster PID), SIGKILL if it is not gone within 10 s.
pub struct Postgres {
    pub port: u16,
    /// Private directory: `data/`, `sock/`, `postgres.log`.
    pub dir: PathBuf,
    child: Option<Child>,
}

/// Template cluster made once per test process (initdb is the slow part, ~1 s), then
/// copied for each primary. Contains role `app` and table `public.t`.
fn template() -> PathBuf {
    TEMPLATE_DIR
        .get_or_init(|| {
            let dir = new_dir("template");
            let data = dir.join("data");
            let mut c = as_postgres_dying_with(pg_bin("initdb"), Some("KILL"));
            c.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]);
            run_ok(&mut c, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e}"));
            // pg_hba from initdb --auth=trust already trusts local sockets and
            // 127.0.0.1/::1 for all databases and for replication.
            let mut pg = Postgres::spawn(dir.clone());
            pg.psql(&format!(
                "CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';
             CREATE TABLE public.t (id bigserial PRIMARY KEY, v text, at timestamptz DEFAULT now());
             GRANT ALL ON public.t TO app;
             GRANT ALL ON SEQUENCE public.t_id_seq TO app;
             GRANT CREATE ON SCHEMA public TO app;"
            ));
            pg.stop_fast();
            std::mem::forget(pg); // keep the template directory for this process's lifetime
            remove_template_at_exit();
            dir
        })
        .clone()
}

static TEMPLATE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Registers a libc `atexit` hook (the test harness ends with `process::exit`) that
/// removes the template directory; a process killed hard leaves it to the stale-dir
/// sweep of the next run.
fn remove_template_at_exit() {
    extern "C" {
        fn atexit(cb: extern "C" fn()) -> i32;
    }
    extern "C" fn cleanup() {
        if let Some(dir) = TEMPLATE_DIR.get() {
            let _ = fs::remove_dir_all(dir);
        }
    }
    // SAFETY: registers a plain function without captured state; libc is linked by std.
    unsafe {
        atexit(cleanup);
    }
}

impl Postgres {
    /// initdb'd (copied from a per-process template), started primary: trust auth on
    /// 127.0.0.1 and the socket in `<dir>/sock`, wal_level=replica, hot_standby=on,
    /// role `app` (LOGIN, password [`APP_PASSWORD`]) and table
    /// `public.t(id bigserial, v text, at timestamptz)` writable by `app`.
    pub fn start_primary() -> Postgres {
        let tpl = template().join("data");
        let dir = new_dir("pg");
        let mut c = as_postgres(Path::new("cp"));
        c.arg("-a").arg(&tpl).arg(dir.join("data"));
        run_ok(&mut c, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        Postgres::spawn(dir)
    }

    /// A streaming hot standby of `primary` (pg_basebackup -R), started and streaming.
    pub fn start_standby(primary: &Postgres) -> Postgres {
        let dir = new_dir("standby");
        let mut c = as_postgres(pg_bin("pg_basebackup"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
        ])
        .arg(dir.join("data"))
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        run_ok(&mut c, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let pg = Postgres::spawn(dir);
        wait_until(
            "standby streaming",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || (pg.psql("SELECT status FROM pg_stat_wal_receiver") == "streaming").then_some(()),
        );
        pg
    }

    /// Starts the cluster in `<dir>/data` on a free port (retrying on port conflicts)
    /// and waits until it accepts connections.
    fn spawn(dir: PathBuf) -> Postgres {
        let mut pg = Postgres {
            port: 0,
            dir,
            child: None,
        };
        pg.start();
        pg
    }

    /// Starts the (stopped) cluster in `self.dir` on a fresh free port, retrying on
    /// port conflicts; waits until it accepts connections.
    fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let dir = self.dir.clone();
        let sock = dir.join("sock");
        if !sock.exists() {
            fs::create_dir(&sock).unwrap();
            chown_postgres(&sock);
        }
        let log = dir.join("postgres.log");
        for attempt in 1..=START_ATTEMPTS {
            let offset = file_len(&log);
            let port = free_port();
            let logf = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            chown_postgres(&log);
            let mut c = as_postgres_dying_with(pg_bin("postgres"), Some("QUIT"));
            c.arg("-D")
                .arg(dir.join("data"))
                .arg("-p")
                .arg(port.to_string());
            for (k, v) in [
                ("listen_addresses", "127.0.0.1"),
                ("unix_socket_directories", sock.to_str().unwrap()),
                ("wal_level", "replica"),
                ("hot_standby", "on"),
                ("max_wal_senders", "10"),
                ("max_connections", "50"),
                ("shared_buffers", "16MB"),
                ("fsync", "off"),
                ("full_page_writes", "off"),
                // synchronous_commit stays on: with fsync=off a commit costs only a
                // write(2), and a committed row survives an immediate stop / SIGKILL.
                ("wal_receiver_status_interval", "1s"),
                ("log_line_prefix", "%m [%p] "),
            ] {
                c.arg("-c").arg(format!("{k}={v}"));
            }
            c.stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf);
            self.port = port;
            self.child = Some(c.spawn().expect("spawn postgres"));
            match self.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return,
                Err(exited) => {
                    self.stop();
                    if exited && port_conflict(&log, offset) && attempt < START_ATTEMPTS {
                        continue;
                    }
                    panic!(
                        "postgres in {} did not start:\n{}",
                        dir.display(),
                        tail(&log, 30)
                    );
                }
            }
        }
    }

    /// Ok when connections are accepted; Err(true) if the postmaster exited,
    /// Err(false) on timeout (the process is then killed).
    fn wait_ready(&mut self, timeout: Duration) -> Result<(), bool> {
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().unwrap();
            if child.try_wait().expect("try_wait").is_some() {
                return Err(true);
            }
            let mut c = client(pg_bin("pg_isready"));
            c.args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-t",
                "1",
            ]);
            if run_with_timeout(c, Duration::from_secs(5)).status.success() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                self.stop();
                return Err(false);
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `postgresql://postgres@127.0.0.1:PORT/postgres` (trust auth).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Unix socket directory (`PGHOST=<this>` works for libpq clients).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// `pg_ctl promote --no-wait`.
    pub fn promote(&self) {
        let mut c = as_postgres(pg_bin("pg_ctl"));
        c.arg("promote")
            .arg("-D")
            .arg(self.data_dir())
            .arg("--no-wait");
        run_ok(&mut c, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Runs `psql -XAtq -v ON_ERROR_STOP=1 -c SQL` as `postgres` over TCP; panics with
    /// stderr on failure; returns trimmed stdout (rows separated by '\n', columns by '|').
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("psql on port {} failed: {e}\nSQL: {sql}", self.port))
    }

    /// Like [`Postgres::psql`] but returns Err(stderr) on failure.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        psql_url(&self.url(), sql, None)
    }

    /// Log file contents so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// Immediate shutdown: SIGQUIT to the postmaster, wait (bounded), SIGKILL if needed.
    /// Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                signal(child.id(), "QUIT");
            }
            let _ = reap(&mut child, Duration::from_secs(10));
        }
    }

    /// Stops (immediate), then starts again in the same directory on a new free port
    /// (read `self.port` afterwards).
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Fast shutdown (SIGINT: clean checkpoint, no crash recovery at next start).
    pub fn stop_fast(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                signal(child.id(), "INT");
            }
            let _ = reap(&mut child, Duration::from_secs(30));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("[pph] kept {} for post-mortem", self.dir.display());
        }
    }
}

/// `psql -XAtq -v ON_ERROR_STOP=1 -d URL -c SQL`, with `PGPASSWORD` from `password`
/// (never in argv). Ok(trimmed stdout) or Err(stderr).
pub fn psql_url(url: &str, sql: &str, password: Option<&str>) -> Result<String, String> {
    let mut c = client(pg_bin("psql"));
    c.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]);
    if let Some(p) = password {
        c.env("PGPASSWORD", p);
    }
    let out = run_with_timeout(c, CMD_TIMEOUT);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim_end().to_string())
    }
}

// ---------------------------------------------------------------- PgBouncer

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgBouncerBuild {
    /// Debian bookworm's package, 1.18 (`/usr/sbin/pgbouncer`). No `SHOW STATE`.
    Debian,
    /// Built by scripts/setup from Debian trixie's source package, >= 1.24
    /// (`/opt/pgbouncer-trixie/bin/pgbouncer`).
    Trixie,
}

impl PgBouncerBuild {
    pub fn all() -> [PgBouncerBuild; 2] {
        [PgBouncerBuild::Debian, PgBouncerBuild::Trixie]
    }

    pub fn path(self) -> PathBuf {
        let (var, default) = match self {
            PgBouncerBuild::Debian => ("PPH_PGBOUNCER_DEBIAN", "/usr/sbin/pgbouncer"),
            PgBouncerBuild::Trixie => (
                "PPH_PGBOUNCER_TRIXIE",
                "/opt/pgbouncer-trixie/bin/pgbouncer",
            ),
        };
        PathBuf::from(std::env::var_os(var).unwrap_or_else(|| default.into()))
    }

    /// Version string such as "1.18.0" (from `pgbouncer --version`).
    pub fn version(self) -> String {
        let mut c = Command::new(self.path());
        c.arg("--version");
        let out = run_ok(&mut c, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        // "PgBouncer 1.24.1\nlibevent ..."
        out.split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }
}

/// A PgBouncer (pool_mode=transaction) in front of one Postgres, run by the harness.
/// Drop: SIGKILL by PID.
pub struct PgBouncer {
    pub port: u16,
    /// e.g. "1.18.0", "1.24.1".
    pub version: String,
    pub build: PgBouncerBuild,
    /// Private directory: `pgbouncer.ini`, `userlist.txt`, `pgbouncer.log`, `pgbouncer.pid`.
    pub dir: PathBuf,
    /// Current (host, port) of database `app`.
    pub backend: (String, u16),
    child: Option<Child>,
    /// Length of pgbouncer.log when the running process started.
    log_offset: u64,
}

impl PgBouncer {
    /// A hooks' pause as before-stop makes it: PAUSE sent on an admin session marked
    /// `pph-pause/<id>`, which stays open (holding the mark) until the returned session drops.
    pub fn hooks_pause(&self, id: &str) -> session::Session {
        let session = session::Session::open(
            &self.admin_url(),
            Self::ADMIN_PASSWORD,
            &format!("pph-pause/{id}"),
        )
        .unwrap_or_else(|e| panic!("a marked admin session: {e}"));
        session
            .run("PAUSE", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("PAUSE on the marked session: {e}"));
        session
    }

    /// Password of admin user `pgbouncer_admin`.
    pub const ADMIN_PASSWORD: &'static str = "admin-secret";
    pub const ADMIN_USER: &'static str = "pgbouncer_admin";

    /// Starts `build` on 127.0.0.1:<free port> (no unix socket), pool_mode=transaction,
    /// auth_type=scram-sha-256 with a plain-text auth_file holding `pgbouncer_admin`
    /// (in admin_users) and `app`; database `app` = `host=backend_host
    /// port=backend_port dbname=postgres user=app`; server_login_retry=1.
    /// Waits until the admin console answers.
    pub fn start(build: PgBouncerBuild, backend_host: &str, backend_port: u16) -> PgBouncer {
        let dir = new_dir(match build {
            PgBouncerBuild::Debian => "pgb118",
            PgBouncerBuild::Trixie => "pgbnew",
        });
        let version = build.version();
        write_private(
            &dir.join("userlist.txt"),
            &format!(
                "\"{}\" \"{}\"\n\"app\" \"{APP_PASSWORD}\"\n",
                Self::ADMIN_USER,
                Self::ADMIN_PASSWORD
            ),
        );
        let backend = (backend_host.to_string(), backend_port);
        let mut pgb = PgBouncer {
            port: 0,
            version,
            build,
            dir,
            backend,
            child: None,
            log_offset: 0,
        };
        pgb.start_process();
        pgb
    }

    fn start_process(&mut self) {
        let dir = self.dir.clone();
        let (log, errlog) = (dir.join("pgbouncer.log"), dir.join("stderr.log"));
        for attempt in 1..=START_ATTEMPTS {
            let offsets = (file_len(&log), file_len(&errlog));
            let port = free_port();
            let ini = pgbouncer_ini(&dir, port, &self.backend.0, self.backend.1);
            write_private(&dir.join("pgbouncer.ini"), &ini);
            let stderr = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&errlog)
                .unwrap();
            let mut c = as_postgres_dying_with(self.build.path(), Some("KILL"));
            c.arg(dir.join("pgbouncer.ini"));
            c.stdin(Stdio::null())
                .stdout(stderr.try_clone().unwrap())
                .stderr(stderr);
            self.port = port;
            self.child = Some(c.spawn().expect("spawn pgbouncer"));
            let start = Instant::now();
            let ready = loop {
                if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                    break Err(true);
                }
                if self.admin("SHOW VERSION").is_ok() {
                    break Ok(());
                }
                if start.elapsed() > Duration::from_secs(20) {
                    break Err(false);
                }
                thread::sleep(Duration::from_millis(25));
            };
            match ready {
                Ok(()) => {
                    self.log_offset = offsets.0;
                    return;
                }
                Err(exited) => {
                    self.kill();
                    let conflict = exited
                        && (port_conflict(&log, offsets.0) || port_conflict(&errlog, offsets.1));
                    if conflict && attempt < START_ATTEMPTS {
                        continue;
                    }
                    panic!(
                        "pgbouncer {} in {} did not start:\n{}\n{}",
                        self.version,
                        dir.display(),
                        tail(&log, 20),
                        tail(&errlog, 20)
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True for builds with `SHOW STATE` (added in 1.19).
    pub fn has_show_state(&self) -> bool {
        version_ge(&self.version, (1, 19))
    }

    /// `postgresql://pgbouncer_admin@127.0.0.1:PORT/pgbouncer` (no password in it).
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/pgbouncer",
            Self::ADMIN_USER,
            self.port
        )
    }

    /// `postgresql://app:app-secret@127.0.0.1:PORT/app`, for psql/pgbench clients.
    pub fn app_url(&self) -> String {
        format!(
            "postgresql://app:{APP_PASSWORD}@127.0.0.1:{}/app",
            self.port
        )
    }

    /// Runs one admin-console command with psql (password via PGPASSWORD, never argv).
    /// Ok(trimmed stdout, '|' between columns) or Err(stderr).
    pub fn admin(&self, cmd: &str) -> Result<String, String> {
        psql_url(&self.admin_url(), cmd, Some(Self::ADMIN_PASSWORD))
    }

    /// Runs one admin-console command in the background (e.g. a PAUSE that waits for
    /// running transactions). Password via PGPASSWORD.
    pub fn spawn_admin(&self, cmd: &str) -> BgClient {
        let mut c = client(pg_bin("psql"));
        c.args([
            "-XAtq",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.admin_url(),
            "-c",
            cmd,
        ]);
        c.env("PGPASSWORD", Self::ADMIN_PASSWORD);
        spawn_bg(c)
    }

    /// Whether the pooler is globally PAUSEd or SUSPENDed, including a PAUSE that was
    /// issued and still waits for running transactions (PgBouncer's own notion).
    ///
    /// * 1.19+: `SHOW STATE` row `paused|yes` (or `suspended|yes`).
    /// * 1.18 has no `SHOW STATE` ("invalid command"), and `SHOW DATABASES.paused`
    ///   only reflects `PAUSE <db>`, not a global PAUSE. Probing with a second `PAUSE`
    ///   ("already suspended/paused" when paused) would pause a running pooler and
    ///   block behind open transactions, so the check here reads this instance's own
    ///   log instead, which records every accepted *and* refused console command:
    ///   the last of `PAUSE command issued` / `SUSPEND command issued` /
    ///   `got SIGUSR1` (→ paused) and `RESUME command issued` / `got SIGUSR2`
    ///   (→ running) decides. A refused PAUSE means it was paused already and a
    ///   refused RESUME that it was running, so the refusals need no special case.
    pub fn is_paused(&self) -> bool {
        if self.has_show_state() {
            let out = self
                .admin("SHOW STATE")
                .unwrap_or_else(|e| panic!("SHOW STATE: {e}"));
            return out
                .lines()
                .any(|l| l == "paused|yes" || l == "suspended|yes");
        }
        // Make sure the console is up (and the log is current) before reading it.
        self.admin("SHOW VERSION")
            .unwrap_or_else(|e| panic!("SHOW VERSION: {e}"));
        let log = fs::read(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(log.get(self.log_offset as usize..).unwrap_or_default());
        let mut paused = false;
        for line in log.lines() {
            if line.contains(" PAUSE command issued")
                || line.contains(" SUSPEND command issued")
                || line.contains("got SIGUSR1")
            {
                paused = true;
            } else if line.contains(" RESUME command issued") || line.contains("got SIGUSR2") {
                paused = false;
            }
        }
        paused
    }

    /// Rows of `SHOW POOLS` for database `app` as (column name, value) pairs.
    pub fn app_pool(&self) -> Vec<(String, String)> {
        let mut c = client(pg_bin("psql"));
        c.args([
            "-XAq",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.admin_url(),
            "-c",
            "SHOW POOLS",
        ]);
        c.env("PGPASSWORD", Self::ADMIN_PASSWORD);
        let out = run_ok(&mut c, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
        for l in lines {
            let vals: Vec<&str> = l.split('|').collect();
            if vals.first() == Some(&"app") {
                return header
                    .iter()
                    .zip(vals)
                    .map(|(h, v)| (h.to_string(), v.to_string()))
                    .collect();
            }
        }
        Vec::new()
    }

    /// Points database `app` at another backend: rewrites the ini and sends RELOAD.
    pub fn set_backend(&mut self, backend_host: &str, backend_port: u16) {
        self.backend = (backend_host.to_string(), backend_port);
        let ini = pgbouncer_ini(&self.dir, self.port, backend_host, backend_port);
        write_private(&self.dir.join("pgbouncer.ini"), &ini);
        self.admin("RELOAD")
            .unwrap_or_else(|e| panic!("RELOAD: {e}"));
    }

    /// Log file contents so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// SIGKILL by PID and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.kill();
        if !thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("[pph] kept {} for post-mortem", self.dir.display());
        }
    }
}

fn pgbouncer_ini(dir: &Path, port: u16, backend_host: &str, backend_port: u16) -> String {
    let d = dir.display();
    let mut s = String::new();
    // Settings valid in both 1.18 and 1.24.
    writeln!(s, "[databases]").unwrap();
    writeln!(
        s,
        "app = host={backend_host} port={backend_port} dbname=postgres user=app"
    )
    .unwrap();
    writeln!(s, "[pgbouncer]").unwrap();
    for (k, v) in [
        ("listen_addr", "127.0.0.1".to_string()),
        ("listen_port", port.to_string()),
        ("unix_socket_dir", String::new()), // empty: no unix socket
        ("pool_mode", "transaction".into()),
        ("auth_type", "scram-sha-256".into()),
        ("auth_file", format!("{d}/userlist.txt")),
        ("admin_users", PgBouncer::ADMIN_USER.into()),
        ("logfile", format!("{d}/pgbouncer.log")),
        ("pidfile", format!("{d}/pgbouncer.pid")),
        ("server_login_retry", "1".into()),
        ("default_pool_size", "5".into()),
        ("max_client_conn", "100".into()),
        ("ignore_startup_parameters", "extra_float_digits".into()),
        ("log_connections", "1".into()),
        ("log_disconnections", "1".into()),
    ] {
        writeln!(s, "{k} = {v}").unwrap();
    }
    s
}

/// `version` ("1.18.0") >= (major, minor).
pub fn version_ge(version: &str, min: (u32, u32)) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let v = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    v >= min
}

// ------------------------------------------------------------- app client

/// One psql client running in the background (e.g. a transaction through PgBouncer).
/// Drop: SIGKILL by PID if still running.
pub struct BgClient {
    child: Option<Child>,
    pub started: Instant,
    out: Option<Output>,
}

/// Starts `psql -XAtq -v ON_ERROR_STOP=1 -d URL -c SQL` in the background.
pub fn spawn_psql(url: &str, sql: &str) -> BgClient {
    let mut c = client(pg_bin("psql"));
    c.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql]);
    spawn_bg(c)
}

/// Starts any command in the background (stdin closed, stdout/stderr captured; keep
/// its output small: it is collected only after exit).
pub fn spawn_bg(mut c: Command) -> BgClient {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", c.get_program()));
    BgClient {
        child: Some(child),
        started: Instant::now(),
        out: None,
    }
}

impl BgClient {
    /// Has the client exited (successfully or not)?
    pub fn is_finished(&mut self) -> bool {
        self.poll();
        self.out.is_some()
    }

    /// Waits at most `timeout`; Some(output) if it exited, None if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<&Output> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll();
            if self.out.is_some() || Instant::now() >= deadline {
                return self.out.as_ref();
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits at most `timeout` and returns trimmed stdout; panics if it is still
    /// running (then kills it) or failed.
    pub fn expect_success(&mut self, timeout: Duration) -> String {
        match self.wait_timeout(timeout) {
            None => {
                self.kill();
                panic!("background psql still running after {timeout:?}");
            }
            Some(o) if !o.status.success() => {
                panic!(
                    "background psql failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                )
            }
            Some(o) => String::from_utf8_lossy(&o.stdout).trim_end().to_string(),
        }
    }

    /// SIGKILL by PID if still running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(o) = child.wait_with_output() {
                self.out = Some(o);
            }
        }
    }

    fn poll(&mut self) {
        let exited = match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_some(),
            None => false,
        };
        if exited {
            // Exited: its (small) output sits in the pipes; collecting cannot block.
            let child = self.child.take().unwrap();
            self.out = child.wait_with_output().ok();
        }
    }
}

impl Drop for BgClient {
    fn drop(&mut self) {
        self.kill();
    }
}
