//! The parser and the decision over real `patronictl -f tsv` and `-f json` output captured
//! from Patroni 4.1.5, 3.3.11 and 3.0.4 (see tests/fixtures/README.md), plus a synthetic
//! Citus layout.

use hooks::decision::{self, Action, ListVerdict};
use hooks::patronictl::{self, Role};

fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn decide(member: &str, list: &str, history: &str) -> Action {
    let members = patronictl::parse_list(&fixture(list)).unwrap();
    match decision::decide_from_list(member, &members).unwrap() {
        ListVerdict::Decided(d) => d.action,
        ListVerdict::NeedHistory => {
            let switches = patronictl::parse_history(&fixture(history)).unwrap();
            decision::decide_from_history(member, &members, &switches).action
        }
    }
}

#[test]
fn real_views_from_every_version() {
    for version in ["patroni4", "patroni3", "patroni304"] {
        let table = [
            (
                "m1",
                "list-bootstrap.tsv",
                "history-bootstrap.tsv",
                Action::Pause,
            ),
            (
                "m2",
                "list-bootstrap.tsv",
                "history-bootstrap.tsv",
                Action::Skip,
            ),
            (
                "m2",
                "list-after-1-switchover.tsv",
                "history-after-1-switchover.tsv",
                Action::Pause,
            ),
            (
                "m1",
                "list-after-1-switchover.tsv",
                "history-after-1-switchover.tsv",
                Action::Skip,
            ),
            (
                "m1",
                "list-after-2-switchovers.tsv",
                "history-after-2-switchovers.tsv",
                Action::Pause,
            ),
            // m2 led timeline 2 but is a replica now: its restart must not pause.
            (
                "m2",
                "list-after-2-switchovers.tsv",
                "history-after-2-switchovers.tsv",
                Action::Skip,
            ),
            (
                "m1",
                "list-member-stopped.tsv",
                "history-after-2-switchovers.tsv",
                Action::Pause,
            ),
            (
                "m2",
                "list-member-stopped.tsv",
                "history-after-2-switchovers.tsv",
                Action::Skip,
            ),
            (
                "db.1",
                "list-dotted-member.tsv",
                "history-after-2-switchovers.tsv",
                Action::Skip,
            ),
        ];
        for (member, list, history, expected) in table {
            let got = decide(
                member,
                &format!("{version}/{list}"),
                &format!("{version}/{history}"),
            );
            assert_eq!(got, expected, "{version}: {member} with {list}");
        }
    }
}

#[test]
fn every_version_parses_to_the_same_members() {
    for version in ["patroni4", "patroni3", "patroni304"] {
        let members =
            patronictl::parse_list(&fixture(&format!("{version}/list-after-2-switchovers.tsv")))
                .unwrap();
        let seen: Vec<(&str, Role)> = members.iter().map(|m| (m.name.as_str(), m.role)).collect();
        assert_eq!(
            seen,
            [("m1", Role::Leader), ("m2", Role::Replica)],
            "{version}"
        );
        let history = patronictl::parse_history(&fixture(&format!(
            "{version}/history-after-2-switchovers.tsv"
        )))
        .unwrap();
        let leaders: Vec<(u64, &str)> = history
            .iter()
            .map(|s| (s.timeline, s.new_leader.as_str()))
            .collect();
        assert_eq!(leaders, [(1, "m2"), (2, "m1")], "{version}");
        assert!(
            patronictl::parse_history(&fixture(&format!("{version}/history-bootstrap.tsv")))
                .unwrap()
                .is_empty()
        );
    }
}

/// Clients use the coordinator (group 0): only its leader pauses. A worker group's leader
/// does not (Patroni holds the coordinator's queries to that group during its switchover).
#[test]
fn only_the_citus_coordinators_leader_pauses() {
    for list in [
        "synthetic/list-citus-groups.tsv",
        "synthetic/list-citus-groups-patroni3.tsv",
    ] {
        let history = "patroni4/history-bootstrap.tsv";
        for (member, expected) in [
            ("coord3", Action::Pause),
            ("coord1", Action::Skip),
            ("coord2", Action::Skip),
            ("work1-1", Action::Skip),
            ("work1-2", Action::Skip),
            ("work2-1", Action::Skip),
            ("work2-2", Action::Skip),
        ] {
            assert_eq!(
                decide(member, list, history),
                expected,
                "{member} in {list}"
            );
        }
    }
}

/// Issue 10: three parameters pending restart on leader and replica, and tags with a newline
/// and a value longer than YAML's 200 columns, so in `-f tsv` every row spans several lines.
/// `-f tsv` and `-f json` of the same moment read to the same members and decisions.
#[test]
fn pending_restart_and_multi_line_tags() {
    for version in ["patroni4", "patroni3"] {
        for (when, leader, replica) in [("", "m1", "m2"), ("-after-switchover", "m2", "m1")] {
            let list = format!("{version}/list-pending-restart{when}");
            let history = format!("{version}/history-pending-restart{when}");
            let tsv = patronictl::parse_list(&fixture(&format!("{list}.tsv")))
                .unwrap_or_else(|e| panic!("{list}.tsv: {e:#}"));
            let json = patronictl::parse_list(&fixture(&format!("{list}.json")))
                .unwrap_or_else(|e| panic!("{list}.json: {e:#}"));
            assert_eq!(tsv, json, "{list}");
            // members are sorted by name
            let seen: Vec<(&str, Role)> = tsv.iter().map(|m| (m.name.as_str(), m.role)).collect();
            let mut expected = vec![(leader, Role::Leader), (replica, Role::Replica)];
            expected.sort_by_key(|(name, _)| *name);
            assert_eq!(seen, expected, "{list}");
            assert_eq!(
                patronictl::parse_history(&fixture(&format!("{history}.tsv"))).unwrap(),
                patronictl::parse_history(&fixture(&format!("{history}.json"))).unwrap(),
                "{history}"
            );
            for format in ["tsv", "json"] {
                let (l, h) = (format!("{list}.{format}"), format!("{history}.{format}"));
                assert_eq!(decide(leader, &l, &h), Action::Pause, "{leader} in {l}");
                assert_eq!(decide(replica, &l, &h), Action::Skip, "{replica} in {l}");
            }
        }
    }
}

/// One member with a role this program does not know (a newer Patroni) leaves the rest of
/// the view readable: the leader still pauses, the others still skip.
#[test]
fn an_unknown_role_does_not_disable_the_decision() {
    for version in ["patroni4", "patroni3"] {
        for format in ["tsv", "json"] {
            let path = format!("{version}/list-pending-restart.{format}");
            let text = fixture(&path).replace("Replica", "Witness");
            let members = patronictl::parse_list(&text).unwrap_or_else(|e| panic!("{path}: {e:#}"));
            assert_eq!(
                members.iter().find(|m| m.name == "m2").unwrap().role,
                Role::Unknown
            );
            let history = patronictl::parse_history(&fixture(&format!(
                "{version}/history-pending-restart.{format}"
            )))
            .unwrap();
            for (member, expected) in [("m1", Action::Pause), ("m2", Action::Skip)] {
                let action = match decision::decide_from_list(member, &members).unwrap() {
                    ListVerdict::Decided(d) => d.action,
                    ListVerdict::NeedHistory => {
                        decision::decide_from_history(member, &members, &history).action
                    }
                };
                assert_eq!(action, expected, "{member} in {path} with an unknown role");
            }
        }
    }
}
