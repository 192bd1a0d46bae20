//! Whose pause is it? PgBouncer does not record who paused it, so the hooks mark their own.
//!
//! Whoever holds a hooks' pause keeps an admin session open whose `application_name` is
//! `pph-pause/<id>`: the `before-stop` run that sent PAUSE (the PAUSE goes out on that very
//! session, so the mark is there from the pause's first instant), then the safety net it
//! leaves behind, and the watchdog beside PgBouncer once it has seen the mark (so the mark
//! outlives the member's pod). PgBouncer lists admin sessions in `SHOW CLIENTS` (with
//! `application_name` since 1.18), so ownership is visible from PgBouncer's side:
//!
//! * a `pph-pause/<id>` session: the hooks' pause `<id>`; the hooks, their nets and the
//!   watchdog may end it;
//! * a `pph-hold` session (a DBA's `psql "… application_name=pph-hold"`): held on purpose;
//!   nothing of the hooks ends any pause while it is connected;
//! * no mark: somebody else's pause (a DBA's cutover): never ended by the hooks.
//!
//! These are pure functions over the `application_name`s that `SHOW CLIENTS` lists.

/// The prefix of a hooks' pause mark; the pause id follows it.
pub const PAUSE_MARK: &str = "pph-pause/";
/// The prefix of an operator's hold.
pub const HOLD_MARK: &str = "pph-hold";
/// The `application_name` of the hooks' other admin sessions (RESUME, SHOW STATE, checks):
/// they carry no ownership, but are told apart from a DBA's in `SHOW CLIENTS`.
pub const PLAIN: &str = "pph";

/// Who owns a pause, as far as `SHOW CLIENTS` tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// The hooks: the pause ids marked (sorted, distinct; more than one when two hooks'
    /// pauses overlap, e.g. both members stopping).
    Hooks(Vec<String>),
    /// An operator holds it (`pph-hold`), whatever else is marked; the hooks' pause ids
    /// marked under the hold, if any.
    Held(Vec<String>),
    /// Nobody marked it: somebody else's pause.
    Other,
}

impl Owner {
    pub fn as_str(&self) -> &'static str {
        match self {
            Owner::Hooks(_) => "hooks",
            Owner::Held(_) => "held",
            Owner::Other => "other",
        }
    }

    /// The first hooks' pause id marked (held or not).
    pub fn id(&self) -> Option<&str> {
        match self {
            Owner::Hooks(ids) | Owner::Held(ids) => ids.first().map(String::as_str),
            Owner::Other => None,
        }
    }

    /// The same, not counting pause `id` (this process's own mark): a pause that only its
    /// own fresh session marks is somebody else's.
    pub fn without(self, id: &str) -> Owner {
        match self {
            Owner::Hooks(ids) => {
                let ids: Vec<String> = ids.into_iter().filter(|i| i != id).collect();
                if ids.is_empty() {
                    Owner::Other
                } else {
                    Owner::Hooks(ids)
                }
            }
            other => other,
        }
    }
}

/// Ownership from the `application_name`s of the connected admin sessions. PgBouncer's
/// `application_name_add_host` appends ` - host:port`, so a mark ends at the first blank.
pub fn owner<S: AsRef<str>>(application_names: &[S]) -> Owner {
    let mut ids: Vec<String> = Vec::new();
    let mut held = false;
    for name in application_names {
        let name = name.as_ref().trim_start();
        if name.starts_with(HOLD_MARK) {
            held = true;
            continue;
        }
        if let Some(rest) = name.strip_prefix(PAUSE_MARK) {
            let id = rest.split_whitespace().next().unwrap_or("");
            if !id.is_empty() {
                ids.push(id.to_string());
            }
        }
    }
    ids.sort();
    ids.dedup();
    if held {
        Owner::Held(ids)
    } else if ids.is_empty() {
        Owner::Other
    } else {
        Owner::Hooks(ids)
    }
}

/// A new pause id: the member's name (only characters that survive every log and
/// `application_name`, at most 32) and the wall-clock milliseconds, e.g. `pg-0@1765100000123`.
pub fn new_pause_id(member: &str) -> String {
    let name: String = member
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(32)
        .collect();
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{}@{ms}", if name.is_empty() { "member" } else { &name })
}

/// The `application_name` that marks pause `id` (PgBouncer and Postgres keep 63 bytes).
pub fn pause_mark(id: &str) -> String {
    let mut mark = format!("{PAUSE_MARK}{id}");
    mark.truncate(63);
    mark
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ownership_from_the_sessions() {
        let hooks = |ids: &[&str]| Owner::Hooks(ids.iter().map(|s| s.to_string()).collect());
        let table: [(&[&str], Owner); 9] = [
            (&[], Owner::Other),
            (&["psql", "", "pph"], Owner::Other),
            (&["pph-pause/m1@1"], hooks(&["m1@1"])),
            (
                &["psql", "pph-pause/m1@1", "pph-pause/m1@1"],
                hooks(&["m1@1"]),
            ),
            (
                &["pph-pause/m2@2", "pph-pause/m1@1"],
                hooks(&["m1@1", "m2@2"]),
            ),
            // application_name_add_host appends the client's address
            (&["pph-pause/m1@1 - 10.0.0.7:41234"], hooks(&["m1@1"])),
            (
                &["pph-pause/m1@1", "pph-hold"],
                Owner::Held(vec!["m1@1".into()]),
            ),
            (&["pph-hold cutover 2026-12-07"], Owner::Held(vec![])),
            // a mark with no id is no mark
            (&["pph-pause/", "pph-pausex"], Owner::Other),
        ];
        for (names, want) in table {
            assert_eq!(owner(names), want, "{names:?}");
        }
        assert_eq!(hooks(&["a"]).without("a"), Owner::Other);
        assert_eq!(hooks(&["a", "b"]).without("a"), hooks(&["b"]));
        assert_eq!(Owner::Held(vec![]).without("a"), Owner::Held(vec![]));
    }

    #[test]
    fn pause_ids_are_safe_and_marks_fit() {
        let id = new_pause_id("pg-0 ünïcode;drop table'x'");
        assert!(id.starts_with("pg-0ncodedroptablex@"), "{id}");
        let long = new_pause_id(&"m".repeat(100));
        assert!(pause_mark(&long).len() <= 63);
        assert_eq!(owner(&[pause_mark(&id)]), Owner::Hooks(vec![id.clone()]));
        assert!(new_pause_id("").starts_with("member@"));
    }

    proptest! {
        #[test]
        fn a_mark_always_reads_back_as_its_own_id(member in ".{0,80}") {
            let id = new_pause_id(&member);
            prop_assert!(id.len() <= 52);
            prop_assert_eq!(owner(&[pause_mark(&id)]), Owner::Hooks(vec![id]));
        }

        #[test]
        fn no_name_panics(names in proptest::collection::vec(".{0,70}", 0..6)) {
            let _ = owner(&names);
        }
    }
}
