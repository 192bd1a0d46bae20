//! End-to-end cluster harness: etcd, two Patroni members (PostgreSQL 15) under tini,
//! HAProxy (checks Patroni's `GET /primary`), PgBouncer(s) in transaction mode,
//! all on 127.0.0.1, free ports, one temp dir, every process started here stopped by
//! PID / process group at the end, every wait bounded.
//!
//! With `Opts::net` the same cluster runs on a pod network instead (netns.rs: every pod in
//! its own network namespace, the primary Service `pg` DNAT'ed by the node to the leader
//! that endpoints.rs follows, the hooks wired with configmap/'s names): tests/e2e_net.rs.
//!
//! Workload: pgbench (with `-l`, parsed for failures and the longest gap between
//! committed transactions) and a reconnecting probe client (tokio-postgres) that
//! counts every error it sees.

pub mod bench;
pub mod endpoints;
pub mod netns;
pub mod proxy;
pub mod util;
pub mod workload;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::*;

pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-secret";
pub const ADMIN_USER: &str = "pgbouncer_admin";
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const SUPER_PASSWORD: &str = "super-secret";
pub const REPL_PASSWORD: &str = "repl-secret";
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Whether `PPH_PATRONI` (3, 4, or both when unset) asks for scenarios on this Patroni.
pub fn wants(patroni: u8) -> bool {
    match std::env::var("PPH_PATRONI")
        .unwrap_or_else(|_| "both".into())
        .as_str()
    {
        "3" => patroni == 3,
        "4" => patroni == 4,
        _ => true,
    }
}

/// Whether the scenario `label` (its test's name, `-` for `_`) runs on Patroni `patroni`, as
/// `PPH_PATRONI` asks ([`wants`]). When it does not, the scenario says so instead of passing
/// in silence: `SKIPPED: ...` on stderr ([`crate::skipped`]) and a `SKIPPED` line in its result
/// file (so an older run's RESULT there is not taken for this run's).
pub fn runs(label: &str, patroni: u8) -> bool {
    if wants(patroni) {
        return true;
    }
    let label = label.replace('_', "-");
    let reason = format!(
        "PPH_PATRONI={} leaves out Patroni {patroni}",
        std::env::var("PPH_PATRONI").unwrap_or_default()
    );
    crate::skipped(&format!("{label} patroni{patroni}"), &reason);
    record_result(
        &label,
        patroni,
        &format!("SKIPPED {label} patroni{patroni}: {reason}"),
    );
    false
}

/// Prints a scenario's RESULT line and keeps it in `target/e2e/<label>-p<patroni>.txt`.
pub fn record_result(label: &str, patroni: u8, line: &str) {
    println!("{line}");
    let dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"))
        .join("e2e");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join(format!("{label}-p{patroni}.txt")),
        format!("{line}\n"),
    );
}

/// Whether a before-stop summary read its view from patronictl: with the REST API
/// configured, REST failed or lost the race.
pub fn fell_back(summary: &serde_json::Value) -> bool {
    summary["source"] == "patronictl"
}

/// How the hooks are wired into Patroni.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hooks {
    /// No before_stop, no callbacks: the control.
    Off,
    /// `before_stop: .../before-stop`, callbacks: `.../on-role-change`, as a user would.
    On,
    /// Like On but each hook wrapped in `/usr/bin/time -v -a -o FILE` (benchmark: RSS).
    Timed,
}

/// Where `before-stop` reads the cluster view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewSource {
    /// The member's own Patroni REST API (`HOOKS_PATRONI_URL`, `GET /cluster` and
    /// `/history`), patronictl only as the fallback: the default, as a user would set it.
    Rest,
    /// `HOOKS_PATRONI_URL` removed from the hook's environment (`env -u`), so before-stop
    /// runs `patronictl list` and `patronictl history` (concurrently): the benchmark's
    /// comparison.
    Patronictl,
}

#[derive(Clone, Debug)]
pub struct Opts {
    pub label: String,
    /// 3 or 4: which Patroni virtualenv.
    pub patroni: u8,
    pub hooks: Hooks,
    /// Number of PgBouncer instances (1 or 2).
    pub pgbouncers: usize,
    /// Extra env for Patroni (and so for the hooks), e.g. HOOKS_PAUSE_TIMEOUT.
    pub hook_env: Vec<(String, String)>,
    /// Give before-stop its member's REST API (`HOOKS_PATRONI_URL`). Default on; off for
    /// scenario 5 (see `s5_sigterm_primary` in tests/e2e.rs) and the benchmark's patronictl run.
    pub patroni_url: bool,
    /// Pod mode: each member runs in its own PID namespace (`unshare --pid --fork
    /// --kill-child --mount-proc`) with tini as PID 1, so stopping the pod ends every process
    /// in it (detached hook workers and the safety net included), as in a Kubernetes pod with
    /// shareProcessNamespace. Off for the classic scenarios; on with `Opts::pods`.
    pub pod: bool,
    /// Pod deletion: SIGTERM to the pod's init, this grace period, then SIGKILL to the init
    /// (the kernel then kills everything in the namespace). Kubernetes' default is 30 s.
    pub grace: Duration,
    /// The StackGres cluster-controller stand-in: a pod started by `start_pod` runs Patroni
    /// first with a config without before_stop and callbacks (as StackGres' start-patroni.sh
    /// writes it); after this delay the stand-in adds the hooks and POSTs /reload. Zero: the
    /// hooks are in the config from the start. Only for pods (re)started during a scenario;
    /// the initial cluster starts reconciled.
    pub controller_delay: Duration,
    /// Start a watchdog beside each PgBouncer (host side, outside every pod):
    /// `pgbouncer-watchdog ... --max-pause <this>`. None: no watchdog (default).
    pub watchdog: Option<Duration>,
    /// The hooks reach each PgBouncer through a cuttable TCP proxy (`proxy::Proxy`) instead
    /// of directly; clients and the harness still connect directly.
    pub admin_proxy: bool,
    /// Every PgBouncer is the newer one (1.24, with SHOW STATE) instead of Debian's 1.18
    /// first.
    pub new_pgbouncer: bool,
    /// Extra lines for each pgbouncer.ini's [pgbouncer] section.
    pub pgbouncer_extra: Vec<String>,
    /// HAProxy cuts established sessions to a server its check marks down
    /// (`on-marked-down shutdown-sessions`). On for the classic scenarios; off in pod mode,
    /// like a Kubernetes Service, whose endpoints change does not cut established
    /// connections (Patroni's REST API goes silent on SIGTERM, which fails the check within
    /// 1 s, before before-stop may have paused).
    pub haproxy_cut_sessions: bool,
    /// The pod network (netns.rs): every pod (members, PgBouncers, etcd, the clients) in
    /// its own network namespace with its own address, the primary Service `pg` a virtual IP
    /// DNAT'ed to the leader by the endpoints stand-in (endpoints.rs) this long after the
    /// leader changed, the hooks wired with the manifests' names. None: loopback (HAProxy).
    /// Set by `Opts::net`.
    pub net: Option<Duration>,
}

impl Opts {
    pub fn new(label: &str, patroni: u8, hooks: Hooks) -> Opts {
        Opts {
            label: label.into(),
            patroni,
            hooks,
            pgbouncers: 1,
            hook_env: vec![],
            patroni_url: true,
            // PPH_POD_MODE=1 runs the classic scenarios in pods too (a measurement aid)
            pod: std::env::var("PPH_POD_MODE").is_ok_and(|v| v == "1"),
            grace: Duration::from_secs(30),
            controller_delay: Duration::ZERO,
            watchdog: None,
            admin_proxy: false,
            new_pgbouncer: false,
            pgbouncer_extra: vec![],
            haproxy_cut_sessions: true,
            net: None,
        }
    }

    /// `Opts::pods` in the pod network, with the endpoints stand-in's `lag`, and two
    /// PgBouncer pods behind the headless `pgbouncer-admin` name.
    pub fn net(label: &str, patroni: u8, lag: Duration) -> Opts {
        let mut o = Opts::pods(label, patroni);
        o.net = Some(lag);
        o.pgbouncers = 2;
        o
    }

    /// The default for new scenarios: members in pods (hooks on), a 5 s grace period,
    /// PgBouncer 1.24 (SHOW STATE, so the state can be watched without touching it) with
    /// `server_login_retry = 1` as the README's front-door wiring has it.
    pub fn pods(label: &str, patroni: u8) -> Opts {
        let mut o = Opts::new(label, patroni, Hooks::On);
        o.pod = true;
        o.grace = Duration::from_secs(5);
        o.new_pgbouncer = true;
        o.pgbouncer_extra = vec!["server_login_retry = 1".into()];
        o.haproxy_cut_sessions = false;
        o
    }
}

pub struct Tools {
    pub venv: PathBuf,
    pub hooks_dir: PathBuf,
    pub pgbouncer: Vec<PathBuf>,
    pub etcd: PathBuf,
    pub haproxy: PathBuf,
    pub tini: PathBuf,
}

/// The repository: this crate lives in tests/support/.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub(crate) fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// Newest modification time of the hooks' sources (src/, bin/, Cargo.toml, Cargo.lock).
pub(crate) fn newest_source() -> std::time::SystemTime {
    let root = repo_root();
    let mut newest = mtime(&root.join("Cargo.toml")).max(mtime(&root.join("Cargo.lock")));
    for d in ["src", "bin"] {
        let mut stack = vec![root.join(d)];
        // bounded walk: these trees are small
        for _ in 0..10_000 {
            let Some(dir) = stack.pop() else { break };
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    newest = newest.max(mtime(&p));
                }
            }
        }
    }
    newest
}

/// The release hook binaries, as a user would install them:
/// 1. $PPH_HOOKS_DIR if set;
/// 2. under `cargo test --release`, the binaries cargo has just built for this very test
///    run (target/release, fresh by construction);
/// 3. else the newest of target/x86_64-unknown-linux-musl/release and target/release,
///    refused if older than the sources (run `cargo build --release` first).
pub fn hooks_dir() -> Res<PathBuf> {
    let has = |d: &Path| {
        ["before-stop", "on-role-change", "pgbouncer-watchdog"]
            .iter()
            .all(|b| d.join(b).is_file())
    };
    let mut cands = vec![];
    if let Ok(d) = std::env::var("PPH_HOOKS_DIR") {
        let d = PathBuf::from(d);
        return if has(&d) {
            Ok(d)
        } else {
            Err(format!("PPH_HOOKS_DIR={}: no hook binaries", d.display()))
        };
    }
    let built = crate::bin("before-stop");
    if let Some(dir) = built.parent() {
        if dir.ends_with("release") && has(dir) {
            return Ok(dir.to_path_buf());
        }
    }
    {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        cands.push(target.join("x86_64-unknown-linux-musl/release"));
        cands.push(target.join("release"));
    }
    let src = newest_source();
    for d in &cands {
        if has(d) && mtime(&d.join("before-stop")) < src {
            log(format!(
                "ignoring stale {} (older than the sources)",
                d.display()
            ));
        }
    }
    cands.retain(|d| has(d) && mtime(&d.join("before-stop")) >= src);
    // Newest pair wins (a stale musl build must not shadow a fresh glibc one).
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = cands
        .into_iter()
        .filter(|d| has(d))
        .map(|d| {
            let m = std::fs::metadata(d.join("before-stop"))
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (m, d)
        })
        .collect();
    found.sort();
    if let Some((_, d)) = found.pop() {
        return Ok(d);
    }
    // 4. last resort: the (debug) binaries cargo built for this test run. Correct, but
    //    not the release build the issue asks for: say so.
    match built.parent() {
        Some(dir) if has(dir) => {
            log(format!(
                "no fresh release hook binaries: using {} (run `cargo build --release` or `cargo test --release`)",
                dir.display()
            ));
            Ok(dir.to_path_buf())
        }
        _ => Err(
            "hook binaries not found: run `cargo build --release` (or set PPH_HOOKS_DIR)".into(),
        ),
    }
}

impl Tools {
    pub fn find(patroni: u8, need_hooks: bool) -> Res<Tools> {
        let venv = PathBuf::from(
            std::env::var(format!("PPH_PATRONI{patroni}_VENV"))
                .unwrap_or_else(|_| format!("/opt/patroni{patroni}")),
        );
        let need = |p: PathBuf| -> Res<PathBuf> {
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{} missing: run scripts/setup", p.display()))
            }
        };
        let mut pgbouncer = vec![need(PathBuf::from(
            std::env::var("PPH_PGBOUNCER_DEBIAN").unwrap_or_else(|_| "/usr/sbin/pgbouncer".into()),
        ))?];
        let newer = PathBuf::from(
            std::env::var("PPH_PGBOUNCER_TRIXIE")
                .unwrap_or_else(|_| "/opt/pgbouncer-trixie/bin/pgbouncer".into()),
        );
        pgbouncer.push(if newer.is_file() {
            newer
        } else {
            pgbouncer[0].clone()
        });
        Ok(Tools {
            venv: need(venv.join("bin/patroni")).map(|_| venv)?,
            hooks_dir: if need_hooks {
                hooks_dir()?
            } else {
                hooks_dir().unwrap_or_default()
            },
            pgbouncer,
            etcd: need("/usr/bin/etcd".into())?,
            haproxy: need("/usr/sbin/haproxy".into())?,
            tini: need(which("tini").unwrap_or_else(|| "/usr/bin/tini".into()))?,
        })
    }
}

/// One long-running process we started, in its own process group.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i64 {
        self.child.id() as i64
    }

    fn spawn(name: &str, mut cmd: Command, logfile: &Path) -> Res<Proc> {
        use std::os::unix::process::CommandExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logfile)
            .map_err(|e| format!("open {}: {e}", logfile.display()))?;
        let f2 = f.try_clone().unwrap();
        cmd.stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .env("TZ", "UTC")
            .process_group(0);
        let child = cmd.spawn().map_err(|e| format!("spawn {name}: {e}"))?;
        Ok(Proc {
            name: name.into(),
            child,
        })
    }

    /// SIGTERM to the group, bounded wait, then SIGKILL to the group.
    pub fn stop(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            signal(-self.pid(), "KILL");
            return;
        }
        signal(-self.pid(), "TERM");
        if wait_child(&mut self.child, grace).is_none() {
            log(format!("{} did not stop in {grace:?}: SIGKILL", self.name));
        }
        signal(-self.pid(), "KILL");
        let _ = wait_child(&mut self.child, Duration::from_secs(5));
    }
}

pub struct Member {
    pub name: String,
    pub pg_port: u16,
    pub rest_port: u16,
    pub dir: PathBuf,
    pub cfg: PathBuf,
    /// tini (PID 1 stand-in and subreaper) running Patroni; None once stopped. In pod mode
    /// this is `unshare`, whose only child is the pod's init (tini, PID 1 inside).
    pub proc: Option<Proc>,
    /// Runs in a pod (own PID namespace).
    pub pod: bool,
    /// Runs in the pod network (own network namespace).
    pub pod_net: bool,
    /// Pods started for this member so far (1 after the cluster start).
    pub pod_starts: u32,
    /// Pod network: the running pod's network namespace and address (None while it is gone,
    /// and always on loopback).
    pub ns: Option<String>,
    pub ip: Option<std::net::Ipv4Addr>,
}

impl Member {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn pg_log(&self) -> PathBuf {
        self.dir.join("pglog/postgresql.log")
    }
    pub fn patroni_log(&self) -> PathBuf {
        self.dir.join("patroni.log")
    }
    /// The Patroni process (tini's child), host PID.
    pub fn patroni_pid(&self) -> Option<i64> {
        children_of(self.init_pid()?).into_iter().next()
    }
    /// tini's host PID: the pod's init in pod mode (unshare's child), else our own child.
    pub fn init_pid(&self) -> Option<i64> {
        let p = self.proc.as_ref()?;
        if self.pod {
            children_of(p.pid()).into_iter().next()
        } else {
            Some(p.pid())
        }
    }
    pub fn is_primary(&self) -> bool {
        matches!(self.http("GET", "/primary", ""), Ok((200, _)))
    }
    /// A request to the member's REST API on 127.0.0.1 (in its pod's network namespace on
    /// the pod network).
    pub fn http(&self, method: &str, path: &str, body: &str) -> Res<(u16, String)> {
        let port = self.rest_port;
        if self.pod_net && self.ns.is_none() {
            return Err(format!("{}'s pod is gone", self.name));
        }
        netns::in_ns(self.ns.as_deref(), || http_req(port, method, path, body))
    }
    pub fn postmaster_pid(&self) -> Option<i64> {
        read(&self.data_dir().join("postmaster.pid"))
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

pub struct Bouncer {
    pub port: u16,
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub version: (u32, u32),
    pub proc: Option<Proc>,
    /// Pod network: the pod's network namespace and address (None on loopback).
    pub ns: Option<String>,
    pub ip: Option<std::net::Ipv4Addr>,
    /// The watchdog sidecar beside this PgBouncer, when the scenario has one.
    pub watchdog: Option<Proc>,
    /// When this PgBouncer's pods were deleted (µs): a pause ends with its process.
    pub gone: Vec<i64>,
}

impl Bouncer {
    /// Where a client reaches this PgBouncer: 127.0.0.1:port, or on the pod network the
    /// pod's address, from the clients' pod.
    pub fn client_dest(&self, app_ns: Option<&str>) -> workload::Dest {
        match (self.ip, app_ns) {
            (Some(ip), Some(ns)) => workload::Dest {
                host: ip.to_string(),
                port: self.port,
                ns: Some(ns.to_string()),
            },
            _ => workload::Dest::local(self.port),
        }
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }
    pub fn admin_url(&self) -> String {
        format!(
            "postgresql://{ADMIN_USER}@127.0.0.1:{}/pgbouncer",
            self.port
        )
    }
    /// Times (µs) of `PAUSE command issued` / `RESUME command issued` in PgBouncer's log,
    /// and `GONE` when its pod was deleted, in time order.
    pub fn admin_events(&self) -> Vec<(i64, String)> {
        let mut ev: Vec<(i64, String)> = read(&self.log_path())
            .lines()
            .filter_map(|l| {
                let ev = if l.contains("PAUSE command issued") {
                    "PAUSE"
                } else if l.contains("RESUME command issued") {
                    "RESUME"
                } else {
                    return None;
                };
                Some((parse_log_ts(l)?, ev.to_string()))
            })
            .collect();
        ev.extend(self.gone.iter().map(|&t| (t, "GONE".to_string())));
        ev.sort();
        ev
    }
}

pub struct Cluster {
    pub opts: Opts,
    pub tools: Tools,
    pub dir: PathBuf,
    pub scope: String,
    pub etcd_port: u16,
    pub haproxy_port: u16,
    pub etcd: Option<Proc>,
    pub haproxy: Option<Proc>,
    pub members: Vec<Member>,
    pub bouncers: Vec<Bouncer>,
    pub hooks: Hooks,
    /// before-stop's source of the cluster view (changed with `set_view`).
    pub view: ViewSource,
    /// Keep the temp dir (logs) after the test: set on failure or by PPH_KEEP=1.
    pub keep: bool,
    stopped: bool,
    /// One per PgBouncer when `opts.admin_proxy`: what the hooks connect to.
    pub admin_proxies: Vec<proxy::Proxy>,
    /// The controller stand-in's pending reconciles, and when each added the hooks
    /// (member, µs since epoch).
    controllers: Vec<std::thread::JoinHandle<()>>,
    controller_stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub reconciled: std::sync::Arc<std::sync::Mutex<Vec<(String, i64)>>>,
    /// The endpoints stand-in of the pod network's `pg` Service. Before `net`: it stops
    /// before the namespaces go.
    pub endpoints: Option<endpoints::Endpoints>,
    /// The pod network (None on loopback); dropped last, removing every namespace.
    pub net: Option<netns::PodNet>,
    /// The clients' pod (pgbench, probe, patronictl) on the pod network.
    pub app_ns: Option<String>,
}

fn pgbouncer_version(bin: &Path) -> (u32, u32) {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let s = String::from_utf8_lossy(&out);
    let v = s
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0.0");
    let mut it = v.split('.').map(|x| x.parse().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

impl Cluster {
    /// Starts everything and waits until the cluster is healthy (leader m1, m2
    /// streaming), the app database exists and pgbench tables are initialised.
    pub fn start(opts: Opts) -> Res<Cluster> {
        let tools = Tools::find(opts.patroni, opts.hooks != Hooks::Off)?;
        let base = std::env::var("PPH_E2E_TMP").unwrap_or_else(|_| "/tmp".into());
        let dir = PathBuf::from(base).join(format!(
            "e2e-{}-p{}-{}-{}",
            opts.label,
            opts.patroni,
            std::process::id(),
            now_us() % 1_000_000_000
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let ports = free_ports(4 + 2 * 2 + opts.pgbouncers);
        let scope = format!("e2e{}", ports[0]);
        let mut c = Cluster {
            hooks: opts.hooks,
            view: ViewSource::Rest,
            opts,
            tools,
            dir: dir.clone(),
            scope,
            etcd_port: ports[0],
            haproxy_port: ports[2],
            etcd: None,
            haproxy: None,
            members: vec![],
            bouncers: vec![],
            keep: std::env::var("PPH_KEEP").is_ok_and(|v| v == "1"),
            stopped: false,
            admin_proxies: vec![],
            controllers: vec![],
            controller_stop: Default::default(),
            reconciled: Default::default(),
            endpoints: None,
            net: None,
            app_ns: None,
        };
        let on_net = c.opts.net.is_some();
        if on_net {
            c.opts.pod = true;
            c.net = Some(netns::PodNet::new()?);
            c.etcd_port = 2379;
        }
        log(format!(
            "cluster {} in {} (patroni {}, hooks {:?}, hook binaries {})",
            c.opts.label,
            dir.display(),
            c.opts.patroni,
            c.hooks,
            c.tools.hooks_dir.display()
        ));
        for (i, name) in ["m1", "m2"].iter().enumerate() {
            let mdir = dir.join(name);
            std::fs::create_dir_all(mdir.join("pglog")).map_err(|e| e.to_string())?;
            c.members.push(Member {
                name: name.to_string(),
                // the manifests' ports (configmap/sgcluster.yaml: REST API on 8009)
                pg_port: if on_net {
                    netns::PG_PORT
                } else {
                    ports[4 + 2 * i]
                },
                rest_port: if on_net { 8009 } else { ports[5 + 2 * i] },
                cfg: mdir.join("patroni.yml"),
                dir: mdir,
                proc: None,
                pod: c.opts.pod,
                pod_net: on_net,
                pod_starts: 0,
                ns: None,
                ip: None,
            });
        }
        for i in 0..c.opts.pgbouncers {
            let bdir = dir.join(format!("pgbouncer{}", i + 1));
            std::fs::create_dir_all(&bdir).map_err(|e| e.to_string())?;
            let bin = if c.opts.new_pgbouncer {
                c.tools.pgbouncer[1].clone()
            } else {
                c.tools.pgbouncer[i.min(1)].clone()
            };
            let version = pgbouncer_version(&bin);
            c.bouncers.push(Bouncer {
                // configmap/pgbouncer-config.yaml: listen_port = 6432
                port: if on_net { 6432 } else { ports[8 + i] },
                dir: bdir,
                bin,
                version,
                proc: None,
                ns: None,
                ip: None,
                watchdog: None,
                gone: vec![],
            });
        }
        // 0755 so the postgres user can traverse; files inside are owned by postgres.
        let _ = Command::new("chmod").arg("0755").arg(&dir).status();
        chown_postgres(&dir);
        if c.opts.admin_proxy {
            for i in 0..c.bouncers.len() {
                let p = proxy::Proxy::start(c.bouncers[i].port)?;
                c.admin_proxies.push(p);
            }
        }

        let r = c.start_all(ports[1]);
        if let Err(e) = r {
            c.keep = true;
            return Err(format!("{e}\n(logs kept in {})", dir.display()));
        }
        Ok(c)
    }

    fn start_all(&mut self, etcd_peer: u16) -> Res<()> {
        if let Some(net) = self.net.as_mut() {
            net.bouncer_pods = (1..=self.bouncers.len())
                .map(|i| format!("pgbouncer{i}"))
                .collect();
            self.app_ns = Some(net.add_pod("app")?.ns);
            for i in 0..self.members.len() {
                let name = self.members[i].name.clone();
                let p = net.add_pod(&name)?;
                self.members[i].ns = Some(p.ns);
                self.members[i].ip = Some(p.ip);
            }
        }
        self.start_etcd(etcd_peer)?;
        for i in 0..2 {
            self.write_patroni_cfg(i);
        }
        self.start_patroni(0)?;
        wait_for(
            "m1 to become primary",
            Duration::from_secs(90),
            Duration::from_millis(200),
            || self.members[0].is_primary().then_some(()),
        )?;
        self.create_app_db()?;
        self.start_patroni(1)?;
        if let (Some(lag), Some(net)) = (self.opts.net, self.net.as_ref()) {
            let etcd = net.pod("etcd").ok_or("no etcd pod")?.ip;
            self.endpoints = Some(endpoints::Endpoints::start(
                net,
                (etcd, self.etcd_port).into(),
                &self.scope,
                lag,
            ));
        } else {
            self.start_haproxy()?;
        }
        for i in 0..self.bouncers.len() {
            self.start_pgbouncer(i)?;
        }
        self.wait_healthy(Duration::from_secs(90))?;
        log(format!(
            "cluster {} up: leader m1, m2 streaming",
            self.opts.label
        ));
        Ok(())
    }

    fn start_etcd(&mut self, peer: u16) -> Res<()> {
        let d = self.dir.join("etcd");
        let (mut client, mut peer) = (
            format!("http://127.0.0.1:{}", self.etcd_port),
            format!("http://127.0.0.1:{peer}"),
        );
        let mut ns = None;
        if let Some(net) = self.net.as_mut() {
            let p = net.add_pod("etcd")?;
            client = format!("http://{}:{}", p.ip, self.etcd_port);
            peer = format!("http://{}:2380", p.ip);
            ns = Some(p.ns);
        }
        let mut cmd = Command::new(&self.tools.etcd);
        cmd.args(["--name", "e2e", "--data-dir"])
            .arg(&d)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("e2e={peer}")])
            .args(["--initial-cluster-state", "new", "--log-level", "warn"])
            .env("ETCD_UNSUPPORTED_ARCH", "");
        if ns.is_some() {
            // clients in the etcd pod itself (the health check) use 127.0.0.1
            cmd.args([
                "--listen-client-urls",
                &format!("{client},http://127.0.0.1:{}", self.etcd_port),
            ]);
        }
        let cmd = in_pod(cmd, ns.as_deref());
        self.etcd = Some(Proc::spawn("etcd", cmd, &self.dir.join("etcd.log"))?);
        let port = self.etcd_port;
        wait_for(
            "etcd health",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let h = netns::in_ns(ns.as_deref(), || http_get(port, "/health"));
                matches!(h, Ok((200, ref b)) if b.contains("true")).then_some(())
            },
        )
    }

    pub fn hook_cmd(&self, m: &Member, hook: &str) -> String {
        let bin = self.tools.hooks_dir.join(hook);
        match self.hooks {
            Hooks::Timed => format!(
                "/usr/bin/time -v -a -o {} {}",
                m.dir.join(format!("time-{hook}.log")).display(),
                bin.display()
            ),
            _ => bin.display().to_string(),
        }
    }

    /// before_stop as configured. For `ViewSource::Patronictl`, `env -u HOOKS_PATRONI_URL`
    /// comes between /usr/bin/time and the hook: Patroni splits the command (shlex) and runs
    /// it without a shell, and `env` execs the hook, so `time` still measures the hook.
    pub fn before_stop_cmd(&self, m: &Member) -> String {
        let bin = self.tools.hooks_dir.join("before-stop");
        let mut cmd = String::new();
        if self.hooks == Hooks::Timed {
            let _ = write!(
                cmd,
                "/usr/bin/time -v -a -o {} ",
                m.dir.join("time-before-stop.log").display()
            );
        }
        if self.view == ViewSource::Patronictl {
            cmd.push_str("/usr/bin/env -u HOOKS_PATRONI_URL ");
        }
        // Patroni pops PATRONI_NAME (like every PATRONI_* it reads) from its own
        // environment, so the hook cannot see it: name the member on the command line.
        let _ = write!(cmd, "{} --member {}", bin.display(), m.name);
        cmd
    }

    fn write_patroni_cfg(&self, i: usize) {
        let y = self.patroni_cfg(i, self.hooks != Hooks::Off);
        let m = &self.members[i];
        write(&m.cfg, &y);
        chown_postgres(&m.cfg);
    }

    /// Member `i`'s patroni.yml, with or without before_stop and the callbacks.
    pub fn patroni_cfg(&self, i: usize, with_hooks: bool) -> String {
        let m = &self.members[i];
        let (listen, addr, etcd) = match (m.ip, self.net.as_ref().and_then(|n| n.pod("etcd"))) {
            (Some(ip), Some(e)) => ("0.0.0.0".to_string(), ip.to_string(), e.ip.to_string()),
            _ => ("127.0.0.1".into(), "127.0.0.1".into(), "127.0.0.1".into()),
        };
        let mut y = String::new();
        let _ = write!(
            y,
            r#"scope: {scope}
name: {name}
log:
  level: INFO
  format: '%(asctime)s %(levelname)s: %(message)s'
restapi:
  listen: {listen}:{rest}
  connect_address: {addr}:{rest}
etcd3:
  hosts: {etcd}:{etcd_port}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        wal_log_hints: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        max_connections: 100
  initdb:
  - encoding: UTF8
  - locale: C
postgresql:
  listen: {listen}:{pg}
  connect_address: {addr}:{pg}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {sup}
    replication:
      username: replicator
      password: {repl}
  basebackup:
  - checkpoint: fast
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256
  - host replication replicator {pods} scram-sha-256
  - host all all {pods} scram-sha-256
  parameters:
    unix_socket_directories: '{dir}'
    logging_collector: 'on'
    log_directory: '{dir}/pglog'
    log_filename: postgresql.log
    log_file_mode: '0644'
    log_line_prefix: '%m [%p] '
    log_timezone: UTC
    fsync: 'off'
    synchronous_commit: 'off'
"#,
            scope = self.scope,
            name = m.name,
            rest = m.rest_port,
            etcd_port = self.etcd_port,
            pods = netns::POD_CIDR,
            pg = m.pg_port,
            data = m.data_dir().display(),
            bin = PG_BIN,
            dir = m.dir.display(),
            sup = SUPER_PASSWORD,
            repl = REPL_PASSWORD,
        );
        if with_hooks {
            let bs = self.before_stop_cmd(m);
            let orc = self.hook_cmd(m, "on-role-change");
            let _ = write!(
                y,
                "  before_stop: {bs}\n  callbacks:\n    on_role_change: {orc}\n    on_start: {orc}\n    on_restart: {orc}\n",
            );
        }
        y
    }

    /// Patroni's environment: what a user puts in the pod spec. Secrets travel here,
    /// never on a command line. `HOOKS_PATRONI_URL` is this member's own REST API: during
    /// before_stop the member being stopped still holds the leader key, and its Patroni
    /// answers `GET /cluster` / `/history`. Not after SIGTERM: Patroni has then shut its REST
    /// API down (the socket still accepts, nothing answers), before-stop waits out its
    /// timeout and falls back to patronictl.
    pub fn patroni_env(&self, i: usize) -> Vec<(String, String)> {
        let m = &self.members[i];
        let urls: Vec<String> = if self.net.is_some() {
            // configmap/sgcluster.yaml: the headless Service, every PgBouncer pod
            vec![format!(
                "postgresql://{ADMIN_USER}@pgbouncer-admin:6432/pgbouncer"
            )]
        } else if self.admin_proxies.is_empty() {
            self.bouncers.iter().map(|b| b.admin_url()).collect()
        } else {
            self.admin_proxies
                .iter()
                .map(|p| format!("postgresql://{ADMIN_USER}@127.0.0.1:{}/pgbouncer", p.port))
                .collect()
        };
        let mut env = vec![
            ("HOME".into(), m.dir.display().to_string()),
            ("PATRONI_NAME".into(), m.name.clone()),
            ("PATRONICTL_CONFIG_FILE".into(), m.cfg.display().to_string()),
            (
                "HOOKS_PATRONICTL".into(),
                self.tools.venv.join("bin/patronictl").display().to_string(),
            ),
            ("PGBOUNCER_URLS".into(), urls.join(",")),
            // Structured events: the harness reads the summaries, not the wording.
            ("HOOKS_LOG_FORMAT".into(), "json".into()),
            ("PGBOUNCER_PASSWORD".into(), ADMIN_PASSWORD.into()),
            (
                "HOOKS_POSTGRES_URL".into(),
                format!(
                    "postgresql:///postgres?host={}&port={}&user=postgres",
                    m.dir.display(),
                    m.pg_port
                ),
            ),
            (
                "HOOKS_UPSTREAM_URLS".into(),
                format!(
                    "postgresql://{APP_USER}:{APP_PASSWORD}@{}/app",
                    self.upstream()
                ),
            ),
        ];
        if self.opts.patroni_url {
            env.push((
                "HOOKS_PATRONI_URL".into(),
                format!("http://127.0.0.1:{}", m.rest_port),
            ));
        }
        env.extend(self.opts.hook_env.iter().cloned());
        env
    }

    fn start_patroni(&mut self, i: usize) -> Res<()> {
        let mut cmd = if self.members[i].pod {
            // The pod: a new PID namespace whose PID 1 is tini (as postgres, like StackGres'
            // uid 999); /proc remounted so Patroni's and Postgres' PIDs make sense inside.
            // When tini exits the kernel kills every process left in the namespace.
            let mut c = match self.members[i].ns.as_deref() {
                Some(ns) => netns::exec_in(ns, "unshare"),
                None => Command::new("unshare"),
            };
            c.args([
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(&self.tools.tini);
            scrub_env(&mut c);
            c.env("HOME", "/tmp").current_dir("/");
            c
        } else {
            as_postgres(&self.tools.tini)
        };
        cmd.args(["-s", "--"])
            .arg(self.tools.venv.join("bin/patroni"))
            .arg(&self.members[i].cfg);
        self.members[i].pod_starts += 1;
        cmd.envs(self.patroni_env(i));
        let m = &self.members[i];
        let p = Proc::spawn(&format!("patroni-{}", m.name), cmd, &m.patroni_log())?;
        self.members[i].proc = Some(p);
        Ok(())
    }

    fn psql_super(&self, i: usize, db: &str, sql: &str) -> Res<String> {
        let m = &self.members[i];
        run_ok(
            Command::new(format!("{PG_BIN}/psql"))
                .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                .arg(&m.dir)
                .args([
                    "-p",
                    &m.pg_port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-c",
                    sql,
                ]),
            Duration::from_secs(30),
        )
    }

    fn create_app_db(&self) -> Res<()> {
        self.psql_super(
            0,
            "postgres",
            &format!("CREATE ROLE {APP_USER} LOGIN PASSWORD '{APP_PASSWORD}'"),
        )?;
        self.psql_super(
            0,
            "postgres",
            &format!("CREATE DATABASE app OWNER {APP_USER}"),
        )?;
        self.psql_super(
            0,
            "app",
            &format!("CREATE TABLE e2e_probe (id bigserial PRIMARY KEY, client text, at timestamptz DEFAULT now()); ALTER TABLE e2e_probe OWNER TO {APP_USER}"),
        )?;
        let m = &self.members[0];
        run_ok(
            Command::new(format!("{PG_BIN}/pgbench"))
                .args(["-i", "-s", "1", "-q", "-h"])
                .arg(&m.dir)
                .args(["-p", &m.pg_port.to_string()])
                .args(["-U", APP_USER, "app"])
                .env("PGPASSWORD", APP_PASSWORD),
            Duration::from_secs(60),
        )?;
        Ok(())
    }

    fn start_haproxy(&mut self) -> Res<()> {
        let mut cfg = format!(
            r#"global
    maxconn 500
defaults
    mode tcp
    timeout connect 1s
    timeout client 30m
    timeout server 30m
    timeout check 1s
listen primary
    bind 127.0.0.1:{port}
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 200ms fastinter 50ms downinter 50ms rise 1 fall 1{cut}
"#,
            port = self.haproxy_port,
            cut = if self.opts.haproxy_cut_sessions {
                " on-marked-down shutdown-sessions"
            } else {
                ""
            }
        );
        for m in &self.members {
            let _ = writeln!(
                cfg,
                "    server {} 127.0.0.1:{} check port {}",
                m.name, m.pg_port, m.rest_port
            );
        }
        let path = self.dir.join("haproxy.cfg");
        write(&path, &cfg);
        let mut cmd = Command::new(&self.tools.haproxy);
        cmd.arg("-db").arg("-f").arg(&path);
        self.haproxy = Some(Proc::spawn("haproxy", cmd, &self.dir.join("haproxy.log"))?);
        let port = self.haproxy_port;
        wait_for(
            "haproxy listening",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || port_open(port).then_some(()),
        )
    }

    /// PgBouncer's [databases] host and port: HAProxy, or the `pg` Service
    /// (configmap/pgbouncer-config.yaml: `* = host=pg port=5432`); also the hooks' and the
    /// watchdog's upstream.
    pub fn upstream(&self) -> String {
        if self.net.is_some() {
            format!("pg:{}", netns::PG_PORT)
        } else {
            format!("127.0.0.1:{}", self.haproxy_port)
        }
    }

    fn start_pgbouncer(&mut self, i: usize) -> Res<()> {
        if let Some(net) = self.net.as_mut() {
            let p = net.add_pod(&format!("pgbouncer{}", i + 1))?;
            self.bouncers[i].ns = Some(p.ns);
            self.bouncers[i].ip = Some(p.ip);
        }
        let (host, port) = self
            .upstream()
            .rsplit_once(':')
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .unwrap();
        let listen = if self.net.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let b = &self.bouncers[i];
        let userlist = b.dir.join("userlist.txt");
        write(
            &userlist,
            &format!("\"{APP_USER}\" \"{APP_PASSWORD}\"\n\"{ADMIN_USER}\" \"{ADMIN_PASSWORD}\"\n"),
        );
        let ini = b.dir.join("pgbouncer.ini");
        write(
            &ini,
            &format!(
                r#"[databases]
app = host={host} port={uport} dbname=app
[pgbouncer]
listen_addr = {listen}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
admin_users = {ADMIN_USER}
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
logfile = {log}
ignore_startup_parameters = extra_float_digits
{extra}"#,
                extra = self
                    .opts
                    .pgbouncer_extra
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect::<String>(),
                uport = port,
                port = b.port,
                userlist = userlist.display(),
                log = b.log_path().display(),
            ),
        );
        chown_postgres(&b.dir);
        let mut cmd = as_postgres(&b.bin);
        cmd.arg(&ini);
        let cmd = in_pod(cmd, b.ns.as_deref());
        let p = Proc::spawn(
            &format!("pgbouncer{}", i + 1),
            cmd,
            &b.dir.join("stdout.log"),
        )?;
        self.bouncers[i].proc = Some(p);
        let port = self.bouncers[i].port;
        let ns = self.bouncers[i].ns.clone();
        wait_for(
            "pgbouncer listening",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                netns::in_ns(ns.as_deref(), || Ok(port_open(port)))
                    .unwrap_or(false)
                    .then_some(())
            },
        )?;
        if let Some(max) = self.opts.watchdog {
            self.start_watchdog(i, max)?;
        }
        Ok(())
    }

    /// PgBouncer pod `i` deleted: its watchdog sidecar and PgBouncer stopped (SIGTERM,
    /// `grace`, SIGKILL: PgBouncer closes its connections on SIGTERM... only after its
    /// clients are gone, so a short grace ends in SIGKILL), then its network is gone: its
    /// address answers nothing and `pgbouncer-admin` no longer names it.
    pub fn delete_bouncer_pod(&mut self, i: usize, grace: Duration) {
        log(format!("delete pod pgbouncer{} (grace {grace:?})", i + 1));
        if let Some(mut w) = self.bouncers[i].watchdog.take() {
            w.stop(grace);
        }
        if let Some(mut p) = self.bouncers[i].proc.take() {
            p.stop(grace);
            self.bouncers[i].gone.push(now_us());
        }
        if let Some(net) = self.net.as_mut() {
            net.del_pod(&format!("pgbouncer{}", i + 1));
        }
        self.bouncers[i].ns = None;
        self.bouncers[i].ip = None;
    }

    /// The Deployment's replacement for PgBouncer pod `i`: a fresh pod (new address, in
    /// `pgbouncer-admin` from now on), PgBouncer not paused, with its watchdog.
    pub fn start_bouncer_pod(&mut self, i: usize) -> Res<()> {
        self.start_pgbouncer(i)?;
        log(format!(
            "pod pgbouncer{} started at {:?}",
            i + 1,
            self.bouncers[i].ip
        ));
        Ok(())
    }

    /// Patroni's view of the cluster (GET /cluster on the first member that answers).
    pub fn cluster_json(&self) -> Option<serde_json::Value> {
        for m in &self.members {
            if m.proc.is_none() {
                continue;
            }
            if let Ok((200, body)) = m.http("GET", "/cluster", "") {
                if let Ok(v) = serde_json::from_str(&body) {
                    return Some(v);
                }
            }
        }
        None
    }

    /// Name of the leader, if Patroni reports one that is running.
    pub fn leader(&self) -> Option<String> {
        let v = self.cluster_json()?;
        v["members"].as_array()?.iter().find_map(|m| {
            (m["role"] == "leader" && m["state"] == "running")
                .then(|| m["name"].as_str().unwrap().to_string())
        })
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members
            .iter()
            .find(|m| m.name == name)
            .expect("member")
    }

    pub fn idx(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|m| m.name == name)
            .expect("member")
    }

    /// Healthy: one running leader that HAProxy's check (GET /primary) accepts, and every
    /// other live member a replica in state `streaming`, no pending restart.
    pub fn wait_healthy(&self, timeout: Duration) -> Res<String> {
        let live: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| m.name.as_str())
            .collect();
        wait_for(
            "cluster healthy",
            timeout,
            Duration::from_millis(200),
            || {
                let v = self.cluster_json()?;
                let ms = v["members"].as_array()?;
                let mut leader = None;
                for name in &live {
                    let m = ms.iter().find(|m| m["name"] == *name)?;
                    if m["role"] == "leader" {
                        if m["state"] != "running" {
                            return None;
                        }
                        leader = Some(name.to_string());
                    } else if m["state"] != "streaming" {
                        return None;
                    }
                }
                let leader = leader?;
                self.member(&leader).is_primary().then_some(leader)
            },
        )
    }

    fn patronictl(&self) -> Command {
        let mut c = Command::new(self.tools.venv.join("bin/patronictl"));
        c.arg("-c").arg(&self.members[0].cfg).env("TZ", "UTC");
        in_pod(c, self.app_ns.as_deref())
    }

    pub fn switchover(&self, from: &str, to: &str) -> Res<String> {
        run_ok(&mut self.switchover_cmd(from, to), Duration::from_secs(90))
    }

    /// The `patronictl switchover` command of `switchover`, to run in the background.
    pub fn switchover_cmd(&self, from: &str, to: &str) -> Command {
        log(format!("patronictl switchover {from} -> {to}"));
        let mut c = self.patronictl();
        c.args([
            "switchover",
            &self.scope,
            "--leader",
            from,
            "--candidate",
            to,
            "--force",
        ]);
        c
    }

    /// `patronictl edit-config --force -p NAME=VALUE ...`: dynamic configuration, so every
    /// member gets the parameters (restart-only ones then show `Pending restart`).
    pub fn edit_config(&self, params: &[&str]) -> Res<String> {
        log(format!("patronictl edit-config {params:?}"));
        let mut cmd = self.patronictl();
        cmd.args(["edit-config", &self.scope, "--force"]);
        for p in params {
            cmd.args(["-p", p]);
        }
        run_ok(&mut cmd, Duration::from_secs(30))
    }

    /// Waits until every live member shows `pending_restart` in GET /cluster.
    pub fn wait_pending_restart(&self, timeout: Duration) -> Res<()> {
        let live = self.members.iter().filter(|m| m.proc.is_some()).count();
        wait_for(
            "pending restart on every member",
            timeout,
            Duration::from_millis(200),
            || {
                let v = self.cluster_json()?;
                let pending = v["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["pending_restart"] == true)
                    .count();
                (pending == live).then_some(())
            },
        )
    }

    /// Lines of every member's Patroni log (where the hooks' output lands) that contain `text`.
    pub fn patroni_log_lines(&self, text: &str) -> Vec<String> {
        self.members
            .iter()
            .flat_map(|m| {
                read(&m.patroni_log())
                    .lines()
                    .filter(|l| l.contains(text))
                    .map(|l| format!("{}: {l}", m.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn restart(&self, member: &str) -> Res<String> {
        log(format!("patronictl restart {member}"));
        run_ok(
            self.patronictl()
                .args(["restart", &self.scope, member, "--force"]),
            Duration::from_secs(90),
        )
    }

    /// "Pod deletion": SIGTERM to the container's PID 1 (tini), which forwards it to
    /// Patroni; Patroni stops Postgres (before_stop runs) and releases the leader key.
    pub fn sigterm_member(&mut self, name: &str) -> Res<()> {
        let i = self.idx(name);
        let pid = self.members[i].init_pid().ok_or("member not running")?;
        log(format!("SIGTERM to {name}'s tini (pid {pid})"));
        signal(pid, "TERM");
        let p = self.members[i].proc.as_mut().unwrap();
        if wait_child(&mut p.child, Duration::from_secs(60)).is_none() {
            return Err(format!("{name} did not exit within 60 s of SIGTERM"));
        }
        let mut p = self.members[i].proc.take().unwrap();
        p.stop(Duration::from_secs(1));
        Ok(())
    }

    /// Re-point the hooks (e.g. off/on for the benchmark) and make Patroni reload.
    pub fn set_hooks(&mut self, hooks: Hooks) -> Res<()> {
        self.hooks = hooks;
        self.reload_cfg()
    }

    /// Switch before-stop's source of the cluster view (benchmark) and make Patroni reload.
    pub fn set_view(&mut self, view: ViewSource) -> Res<()> {
        if self.view == view {
            return Ok(());
        }
        self.view = view;
        self.reload_cfg()
    }

    /// Lines where before-stop gave up on the REST API and used patronictl, in every
    /// member's Patroni log (the hooks' stderr goes there).
    pub fn rest_fallbacks(&self) -> Vec<String> {
        self.members
            .iter()
            .flat_map(|m| {
                crate::events::summaries(&read(&m.patroni_log()), "before-stop")
                    .into_iter()
                    .filter(fell_back)
                    .map(|e| format!("{}: {e}", m.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn reload_cfg(&mut self) -> Res<()> {
        for i in 0..self.members.len() {
            if self.members[i].proc.is_none() {
                continue;
            }
            self.write_patroni_cfg(i);
            let (st, body) = self.members[i].http("POST", "/reload", "")?;
            if st != 202 && st != 200 {
                return Err(format!("reload {}: {st} {body}", self.members[i].name));
            }
        }
        // Patroni applies a reload in its next HA cycle; wait until the new config
        // shows up in its log (bounded), else sleep one loop_wait.
        std::thread::sleep(Duration::from_secs(3));
        Ok(())
    }

    /// Is PgBouncer `i` paused? `SHOW STATE` on >= 1.19; on older versions a RESUME is
    /// sent and `pooler is not paused/suspended` means "not paused" (which is the
    /// only non-destructive answer: this is meant for the end of a scenario).
    pub fn bouncer_paused(&self, i: usize) -> Res<bool> {
        workload::bouncer_paused(&self.bouncers[i])
    }

    pub fn pg_log_events(&self, name: &str, pat: &str) -> Vec<i64> {
        read(&self.member(name).pg_log())
            .lines()
            .filter(|l| l.contains(pat))
            .filter_map(parse_log_ts)
            .collect()
    }

    /// Stops everything we started, by PID / process group, bounded. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.controller_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.controllers.drain(..) {
            let _ = h.join();
        }
        if let Some(mut e) = self.endpoints.take() {
            e.stop();
        }
        for b in self.bouncers.iter_mut() {
            if let Some(mut w) = b.watchdog.take() {
                w.stop(Duration::from_secs(5));
            }
        }
        for mut p in self.admin_proxies.drain(..) {
            p.stop();
        }
        for b in self.bouncers.iter_mut() {
            if let Some(mut p) = b.proc.take() {
                p.stop(Duration::from_secs(5));
            }
        }
        if let Some(mut h) = self.haproxy.take() {
            h.stop(Duration::from_secs(5));
        }
        // Replicas first, then the leader, so the leader does not wait for them.
        let order: Vec<usize> = {
            let leader = self.leader();
            let mut v: Vec<usize> = (0..self.members.len()).collect();
            v.sort_by_key(|&i| Some(&self.members[i].name) == leader.as_ref());
            v
        };
        for i in order {
            if self.members[i].pod {
                // the test is over and its data thrown away: no grace period
                let name = self.members[i].name.clone();
                if let Err(e) = self.delete_pod(&name, Duration::ZERO) {
                    log(format!("stop {name}'s pod: {e}"));
                }
                continue;
            }
            let pm = self.members[i].postmaster_pid();
            if let Some(mut p) = self.members[i].proc.take() {
                // SIGTERM to tini -> Patroni stops Postgres; Patroni's pgroup too.
                let tini = p.pid();
                let patroni = children_of(tini);
                signal(tini, "TERM");
                if wait_child(&mut p.child, Duration::from_secs(30)).is_none() {
                    log(format!("{} did not stop in 30 s: SIGKILL", p.name));
                }
                for pid in patroni {
                    signal(-pid, "KILL");
                }
                p.stop(Duration::from_secs(1));
            }
            // The postmaster runs in its own session (Patroni setsid()s it).
            if let Some(pm) = pm {
                if pid_alive(pm) && pm_belongs(pm, &self.members[i].data_dir()) {
                    signal(pm, "QUIT");
                    let _ = wait_for(
                        "postmaster exit",
                        Duration::from_secs(10),
                        Duration::from_millis(50),
                        || (!pid_alive(pm)).then_some(()),
                    );
                    if pid_alive(pm) {
                        signal(pm, "KILL");
                    }
                }
            }
        }
        if let Some(mut e) = self.etcd.take() {
            e.stop(Duration::from_secs(5));
        }
        // every namespace, veth and rule of the pod network
        self.net = None;
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            log(format!("logs kept in {}", self.dir.display()));
        }
    }
}

/// Only signal a postmaster whose command line names our data dir.
fn pm_belongs(pid: i64, data: &Path) -> bool {
    read(Path::new(&format!("/proc/{pid}/cmdline"))).contains(&*data.display().to_string())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep = true;
        }
        self.stop();
    }
}

/// How a pod deletion ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodEnd {
    /// The grace period ran out and the init got SIGKILL.
    pub killed: bool,
    /// From the SIGTERM to the pod being gone (µs).
    pub took_us: i64,
}

impl Cluster {
    /// Pod deletion, as the kubelet does it: SIGTERM to the pod's init (tini forwards it to
    /// Patroni, which runs before_stop if it was the leader, stops Postgres, releases the
    /// key), `grace`, then SIGKILL to the init, which makes the kernel kill every process
    /// left in the pod's PID namespace (detached hook workers, the safety net, Postgres).
    pub fn delete_pod(&mut self, name: &str, grace: Duration) -> Res<PodEnd> {
        let i = self.idx(name);
        if !self.members[i].pod {
            return Err(format!("{name} is not a pod"));
        }
        let init = self.members[i].init_pid();
        let Some(mut p) = self.members[i].proc.take() else {
            return Err(format!("{name}'s pod is not running"));
        };
        let t0 = now_us();
        let mut killed = false;
        if let Some(init) = init {
            log(format!(
                "delete pod {name}: SIGTERM to its init (pid {init}), grace {grace:?}"
            ));
            signal(init, "TERM");
            if wait_child(&mut p.child, grace).is_none() {
                log(format!(
                    "pod {name}: grace period over: SIGKILL to its init"
                ));
                killed = true;
                signal(init, "KILL");
            }
        }
        // unshare (--kill-child) exits once the init is gone; bounded.
        if wait_child(&mut p.child, Duration::from_secs(10)).is_none() {
            p.stop(Duration::from_secs(1));
        }
        // every process of the namespace has been sent SIGKILL: wait until the postmaster
        // is gone (the data directory is reused by the next pod)
        let data = self.members[i].data_dir();
        let _ = wait_for(
            "the pod's postmaster to exit",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || (!postmaster_running(&data)).then_some(()),
        );
        if let Some(net) = self.net.as_mut() {
            net.del_pod(name);
            self.members[i].ns = None;
            self.members[i].ip = None;
        }
        let end = PodEnd {
            killed,
            took_us: now_us() - t0,
        };
        log(format!(
            "pod {name} gone after {:.1} s{}",
            end.took_us as f64 / 1e6,
            if killed { " (SIGKILL)" } else { "" }
        ));
        Ok(end)
    }

    /// A fresh pod for `name` on the same data directory. With `opts.controller_delay` > 0,
    /// Patroni starts with a config without before_stop and callbacks, and the controller
    /// stand-in adds them after that delay and reloads Patroni.
    pub fn start_pod(&mut self, name: &str) -> Res<()> {
        let i = self.idx(name);
        if self.members[i].proc.is_some() {
            return Err(format!("{name}'s pod is running"));
        }
        let delay = self.opts.controller_delay;
        let with = self.hooks != Hooks::Off;
        if let Some(net) = self.net.as_mut() {
            let p = net.add_pod(name)?;
            self.members[i].ns = Some(p.ns);
            self.members[i].ip = Some(p.ip);
        }
        let m = &self.members[i];
        write(&m.cfg, &self.patroni_cfg(i, with && delay.is_zero()));
        chown_postgres(&m.cfg);
        self.start_patroni(i)?;
        log(format!(
            "pod {name} started (pod #{}){}",
            self.members[i].pod_starts,
            if with && !delay.is_zero() {
                format!(", hooks added by the controller stand-in in {delay:?}")
            } else {
                String::new()
            }
        ));
        if with && !delay.is_zero() {
            let cfg = self.members[i].cfg.clone();
            let text = self.patroni_cfg(i, true);
            let port = self.members[i].rest_port;
            let ns = self.members[i].ns.clone();
            let stop = self.controller_stop.clone();
            let done = self.reconciled.clone();
            let name = name.to_string();
            self.controllers.push(std::thread::spawn(move || {
                if let Some(ns) = ns {
                    if let Err(e) = netns::enter(&ns) {
                        log(format!("controller stand-in: {e}"));
                        return;
                    }
                }
                controller(&name, delay, &cfg, &text, port, &stop, &done)
            }));
        }
        Ok(())
    }

    /// Pod restart (what an SGDbOps restart does to a pod): delete, then a fresh pod on the
    /// same data directory.
    pub fn restart_pod(&mut self, name: &str) -> Res<PodEnd> {
        let g = self.opts.grace;
        let end = self.delete_pod(name, g)?;
        self.start_pod(name)?;
        Ok(end)
    }

    /// The watchdog beside PgBouncer `i`, as a sidecar in PgBouncer's Deployment: host side
    /// (outside every pod) on loopback, in the PgBouncer pod's network namespace on the pod
    /// network. `--upstream` is PgBouncer's own [databases] address (HAProxy, or the `pg`
    /// Service); passwords travel in the environment. The one place the watchdog starts.
    fn start_watchdog(&mut self, i: usize, max_pause: Duration) -> Res<()> {
        let b = &self.bouncers[i];
        let mut cmd = Command::new(self.tools.hooks_dir.join("pgbouncer-watchdog"));
        cmd.args(watchdog_args(
            &b.admin_url(),
            &format!("postgresql://{APP_USER}@{}/app", self.upstream()),
            max_pause,
        ))
        .env("PGBOUNCER_PASSWORD", ADMIN_PASSWORD)
        .env("PGPASSWORD", APP_PASSWORD);
        let cmd = in_pod(cmd, b.ns.as_deref());
        let p = Proc::spawn(
            &format!("watchdog{}", i + 1),
            cmd,
            &b.dir.join("watchdog.log"),
        )?;
        log(format!(
            "watchdog{} beside pgbouncer{} (pid {}, --max-pause {max_pause:?})",
            i + 1,
            i + 1,
            p.pid()
        ));
        self.bouncers[i].watchdog = Some(p);
        Ok(())
    }
}

/// The watchdog's command line (`pgbouncer-watchdog`). One place to adjust.
pub fn watchdog_args(admin_url: &str, upstream: &str, max_pause: Duration) -> Vec<String> {
    vec![
        "--log-format".into(),
        "json".into(),
        "--pgbouncer".into(),
        admin_url.into(),
        "--upstream".into(),
        upstream.into(),
        "--max-pause".into(),
        format!("{}ms", max_pause.as_millis()),
    ]
}

/// A postmaster runs on this data directory (postmaster.pid names a live process whose
/// command line has the data directory; the PID is the pod's, so look for it by path).
fn postmaster_running(data: &Path) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    let want = data.display().to_string();
    dir.flatten().any(|e| {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else {
            return false;
        };
        let cmd = read(Path::new(&format!("/proc/{pid}/cmdline")));
        cmd.starts_with(&format!("{PG_BIN}/postgres")) && cmd.contains(&want) && pid_alive(pid)
    })
}

/// The StackGres cluster-controller stand-in for one pod start: after `delay`, writes the
/// config with the hooks and POSTs /reload (retried while the REST API is not up; bounded).
fn controller(
    name: &str,
    delay: Duration,
    cfg: &Path,
    text: &str,
    port: u16,
    stop: &std::sync::atomic::AtomicBool,
    done: &std::sync::Mutex<Vec<(String, i64)>>,
) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < delay {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    write(cfg, text);
    chown_postgres(cfg);
    for _ in 0..100 {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Ok((200 | 202, _)) = http_req(port, "POST", "/reload", "") {
            log(format!(
                "controller stand-in: hooks added to {name}, Patroni reloaded"
            ));
            done.lock().unwrap().push((name.to_string(), now_us()));
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    log(format!(
        "controller stand-in: {name}'s Patroni never accepted /reload"
    ));
}

/// `cmd` as is, or run in network namespace `ns` (`ip netns exec`, which execs: the PID is
/// the program's), with the same arguments, environment and working directory.
pub fn in_pod(cmd: Command, ns: Option<&str>) -> Command {
    let Some(ns) = ns else { return cmd };
    let mut c = netns::exec_in(ns, cmd.get_program());
    c.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}
