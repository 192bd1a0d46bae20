//! What `--dry-run` prints: one JSON object on stdout, for CI pipelines that check a cluster view.

use serde::Serialize;

use crate::decision::Action;

/// The one JSON object `--dry-run` prints; CI pipelines read it.
#[derive(Debug, Serialize)]
pub struct DryRun<'a> {
    pub action: Action,
    pub reason: &'a str,
    pub member: Option<&'a str>,
    /// The PgBouncer URLs, passwords removed; not resolved, so no network is needed.
    pub targets: Vec<String>,
    pub hook: &'a str,
}

impl DryRun<'_> {
    pub fn print(&self) {
        println!(
            "{}",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        );
    }
}
