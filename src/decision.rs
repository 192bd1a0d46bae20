//! The two decisions the hooks make, as pure functions over data.
//!
//! Pausing on the wrong member is worse than not pausing: a replica that pauses PgBouncer
//! while the primary keeps running stalls every client for nothing. So `before-stop` pauses
//! only when the view says this member is the one clients are routed to.

use serde::Serialize;

use crate::patronictl::{Member, Switch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pause,
    Resume,
    Skip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub reason: String,
}

impl Decision {
    fn new(action: Action, reason: String) -> Decision {
        Decision { action, reason }
    }
}

/// What `before-stop` can conclude from `patronictl list` alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListVerdict {
    Decided(Decision),
    /// No member holds the leader key: only the newest history row can tell.
    NeedHistory,
}

/// Decides from the member list; history is read only when the list cannot tell.
///
/// Patroni still holds the leader key while `before_stop` runs during a graceful demote, so
/// the outgoing leader sees itself as `Leader`.
pub fn decide_from_list(member: &str, list: &[Member]) -> Result<ListVerdict, String> {
    let me = list.iter().find(|m| m.name == member).ok_or_else(|| {
        let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        format!(
            "member {member:?} is not in the cluster view (members: {}): set --member or PATRONI_NAME to this member's Patroni name",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )
    })?;
    if me.role.is_leader() {
        return Ok(ListVerdict::Decided(Decision::new(
            Action::Pause,
            format!(
                "{member} holds the leader key ({:?}) and is stopping",
                me.role
            ),
        )));
    }
    // With Citus every group has its own leader; only this member's group matters.
    let other_leader = list
        .iter()
        .find(|m| m.name != member && m.group == me.group && m.role.is_leader());
    if let Some(leader) = other_leader {
        return Ok(ListVerdict::Decided(Decision::new(
            Action::Skip,
            format!("{member} is a {:?}; the leader is {}", me.role, leader.name),
        )));
    }
    Ok(ListVerdict::NeedHistory)
}

/// Decides when the list shows no leader: only the newest timeline's leader may pause.
///
/// An older row naming this member must not count: a replica that led two switchovers ago
/// would otherwise pause PgBouncer every time it restarts.
pub fn decide_from_history(member: &str, group: Option<&str>, history: &[Switch]) -> Decision {
    let newest = history
        .iter()
        .filter(|s| s.group.as_deref() == group || s.group.is_none() || group.is_none())
        .max_by_key(|s| s.timeline);
    match newest {
        None => Decision::new(
            Action::Pause,
            format!("no member holds the leader key and the history is empty: {member} is the first timeline's primary"),
        ),
        Some(s) if s.new_leader == member => Decision::new(
            Action::Pause,
            format!("no member holds the leader key; the newest timeline ({}) was started by {member}", s.timeline),
        ),
        Some(s) => Decision::new(
            Action::Skip,
            format!(
                "no member holds the leader key; the newest timeline ({}) was started by {:?}, not {member}",
                s.timeline, s.new_leader
            ),
        ),
    }
}

/// The arguments Patroni passes to a callback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub action: String,
    pub role: String,
    pub scope: String,
}

/// What `on-role-change` should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResumePlan {
    /// Wait until the local Postgres leaves recovery, then RESUME.
    AfterPromotion(String),
    /// RESUME at once: a standby leader stays in recovery for good.
    Now(String),
    Nothing(String),
}

const ACTIONS: [&str; 3] = ["on_role_change", "on_start", "on_restart"];
const OTHER_ROLES: [&str; 5] = ["replica", "demoted", "uninitialized", "stopped", "promoted"];

/// `None` means called by hand with no arguments: the operator wants PgBouncer resumed.
pub fn plan_resume(callback: Option<&Callback>) -> ResumePlan {
    let Some(cb) = callback else {
        return ResumePlan::AfterPromotion("called without arguments".to_string());
    };
    if !ACTIONS.contains(&cb.action.as_str()) {
        return ResumePlan::Nothing(format!(
            "nothing to do for {} (only on_role_change, on_start and on_restart resume)",
            cb.action
        ));
    }
    match cb.role.as_str() {
        "primary" | "master" => ResumePlan::AfterPromotion(format!(
            "{} as {} of {}",
            cb.action, cb.role, cb.scope
        )),
        "standby_leader" => ResumePlan::Now(format!("{} as standby_leader of {}", cb.action, cb.scope)),
        role if OTHER_ROLES.contains(&role) => ResumePlan::Nothing(format!(
            "nothing to do: {} as {role} (only primary, master and standby_leader resume)",
            cb.action
        )),
        role => ResumePlan::Nothing(format!(
            "nothing to do: unknown role {role:?} (expected primary, master, standby_leader or replica)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patronictl::Role::{self, *};

    fn member(name: &str, role: Role) -> Member {
        Member {
            name: name.into(),
            role,
            state: "running".into(),
            group: None,
        }
    }

    fn switch(timeline: u64, new_leader: &str) -> Switch {
        Switch {
            timeline,
            new_leader: new_leader.into(),
            group: None,
        }
    }

    #[test]
    fn list_table() {
        let table: Vec<(&str, Vec<Member>, Option<Action>)> = vec![
            (
                "a",
                vec![member("a", Leader), member("b", Replica)],
                Some(Action::Pause),
            ),
            (
                "a",
                vec![member("a", StandbyLeader), member("b", Replica)],
                Some(Action::Pause),
            ),
            (
                "b",
                vec![member("a", Leader), member("b", Replica)],
                Some(Action::Skip),
            ),
            (
                "b",
                vec![member("a", Leader), member("b", SyncStandby)],
                Some(Action::Skip),
            ),
            (
                "b",
                vec![member("a", Leader), member("b", QuorumStandby)],
                Some(Action::Skip),
            ),
            ("b", vec![member("a", Replica), member("b", Replica)], None),
            (
                "db.1",
                vec![member("dbx1", Leader), member("db.1", Replica)],
                Some(Action::Skip),
            ),
        ];
        for (me, list, expected) in table {
            let verdict = decide_from_list(me, &list).unwrap();
            let got = match verdict {
                ListVerdict::Decided(d) => Some(d.action),
                ListVerdict::NeedHistory => None,
            };
            assert_eq!(got, expected, "{me} in {list:?}");
        }
    }

    #[test]
    fn names_match_exactly() {
        let list = vec![member("db.1", Replica), member("dbx1", Leader)];
        assert!(decide_from_list("db", &list).is_err());
        assert!(decide_from_list("DB.1", &list).is_err());
        assert!(decide_from_list("db.1 ", &list).is_err());
    }

    #[test]
    fn citus_groups_are_separate() {
        let mut coordinator = member("c1", Leader);
        coordinator.group = Some("0".into());
        let mut worker = member("w1", Replica);
        worker.group = Some("1".into());
        let verdict = decide_from_list("w1", &[coordinator, worker]).unwrap();
        assert_eq!(verdict, ListVerdict::NeedHistory);
    }

    #[test]
    fn history_table() {
        let table: Vec<(&str, Vec<Switch>, Action)> = vec![
            ("a", vec![], Action::Pause),
            ("a", vec![switch(1, "b"), switch(2, "a")], Action::Pause),
            // Leader two switchovers ago: must not pause.
            ("a", vec![switch(1, "a"), switch(2, "b")], Action::Skip),
            (
                "a",
                vec![
                    switch(2, "a"),
                    switch(3, "b"),
                    switch(4, "a"),
                    switch(5, "b"),
                ],
                Action::Skip,
            ),
            // Rows out of order: the newest timeline counts, not the last row.
            ("a", vec![switch(3, "a"), switch(2, "b")], Action::Pause),
            ("a", vec![switch(1, "")], Action::Skip),
            ("db.1", vec![switch(1, "dbx1")], Action::Skip),
        ];
        for (me, history, expected) in table {
            assert_eq!(
                decide_from_history(me, None, &history).action,
                expected,
                "{me} {history:?}"
            );
        }
    }

    #[test]
    fn resume_table() {
        let cb = |action: &str, role: &str| Callback {
            action: action.into(),
            role: role.into(),
            scope: "demo".into(),
        };
        let after = |p: &ResumePlan| matches!(p, ResumePlan::AfterPromotion(_));
        let now = |p: &ResumePlan| matches!(p, ResumePlan::Now(_));
        let nothing = |p: &ResumePlan| matches!(p, ResumePlan::Nothing(_));
        type Check = fn(&ResumePlan) -> bool;
        let table: Vec<(Callback, Check)> = vec![
            (cb("on_role_change", "primary"), after),
            (cb("on_role_change", "master"), after),
            (cb("on_start", "primary"), after),
            (cb("on_restart", "master"), after),
            (cb("on_role_change", "standby_leader"), now),
            (cb("on_role_change", "replica"), nothing),
            (cb("on_stop", "primary"), nothing),
            (cb("on_reload", "primary"), nothing),
            (cb("on_role_change", "Primary"), nothing),
            (cb("on_role_change", "boss"), nothing),
        ];
        for (callback, check) in table {
            assert!(check(&plan_resume(Some(&callback))), "{callback:?}");
        }
        assert!(after(&plan_resume(None)));
        let ResumePlan::Nothing(reason) = plan_resume(Some(&cb("on_role_change", "boss"))) else {
            unreachable!()
        };
        assert!(reason.contains("unknown role \"boss\""), "{reason}");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::patronictl::Role;
    use proptest::prelude::*;

    fn role(i: usize) -> Role {
        [
            Role::Leader,
            Role::StandbyLeader,
            Role::SyncStandby,
            Role::QuorumStandby,
            Role::Replica,
        ][i % 5]
    }

    proptest! {
        /// While another member holds the leader key, this member never pauses.
        #[test]
        fn never_pause_while_another_member_leads(
            others in proptest::collection::vec(("[a-z]{1,4}", 0usize..5), 0..5),
            my_role in 2usize..5,
        ) {
            let mut list = vec![Member { name: "me".into(), role: role(my_role), state: String::new(), group: None },
                                Member { name: "boss".into(), role: Role::Leader, state: String::new(), group: None }];
            list.extend(others.into_iter().filter(|(n, _)| n != "me").map(|(n, r)| Member { name: n, role: role(r), state: String::new(), group: None }));
            let verdict = decide_from_list("me", &list).unwrap();
            let skipped = matches!(verdict, ListVerdict::Decided(Decision { action: Action::Skip, .. }));
            prop_assert!(skipped, "{:?}", verdict);
        }

        /// Only the newest timeline's leader pauses, whatever older rows say.
        #[test]
        fn only_the_newest_timeline_counts(
            leaders in proptest::collection::vec(prop_oneof!["me", "other", "third"], 1..8),
        ) {
            let history: Vec<Switch> = leaders.iter().enumerate()
                .map(|(i, l)| Switch { timeline: i as u64 + 1, new_leader: l.clone(), group: None })
                .collect();
            let expected = if leaders.last().unwrap() == "me" { Action::Pause } else { Action::Skip };
            prop_assert_eq!(decide_from_history("me", None, &history).action, expected);
        }
    }
}
