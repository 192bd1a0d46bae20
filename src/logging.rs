//! Logs go to stderr: Patroni copies a hook's stderr into its own log, and stdout is kept for
//! the one JSON object of `--dry-run`.
//!
//! RUST_LOG sets the level: `error`, `warn`, `info` (default), `debug`, `trace` or `off`. Only a
//! plain level: the per-module directives of tracing-subscriber's `env-filter` would pull its
//! regex engine and Unicode tables into every binary (docs/stackgres.md, "Why this path").

use std::io::IsTerminal;

use tracing_subscriber::filter::LevelFilter;

/// How log lines look on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line, fields flattened.
    Json,
}

/// The level RUST_LOG asks for; anything that is not a plain level means the default, info.
fn level(rust_log: Option<&str>) -> LevelFilter {
    rust_log
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO)
}

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(level(std::env::var("RUST_LOG").ok().as_deref()))
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_plain_levels() {
        for (input, want) in [
            (None, LevelFilter::INFO),
            (Some("debug"), LevelFilter::DEBUG),
            (Some("TRACE"), LevelFilter::TRACE),
            (Some(" warn "), LevelFilter::WARN),
            (Some("error"), LevelFilter::ERROR),
            (Some("off"), LevelFilter::OFF),
            (Some("hooks=debug"), LevelFilter::INFO),
            (Some(""), LevelFilter::INFO),
        ] {
            assert_eq!(level(input), want, "RUST_LOG={input:?}");
        }
    }
}
