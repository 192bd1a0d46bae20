//! The two decisions the hooks make, as pure functions over data.
//!
//! Pausing on the wrong member is worse than not pausing: a replica that pauses PgBouncer
//! while the primary keeps running stalls every client for nothing. So `before-stop` pauses
//! only when the view says this member is the one clients are routed to.

use serde::Serialize;

use crate::patronictl::{Member, Role, Switch};

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
    /// No member of this member's group holds the leader key: only the history can tell.
    NeedHistory,
}

/// The Citus group of the coordinator (`CITUS_COORDINATOR_GROUP_ID` in Patroni).
const CITUS_COORDINATOR_GROUP: &str = "0";

/// Patroni's `state` of a replica whose Postgres is in recovery (`replication_state`, which
/// Patroni publishes only for a Postgres that is not a primary).
fn in_recovery(state: &str) -> bool {
    matches!(state, "streaming" | "in archive recovery")
}

/// Patroni's states of a Postgres that may be up and serving: every other state (bootstrap,
/// `creating replica`, `starting`, `stopped`, `crashed`, ...) is one no client is routed to.
/// Empty: the view did not say.
fn may_serve(state: &str) -> bool {
    matches!(
        state,
        "" | "running" | "stopping" | "restarting" | "stop failed"
    ) || state.starts_with("restart failed")
}

/// Decides from the member list; history is read only when the list cannot tell.
///
/// Patroni's routing (`GET /primary`, `/leader`, Kubernetes endpoints) follows the leader
/// key, and Patroni still holds it while `before_stop` runs during a switchover, restart or
/// shutdown, so the outgoing leader sees itself as `Leader` (or `Standby Leader`), whatever
/// its state. Every case is in docs/decisions.md.
pub fn decide_from_list(member: &str, list: &[Member]) -> Result<ListVerdict, String> {
    let me = list.iter().find(|m| m.name == member).ok_or_else(|| {
        let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
        format!(
            "member {member:?} is not in the cluster view (members: {}): set --member or PATRONI_NAME to this member's Patroni name",
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        )
    })?;
    let skip = |reason: String| Ok(ListVerdict::Decided(Decision::new(Action::Skip, reason)));
    // Citus: clients enter through the coordinator (group 0); during a worker group's
    // switchover Patroni itself holds the coordinator's distributed queries to that group
    // (`before_demote` ... `after_promote` in patroni/postgresql/mpp/citus.py). Pausing the
    // PgBouncers in front of the coordinator would stall every client for nothing.
    if let Some(group) = me
        .group
        .as_deref()
        .filter(|g| *g != CITUS_COORDINATOR_GROUP)
    {
        return skip(format!(
            "{member} is in Citus worker group {group}: clients go through the coordinator (group 0), which Patroni itself holds during a worker switchover"
        ));
    }
    if me.role.is_leader() {
        return Ok(ListVerdict::Decided(Decision::new(
            Action::Pause,
            format!(
                "{member} holds the leader key ({:?}, {}) and is stopping",
                me.role,
                if me.state.is_empty() {
                    "state unknown"
                } else {
                    &me.state
                }
            ),
        )));
    }
    // With Citus every group has its own leader; only this member's group matters.
    let other_leader = list
        .iter()
        .find(|m| m.name != member && m.group == me.group && m.role.is_leader());
    if let Some(leader) = other_leader {
        return skip(format!(
            "{member} is a {:?}; the leader is {}",
            me.role, leader.name
        ));
    }
    if matches!(me.role, Role::SyncStandby | Role::QuorumStandby) {
        return skip(format!(
            "{member} is a {:?} (a replica named in the sync key) and no member holds the leader key",
            me.role
        ));
    }
    if in_recovery(&me.state) {
        return skip(format!(
            "no member holds the leader key and {member}'s Postgres is in recovery ({})",
            me.state
        ));
    }
    if !may_serve(&me.state) {
        return skip(format!(
            "no member holds the leader key and {member}'s Postgres is {:?}, a state no client is routed to",
            me.state
        ));
    }
    Ok(ListVerdict::NeedHistory)
}

/// Decides when no member holds the leader key (and this member's Postgres may be serving):
/// only the newest timeline's leader may pause.
///
/// An older row naming this member must not count: a replica that led two switchovers ago
/// would otherwise pause PgBouncer every time it restarts. An empty history (the first
/// timeline, a standby cluster, a custom bootstrap) names no one: then this member pauses only
/// if every other member of its group shows a Postgres in recovery, so it must be the primary.
pub fn decide_from_history(member: &str, list: &[Member], history: &[Switch]) -> Decision {
    let group = list
        .iter()
        .find(|m| m.name == member)
        .and_then(|m| m.group.as_deref());
    let newest = history
        .iter()
        .filter(|s| s.group.as_deref() == group || s.group.is_none() || group.is_none())
        .max_by_key(|s| s.timeline);
    match newest {
        None => {
            let unsure: Vec<&str> = list
                .iter()
                .filter(|m| m.name != member && m.group.as_deref() == group)
                .filter(|m| !in_recovery(&m.state))
                .map(|m| m.name.as_str())
                .collect();
            if unsure.is_empty() {
                Decision::new(
                    Action::Pause,
                    format!("no member holds the leader key and the history is empty, but every other member is in recovery: {member} is the primary"),
                )
            } else {
                Decision::new(
                    Action::Skip,
                    format!(
                        "no member holds the leader key and the history is empty: the view cannot tell whether {member} or {} is the primary, and a replica must never pause",
                        unsure.join(", ")
                    ),
                )
            }
        }
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

    fn member_in(name: &str, role: Role, state: &str) -> Member {
        Member {
            name: name.into(),
            role,
            state: state.into(),
            group: None,
        }
    }

    fn grouped(name: &str, role: Role, group: &str) -> Member {
        Member {
            group: Some(group.into()),
            ..member(name, role)
        }
    }

    /// Decides as before-stop does: the list, then the history if the list cannot tell.
    fn decide(me: &str, list: &[Member], history: &[Switch]) -> Action {
        match decide_from_list(me, list).unwrap() {
            ListVerdict::Decided(d) => d.action,
            ListVerdict::NeedHistory => decide_from_history(me, list, history).action,
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

    /// Every state Patroni can show, decided with Patroni's semantics (docs/decisions.md).
    /// Rows marked "was" decided otherwise before issue 10.
    #[test]
    fn patroni_states_table() {
        let none: &[Switch] = &[];
        let mine = [switch(1, "b"), switch(2, "a")];
        let theirs = [switch(1, "a"), switch(2, "b")];
        // (case, this member, list, history, decision)
        type Case<'a> = (&'a str, &'a str, Vec<Member>, &'a [Switch], Action);
        let table: Vec<Case> = vec![
            // The leader-key holder pauses whatever its state: Patroni sets `stopping`
            // just before it runs before_stop, and a restart shows `restarting`.
            (
                "leader stopping",
                "a",
                vec![
                    member_in("a", Leader, "stopping"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Pause,
            ),
            (
                "leader restarting",
                "a",
                vec![
                    member_in("a", Leader, "restarting"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Pause,
            ),
            (
                "standby leader",
                "a",
                vec![
                    member_in("a", StandbyLeader, "streaming"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Pause,
            ),
            // Replicas never pause while someone holds the key, whatever their state.
            (
                "replica stopping",
                "b",
                vec![
                    member_in("a", Leader, "running"),
                    member_in("b", Replica, "stopping"),
                ],
                &mine,
                Action::Skip,
            ),
            (
                "replica of a standby cluster",
                "b",
                vec![
                    member_in("a", StandbyLeader, "in archive recovery"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Skip,
            ),
            // An unknown role (a newer Patroni) is never taken for the leader, and does not
            // stop the others from being read.
            (
                "unknown role, leader elsewhere",
                "b",
                vec![member("a", Leader), member("b", Unknown)],
                none,
                Action::Skip,
            ),
            (
                "unknown role of another member",
                "a",
                vec![member("a", Leader), member("b", Unknown)],
                none,
                Action::Pause,
            ),
            (
                "unknown role, no key, newest timeline mine",
                "a",
                vec![
                    member_in("a", Unknown, "running"),
                    member_in("b", Replica, "streaming"),
                ],
                &mine,
                Action::Pause,
            ),
            // No key: Patroni routes no client anywhere; only a member that may be the
            // primary can pause.
            // was Pause: a replica of a timeline-1 cluster while no one holds the key
            (
                "no key, TL1, streaming replica",
                "b",
                vec![
                    member_in("a", Replica, "running"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Skip,
            ),
            // was Pause: standby cluster (Patroni writes no history there), its members in recovery
            (
                "no key, standby cluster, archive recovery",
                "a",
                vec![
                    member_in("a", Replica, "in archive recovery"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Skip,
            ),
            (
                "no key, standby cluster, streaming",
                "b",
                vec![
                    member_in("a", Replica, "streaming"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Skip,
            ),
            // was Pause: a custom bootstrap that fails stops a Postgres no client ever reached
            (
                "no key, custom bootstrap",
                "a",
                vec![member_in("a", Replica, "running custom bootstrap script")],
                none,
                Action::Skip,
            ),
            (
                "no key, starting after custom bootstrap",
                "a",
                vec![member_in("a", Replica, "starting after custom bootstrap")],
                none,
                Action::Skip,
            ),
            (
                "no key, initdb",
                "a",
                vec![member_in("a", Replica, "initializing new cluster")],
                none,
                Action::Skip,
            ),
            (
                "no key, creating replica",
                "b",
                vec![
                    member_in("a", Replica, "running"),
                    member_in("b", Replica, "creating replica"),
                ],
                none,
                Action::Skip,
            ),
            (
                "no key, crashed",
                "a",
                vec![
                    member_in("a", Replica, "crashed"),
                    member_in("b", Replica, "streaming"),
                ],
                &mine,
                Action::Skip,
            ),
            // was Pause: the view cannot tell a disconnected replica from the primary
            (
                "no key, TL1, both running",
                "b",
                vec![
                    member_in("a", Replica, "running"),
                    member_in("b", Replica, "running"),
                ],
                none,
                Action::Skip,
            ),
            (
                "no key, TL1, cluster shutdown after the leader stopped",
                "b",
                vec![
                    member_in("a", Replica, "stopped"),
                    member_in("b", Replica, "running"),
                ],
                none,
                Action::Skip,
            ),
            // still Pause: every other member is in recovery, so this one is the primary
            (
                "no key, TL1, the others streaming",
                "a",
                vec![
                    member_in("a", Replica, "running"),
                    member_in("b", Replica, "streaming"),
                    member_in("c", Replica, "in archive recovery"),
                ],
                none,
                Action::Pause,
            ),
            (
                "no key, TL1, stopping, the other streaming",
                "a",
                vec![
                    member_in("a", Replica, "stopping"),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Pause,
            ),
            (
                "no key, single member",
                "a",
                vec![member_in("a", Replica, "running")],
                none,
                Action::Pause,
            ),
            (
                "no key, state not shown (REST)",
                "a",
                vec![
                    member_in("a", Replica, ""),
                    member_in("b", Replica, "streaming"),
                ],
                none,
                Action::Pause,
            ),
            // History decides when it names someone
            (
                "no key, newest timeline mine",
                "a",
                vec![
                    member_in("a", Replica, "running"),
                    member_in("b", Replica, "running"),
                ],
                &mine,
                Action::Pause,
            ),
            (
                "no key, newest timeline theirs",
                "a",
                vec![
                    member_in("a", Replica, "running"),
                    member_in("b", Replica, "streaming"),
                ],
                &theirs,
                Action::Skip,
            ),
            (
                "no key, newest timeline mine but in recovery now",
                "a",
                vec![
                    member_in("a", Replica, "streaming"),
                    member_in("b", Replica, "running"),
                ],
                &mine,
                Action::Skip,
            ),
            (
                "no key, sync standby",
                "a",
                vec![
                    member_in("a", SyncStandby, "running"),
                    member_in("b", Replica, "streaming"),
                ],
                &mine,
                Action::Skip,
            ),
            (
                "no key, quorum standby",
                "a",
                vec![member_in("a", QuorumStandby, "running")],
                none,
                Action::Skip,
            ),
            // Citus: the coordinator's leader pauses; a worker group's leader does not (was Pause)
            (
                "citus coordinator leader",
                "c1",
                vec![
                    grouped("c1", Leader, "0"),
                    grouped("c2", Replica, "0"),
                    grouped("w1", Leader, "1"),
                ],
                none,
                Action::Pause,
            ),
            (
                "citus worker leader",
                "w1",
                vec![
                    grouped("c1", Leader, "0"),
                    grouped("w1", Leader, "1"),
                    grouped("w2", Replica, "1"),
                ],
                none,
                Action::Skip,
            ),
            (
                "citus worker replica",
                "w2",
                vec![
                    grouped("c1", Leader, "0"),
                    grouped("w1", Leader, "1"),
                    grouped("w2", Replica, "1"),
                ],
                none,
                Action::Skip,
            ),
            (
                "citus worker, no key in its group",
                "w1",
                vec![grouped("c1", Leader, "0"), grouped("w1", Replica, "1")],
                &mine,
                Action::Skip,
            ),
            (
                "citus coordinator replica",
                "c2",
                vec![grouped("c1", Leader, "0"), grouped("c2", Replica, "0")],
                none,
                Action::Skip,
            ),
        ];
        for (case, me, list, history, expected) in table {
            assert_eq!(
                decide(me, &list, history),
                expected,
                "{case}: {me} in {list:?}, history {history:?}"
            );
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
            // the other member is in recovery, so an empty history names `me`
            let list = [
                member_in(me, Replica, "running"),
                member_in("z", Replica, "streaming"),
            ];
            assert_eq!(
                decide_from_history(me, &list, &history).action,
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

        /// A member whose Postgres is in recovery never pauses, whoever holds the key and
        /// whatever the history says; the leader-key holder always pauses (outside a Citus
        /// worker group).
        #[test]
        fn replicas_never_pause_and_the_leader_always_does(
            others in proptest::collection::vec(("[a-z]{1,4}", 0usize..6, 0usize..6), 0..5),
            my_role in 0usize..6,
            my_state in 0usize..6,
            history in proptest::collection::vec(prop_oneof!["me", "other"], 0..4),
        ) {
            const STATES: [&str; 6] = ["streaming", "in archive recovery", "running", "stopping", "stopped", ""];
            let role6 = |i: usize| if i == 5 { Role::Unknown } else { role(i) };
            let mut list = vec![Member { name: "me".into(), role: role6(my_role), state: STATES[my_state].into(), group: None }];
            list.extend(others.into_iter().filter(|(n, _, _)| n != "me").map(|(n, r, st)| Member { name: n, role: role6(r), state: STATES[st].into(), group: None }));
            let history: Vec<Switch> = history.iter().enumerate()
                .map(|(i, l)| Switch { timeline: i as u64 + 1, new_leader: l.clone(), group: None })
                .collect();
            let action = match decide_from_list("me", &list).unwrap() {
                ListVerdict::Decided(d) => d.action,
                ListVerdict::NeedHistory => decide_from_history("me", &list, &history).action,
            };
            if list[0].role.is_leader() {
                prop_assert_eq!(action, Action::Pause);
            } else if my_state < 2 {
                prop_assert_eq!(action, Action::Skip);
            }
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
            prop_assert_eq!(decide_from_history("me", &[], &history).action, expected);
        }
    }
}
