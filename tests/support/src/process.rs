//! Processes, files and ports: the plumbing every harness part uses, in one copy.
//!
//! Everything is bounded (every wait has a deadline, every loop a count) and fails the same
//! way: a `Res` whose error says what and why. The few panicking conveniences at the end are
//! for test bodies, where a failed step is a failed test.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2)) // effective uid
            .map(|uid| uid == "0")
            .unwrap_or(false)
    })
}

/// (uid, gid) of user `postgres`, from /etc/passwd.
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() > 3 && f[0] == "postgres" {
                return (f[2].parse().unwrap(), f[3].parse().unwrap());
            }
        }
        panic!("no user postgres in /etc/passwd (run scripts/setup)");
    })
}

/// Removes libpq variables inherited from the environment so they cannot redirect a client
/// or a server.
pub fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&k);
        }
    }
}

/// A command that runs `program` as user `postgres` when we are root (else as ourselves),
/// libpq variables scrubbed, `HOME=/tmp`, in `/`.
pub fn as_postgres(program: impl AsRef<OsStr>) -> Command {
    as_postgres_dying_with(program, None)
}

/// [`as_postgres`], and `pdeathsig` is sent to it if the thread that started it dies.
pub fn as_postgres_dying_with(program: impl AsRef<OsStr>, pdeathsig: Option<&str>) -> Command {
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]);
        if let Some(sig) = pdeathsig {
            c.arg(format!("--pdeathsig={sig}"));
        }
        c.arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    scrub_env(&mut cmd);
    cmd.env("HOME", "/tmp").current_dir("/");
    cmd
}

/// Gives `path` (and everything below it) to user postgres, when we are root.
pub fn chown_postgres(path: &Path) {
    if !is_root() {
        return;
    }
    let (uid, gid) = postgres_ids();
    let mut stack = vec![path.to_path_buf()];
    for _ in 0..100_000 {
        let Some(p) = stack.pop() else { return };
        let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
        if p.is_dir() && !p.is_symlink() {
            stack.extend(
                fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) and kills it by its PID if it
/// overruns `timeout`. Returns its output and whether it timed out.
pub fn capture(cmd: &mut Command, timeout: Duration) -> Res<(Output, bool)> {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {desc}: {e}"))?;
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let (status, timed_out) = match wait_child(&mut child, timeout) {
        Some(status) => (status, false),
        None => {
            let _ = child.kill(); // SIGKILL to this PID only
            (child.wait().map_err(|e| format!("wait {desc}: {e}"))?, true)
        }
    };
    let output = Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    };
    Ok((output, timed_out))
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs a command to completion within `timeout`: (status, stdout, stderr), or an error
/// when it could not start or overran (then it was killed).
pub fn run(cmd: &mut Command, timeout: Duration) -> Res<(ExitStatus, String, String)> {
    let desc = format!("{cmd:?}");
    let (out, timed_out) = capture(cmd, timeout)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if timed_out {
        return Err(format!(
            "timed out after {timeout:?}: {desc}\nstderr: {}",
            text(&out.stderr)
        ));
    }
    Ok((out.status, text(&out.stdout), text(&out.stderr)))
}

/// Like [`run`], and a non-zero exit is an error too; returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Res<String> {
    let desc = format!("{cmd:?}");
    let (status, out, err) = run(cmd, timeout)?;
    if !status.success() {
        return Err(format!("{desc} failed ({status}): {out}\n{err}"));
    }
    Ok(out)
}

/// Polls `f` every `every` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Res<T> {
    let start = Instant::now();
    let max_iter = (timeout.as_millis() / every.as_millis().max(1)) as u64 + 2;
    for _ in 0..max_iter {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            break;
        }
        thread::sleep(every);
    }
    Err(format!("timed out after {timeout:?} waiting for {what}"))
}

/// Waits at most `timeout` for a child to exit, polling every 10 ms.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if start.elapsed() >= timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits at most `timeout` for `child` to exit; SIGKILLs it (by PID) if it does not.
pub fn reap(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    wait_child(child, timeout).or_else(|| {
        let _ = child.kill();
        child.wait().ok()
    })
}

/// Sends `sig` (e.g. "TERM") with kill(1) to one PID, or to a process group when `pid` < 0.
pub fn signal(pid: impl Into<i64>, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.into().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A free TCP port on 127.0.0.1 (bound with port 0, then released). Never hands out the
/// same port twice within one test process; a race with another process is handled by the
/// servers' start-up retry.
pub fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .unwrap()
            .port();
        let mut used = USED.lock().unwrap();
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free port found");
}

/// `n` distinct free ports.
pub fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| free_port()).collect()
}

pub fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The file's text, or "" when it cannot be read.
pub fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

// ------------------------------------------------- panicking conveniences for test bodies

/// [`capture`] for a test body: the output, even of a command that overran (it was killed,
/// so its status is not success, and its stderr ends with `[pph: timed out after ...]`).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let (mut out, timed_out) = capture(&mut cmd, timeout).unwrap_or_else(|e| panic!("{e}"));
    if timed_out {
        out.stderr
            .extend_from_slice(format!("\n[pph: timed out after {timeout:?}]").as_bytes());
    }
    out
}

/// [`wait_for`] for a test body: panics on time-out.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    f: impl FnMut() -> Option<T>,
) -> T {
    wait_for(what, timeout, every, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a hook that may leave a detached process behind (before-stop's safety net inherits
/// its stderr and holds it open as long as the pause it holds): stderr goes to a file and
/// only the hook itself is waited for, at most `timeout` (then SIGKILLed).
pub fn run_leaving(mut cmd: Command, timeout: Duration) -> Output {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("pph-hook-{}-{n}.log", std::process::id()));
    let file = fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(file);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let status = reap(&mut child, timeout).expect("the hook's exit status");
    let mut stdout = Vec::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_end(&mut stdout);
    }
    let stderr = fs::read(&path).unwrap_or_default();
    let _ = fs::remove_file(&path);
    Output {
        status,
        stdout,
        stderr,
    }
}
