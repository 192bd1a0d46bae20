//! The hooks' structured events, read the one way every test reads them.
//!
//! Under `--log-format json` (or `HOOKS_LOG_FORMAT=json`) each log line is one JSON object with
//! its fields flattened (src/logging.rs): `event` (`summary`, `decided`, `route`, `watchdog`,
//! `safety-net`, `worker`), `hook`, `action`, `outcome`, and per PgBouncer `command` and
//! `result` (docs/reference.md, "Summary events"). Tests select events by those fields, never
//! by the message, whose wording is for people.
//!
//! ```ignore
//! let said = events::parse(&stderr);
//! assert!(events::any(&said, &[("event", "route"), ("action", "reached")]));
//! assert_eq!(events::summary(&stderr)["outcome"], "paused");
//! ```

use serde_json::Value;

/// Every JSON object in `text`, one per line, in order. A line may carry a prefix before its
/// `{` (a log collector's timestamp); lines without a JSON object are skipped, so a hook's
/// stderr, a Patroni log with the hooks' lines in it and a `kubectl logs` output all parse.
pub fn parse(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|line| {
            let start = line.find('{')?;
            serde_json::from_str::<Value>(line[start..].trim_end()).ok()
        })
        .filter(Value::is_object)
        .collect()
}

/// Whether `event` has every field of `want` with the given string value.
pub fn matches(event: &Value, want: &[(&str, &str)]) -> bool {
    want.iter().all(|(key, value)| event[*key] == *value)
}

/// The events of `events` with every field of `want`, in order.
pub fn select(events: &[Value], want: &[(&str, &str)]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| matches(e, want))
        .cloned()
        .collect()
}

/// Whether any event of `events` has every field of `want`.
pub fn any(events: &[Value], want: &[(&str, &str)]) -> bool {
    events.iter().any(|e| matches(e, want))
}

/// The events with every field of `want` in the JSON log `text`, in order.
pub fn find(text: &str, want: &[(&str, &str)]) -> Vec<Value> {
    select(&parse(text), want)
}

/// Whether the JSON log `text` holds an event with every field of `want`.
pub fn said(text: &str, want: &[(&str, &str)]) -> bool {
    any(&parse(text), want)
}

/// The last event with every field of `want` in the JSON log `text`; panics, showing `text`,
/// when there is none.
pub fn last(text: &str, want: &[(&str, &str)]) -> Value {
    find(text, want)
        .pop()
        .unwrap_or_else(|| panic!("no event with {want:?} in:\n{text}"))
}

/// A run's summary event (`event=summary`, the last one in `text`); panics when there is none.
pub fn summary(text: &str) -> Value {
    last(text, &[("event", "summary")])
}

/// The summary events of `hook` (`before-stop`, `on-role-change`) in `text`, in order.
pub fn summaries(text: &str, hook: &str) -> Vec<Value> {
    find(text, &[("event", "summary"), ("hook", hook)])
}

/// The `result` of every per-PgBouncer event for `command` (`PAUSE`, `RESUME`), in order.
pub fn results(text: &str, command: &str) -> Vec<String> {
    find(text, &[("command", command)])
        .into_iter()
        .filter_map(|e| e["result"].as_str().map(str::to_string))
        .collect()
}
