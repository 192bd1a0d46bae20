//! Work that must outlive the hook's own process.
//!
//! Patroni SIGKILLs a running callback, with its children, when the next callback starts,
//! and the pod may live on long after `before_stop` returned. So the wait for promotion and
//! the pause safety net run in a *detached* copy of the same binary: spawned through a
//! short-lived launcher, so it is nobody's child (reparented to init), and in its own
//! process group, so a kill of the hook's group does not reach it. It shows in `ps` with
//! the same arguments plus its hidden role flag.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

const LAUNCHER_ENV: &str = "HOOKS_INTERNAL_LAUNCHER";

/// Call first in `main`: in the launcher stage, start the detached worker and exit at once.
pub fn launcher_stage() -> Option<ExitCode> {
    std::env::var_os(LAUNCHER_ENV)?;
    let spawned = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env_remove(LAUNCHER_ENV)
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
    });
    Some(match spawned {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "cannot start the detached worker: {err}");
            ExitCode::FAILURE
        }
    })
}

/// A detached worker whose result can be awaited (while this process lives).
pub struct Worker {
    output: std::process::ChildStdout,
}

/// Starts this binary again, detached, with `extra` arguments appended, and forgets it. Its
/// stderr is ours, so its log lands where ours does.
pub fn spawn(extra: &[OsString]) -> Result<()> {
    launch(extra, Stdio::null()).map(drop)
}

/// Like [`spawn`], with the worker's stdout a pipe back to us, for [`Worker::wait`].
pub fn spawn_awaitable(extra: &[OsString]) -> Result<Worker> {
    let output = launch(extra, Stdio::piped())?
        .ok_or_else(|| anyhow!("the detached worker's stdout is not a pipe"))?;
    Ok(Worker { output })
}

/// Runs the launcher stage, which starts the worker and exits at once.
fn launch(extra: &[OsString], stdout: Stdio) -> Result<Option<std::process::ChildStdout>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut launcher = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .args(extra)
        .env(LAUNCHER_ENV, "1")
        .stdin(Stdio::null())
        .stdout(stdout)
        .spawn()
        .context("cannot start the detached worker")?;
    let output = launcher.stdout.take();
    let status = launcher.wait().context("launcher")?;
    if !status.success() {
        return Err(anyhow!(
            "the launcher of the detached worker failed ({status})"
        ));
    }
    Ok(output)
}

impl Worker {
    /// The worker's exit code, as it reports it; `None` when it did not report within `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Option<u8> {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = self.output.read_to_string(&mut text);
            let _ = sender.send(text);
        });
        let text = receiver.recv_timeout(timeout).ok()?;
        text.lines()
            .rev()
            .find_map(|line| line.strip_prefix("exit=")?.trim().parse().ok())
    }
}

impl Worker {
    /// Waits for the worker to say `word` on a line of its own (see [`say`]); false when it
    /// ended, or did not say it within `timeout`.
    pub fn wait_for_word(self, word: &'static str, timeout: Duration) -> bool {
        use std::io::BufRead;
        let (sender, receiver) = std::sync::mpsc::channel();
        let mut output = std::io::BufReader::new(self.output);
        std::thread::spawn(move || {
            let mut line = String::new();
            while output.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line.trim() == word {
                    let _ = sender.send(());
                    return;
                }
                line.clear();
            }
        });
        receiver.recv_timeout(timeout).is_ok()
    }
}

/// Called by a worker to tell the awaiting foreground `word` (on a line of its own).
pub fn say(word: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{word}").and_then(|()| out.flush());
}

/// Called by the worker at its end: the awaiting foreground reads this line.
/// Never fails: when Patroni has killed the callback, nobody reads this pipe any more, and a
/// closed stdout must not turn a finished job into a panic.
pub fn report(code: u8) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "exit={code}").and_then(|()| out.flush());
}
