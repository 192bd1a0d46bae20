//! Exit codes, in one place so the README, the binaries and the tests agree.
//!
//! Patroni ignores a hook's exit code, so the code is for people and CI pipelines; the
//! summary log line always says the same thing in words.

/// The hook did what was needed, or decided that nothing was needed.
pub const OK: u8 = 0;
/// Something operational failed: the cluster view could not be read, no PgBouncer could be
/// paused or resumed, Postgres never left recovery.
pub const FAILURE: u8 = 1;
/// The command line or the environment is wrong (clap uses the same code).
pub const USAGE: u8 = 2;

/// Marks an error as the caller's fault, so `main` exits with [`USAGE`] instead of [`FAILURE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The exit code for an error that reached `main`.
pub fn for_error(err: &anyhow::Error) -> u8 {
    if err.chain().any(|cause| cause.is::<UsageError>()) {
        USAGE
    } else {
        FAILURE
    }
}
