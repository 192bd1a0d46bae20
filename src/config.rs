//! The small parsers behind the command lines, and the usage error that maps to exit 2.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::exit::UsageError;

/// Whether any URL among the process' arguments carries a password (visible in `ps`).
pub fn password_in_argv() -> bool {
    std::env::args().any(|arg| arg.contains("://") && crate::conninfo::has_password(&arg))
}

/// Parses `500ms`, `10s`, `2m`, `1.5s` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (examples: 500ms, 10s, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > 7.0 * 24.0 * 3600.0 {
        return Err(format!("{text:?} is too long (a week at most)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(text)
}

/// A usage error that `main` turns into exit code 2.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let table = [
            ("500ms", Some(0.5)),
            ("10s", Some(10.0)),
            ("10", Some(10.0)),
            ("1.5s", Some(1.5)),
            ("2m", Some(120.0)),
            ("0", Some(0.0)),
            ("", None),
            ("ten", None),
            ("10x", None),
            ("-1s", None),
            ("1e9", None),
        ];
        for (text, seconds) in table {
            let got = parse_duration(text).ok().map(|d| d.as_secs_f64());
            assert_eq!(got, seconds, "{text:?}");
        }
    }
}
