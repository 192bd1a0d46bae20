//! Reading the cluster view that `patronictl list -f tsv` and `patronictl history -f tsv` print.
//!
//! The TSV is unquoted and its columns change between Patroni versions (`Lag in MB` in 3.x,
//! `Receive LSN`/`Replay Lag` in 4.x, an empty `Cluster` in 3.0.3/3.0.4, a `Group` column with
//! Citus, optional trailing columns), so every field is found by its header name and nothing
//! else is assumed about the layout.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// A member's role as `patronictl list` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    StandbyLeader,
    SyncStandby,
    QuorumStandby,
    Replica,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        let normal: String = text
            .trim()
            .chars()
            .map(|c| {
                if c == '_' {
                    ' '
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        match normal.as_str() {
            "leader" => Some(Role::Leader),
            "standby leader" => Some(Role::StandbyLeader),
            "sync standby" => Some(Role::SyncStandby),
            "quorum standby" => Some(Role::QuorumStandby),
            "replica" => Some(Role::Replica),
            _ => None,
        }
    }

    /// Whether this role holds the leader key, i.e. clients are routed to it.
    pub fn is_leader(self) -> bool {
        matches!(self, Role::Leader | Role::StandbyLeader)
    }
}

/// One row of `patronictl list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub role: Role,
    pub state: String,
    /// The Citus group, when the view has a `Group` column.
    pub group: Option<String>,
}

/// One row of `patronictl history`: the timeline that started when `new_leader` was promoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub timeline: u64,
    pub new_leader: String,
    pub group: Option<String>,
}

/// A parsed TSV table: header names and rows of the same width.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(what: &str, text: &str) -> Result<Table> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(b'\t')
            .quoting(false)
            .flexible(true)
            .has_headers(false)
            .from_reader(text.as_bytes());
        let mut records = reader.records();
        let header: Vec<String> = match records.next() {
            None => {
                bail!("{what} output is empty: expected a header line (is this `-f tsv` output?)")
            }
            Some(record) => record
                .with_context(|| format!("{what} output is not readable TSV"))?
                .iter()
                .map(|field| field.trim().to_string())
                .collect(),
        };
        let mut rows = Vec::new();
        for (index, record) in records.enumerate() {
            let record = record.with_context(|| format!("{what} output is not readable TSV"))?;
            if record.len() == 1 && record[0].trim().is_empty() {
                continue;
            }
            if record.len() != header.len() {
                bail!(
                    "{what} output row {} has {} fields but the header has {}: truncated or not `-f tsv` output",
                    index + 2,
                    record.len(),
                    header.len()
                );
            }
            rows.push(
                record
                    .iter()
                    .map(|field| field.trim().to_string())
                    .collect(),
            );
        }
        Ok(Table { header, rows })
    }

    fn column(&self, what: &str, name: &str) -> Result<usize> {
        self.optional_column(name).ok_or_else(|| {
            anyhow!(
                "{what} output has no `{name}` column (header: {}): is this `patronictl {what} -f tsv` output?",
                self.header.join(", ")
            )
        })
    }

    fn optional_column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|column| column == name)
    }
}

/// Parses `patronictl list -f tsv`.
pub fn parse_list(text: &str) -> Result<Vec<Member>> {
    let table = Table::parse("list", text)?;
    let member = table.column("list", "Member")?;
    let role = table.column("list", "Role")?;
    let state = table.optional_column("State");
    let group = table.optional_column("Group");
    table
        .rows
        .iter()
        .map(|row| {
            let name = row[member].clone();
            if name.is_empty() {
                bail!("list output has a row with an empty Member");
            }
            let role = Role::parse(&row[role]).ok_or_else(|| {
                anyhow!(
                    "list output gives member {name:?} the unknown role {:?} (expected Leader, Standby Leader, Sync Standby, Quorum Standby or Replica)",
                    row[role]
                )
            })?;
            Ok(Member {
                name,
                role,
                state: state.map(|i| row[i].clone()).unwrap_or_default(),
                group: group.map(|i| row[i].clone()),
            })
        })
        .collect()
}

/// Parses `patronictl history -f tsv`; no rows is valid (the cluster's first timeline).
pub fn parse_history(text: &str) -> Result<Vec<Switch>> {
    let table = Table::parse("history", text)?;
    let timeline = table.column("history", "TL")?;
    let new_leader = table.column("history", "New Leader")?;
    let group = table.optional_column("Group");
    table
        .rows
        .iter()
        .map(|row| {
            let tl = row[timeline].parse::<u64>().map_err(|_| {
                anyhow!(
                    "history output has the timeline {:?}, not a number",
                    row[timeline]
                )
            })?;
            Ok(Switch {
                timeline: tl,
                new_leader: row[new_leader].clone(),
                group: group.map(|i| row[i].clone()),
            })
        })
        .collect()
}

/// How to run `patronictl`, bounded in time.
#[derive(Clone, Debug)]
pub struct Patronictl {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub timeout: Duration,
}

impl Patronictl {
    /// Runs `patronictl ARGS SUBCOMMAND -f tsv` and returns its standard output.
    pub async fn tsv(&self, subcommand: &str) -> Result<String> {
        let shown = format!("{} {subcommand} -f tsv", self.program.display());
        let child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .args([subcommand, "-f", "tsv"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run `{shown}`: set --patronictl (HOOKS_PATRONICTL) to the patronictl executable"
                )
            })?;
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => output.with_context(|| format!("`{shown}` failed"))?,
            Err(_) => bail!(
                "`{shown}` did not finish within {:?} (killed): is the DCS reachable? raise --patronictl-timeout if it is just slow",
                self.timeout
            ),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            bail!("`{shown}` failed ({}): {}", output.status, last.trim());
        }
        String::from_utf8(output.stdout)
            .map_err(|_| anyhow!("`{shown}` printed output that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names() {
        let table = [
            ("Leader", Some(Role::Leader)),
            ("Standby Leader", Some(Role::StandbyLeader)),
            ("standby_leader", Some(Role::StandbyLeader)),
            ("Sync Standby", Some(Role::SyncStandby)),
            ("Quorum Standby", Some(Role::QuorumStandby)),
            ("Replica", Some(Role::Replica)),
            ("", None),
            ("Master", None),
            ("Leaderx", None),
        ];
        for (text, role) in table {
            assert_eq!(Role::parse(text), role, "{text:?}");
        }
    }

    #[test]
    fn list_errors_name_the_problem() {
        let table = [
            ("", "empty"),
            ("Cluster\tHost\tRole\n", "no `Member` column"),
            ("Cluster\tMember\tHost\n", "no `Role` column"),
            (
                "Member\tRole\tState\nm1\tLeader\n",
                "row 2 has 2 fields but the header has 3",
            ),
            ("Member\tRole\nm1\tBoss\n", "unknown role \"Boss\""),
            ("Member\tRole\n\tLeader\n", "empty Member"),
        ];
        for (text, message) in table {
            let err = parse_list(text).unwrap_err().to_string();
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn history_errors_name_the_problem() {
        let table = [
            ("", "empty"),
            ("TL\tLSN\tReason\n", "no `New Leader` column"),
            ("TL\tNew Leader\nx\tm1\n", "timeline \"x\", not a number"),
        ];
        for (text, message) in table {
            let err = parse_history(text).unwrap_err().to_string();
            assert!(err.contains(message), "{text:?}: {err}");
        }
    }

    #[test]
    fn crlf_and_blank_lines_are_tolerated() {
        let members = parse_list("Cluster\tMember\tRole\r\nc\tm1\tLeader\r\n\r\n").unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name, "m1");
        assert_eq!(members[0].role, Role::Leader);
    }

    #[test]
    fn history_may_have_no_rows() {
        assert!(parse_history("TL\tLSN\tReason\tTimestamp\tNew Leader\n")
            .unwrap()
            .is_empty());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    const ROLES: [(&str, Role); 5] = [
        ("Leader", Role::Leader),
        ("Standby Leader", Role::StandbyLeader),
        ("Sync Standby", Role::SyncStandby),
        ("Quorum Standby", Role::QuorumStandby),
        ("Replica", Role::Replica),
    ];

    proptest! {
        #[test]
        fn parsers_never_panic(text in "[a-zA-Z0-9 .:\t\r\n_-]{0,300}") {
            let _ = parse_list(&text);
            let _ = parse_history(&text);
        }

        #[test]
        fn parsers_never_panic_on_any_unicode(text in "\\PC{0,200}") {
            let _ = parse_list(&text);
            let _ = parse_history(&text);
        }

        /// Whatever the column order and whatever extra columns a version adds, the same
        /// members come out.
        #[test]
        fn columns_are_found_by_name(
            members in proptest::collection::vec(("[a-z][a-z0-9.-]{0,8}", 0usize..5), 1..6),
            extra in proptest::collection::vec("[A-Z][a-z]{1,6}( [a-z]{2,4})?", 0..4),
            rotate in 0usize..8,
        ) {
            let mut header: Vec<String> = vec!["Cluster".into(), "Member".into(), "Host".into(), "Role".into(), "State".into(), "TL".into()];
            for name in &extra {
                if !header.contains(name) {
                    header.push(name.clone());
                }
            }
            let len = header.len();
            header.rotate_left(rotate % len);
            let mut text = header.join("\t") + "\n";
            for (name, role) in &members {
                let row: Vec<String> = header.iter().map(|column| match column.as_str() {
                    "Member" => name.clone(),
                    "Role" => ROLES[*role].0.to_string(),
                    "Cluster" => String::new(),
                    _ => "x".to_string(),
                }).collect();
                text += &(row.join("\t") + "\n");
            }
            let parsed = parse_list(&text).unwrap();
            prop_assert_eq!(parsed.len(), members.len());
            for (got, (name, role)) in parsed.iter().zip(&members) {
                prop_assert_eq!(&got.name, name);
                prop_assert_eq!(got.role, ROLES[*role].1);
            }
        }
    }
}
