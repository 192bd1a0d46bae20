//! The parser and the decision over real `patronictl -f tsv` output captured from Patroni
//! 4.1.5, 3.3.11 and 3.0.4 (see tests/fixtures/README.md), plus a synthetic Citus layout.

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
            let group = members
                .iter()
                .find(|m| m.name == member)
                .and_then(|m| m.group.clone());
            let switches = patronictl::parse_history(&fixture(history)).unwrap();
            decision::decide_from_history(member, group.as_deref(), &switches).action
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

#[test]
fn citus_groups_each_have_their_own_leader() {
    for list in [
        "synthetic/list-citus-groups.tsv",
        "synthetic/list-citus-groups-patroni3.tsv",
    ] {
        let history = "patroni4/history-bootstrap.tsv";
        for (member, expected) in [
            ("coord3", Action::Pause),
            ("coord1", Action::Skip),
            ("work1-2", Action::Pause),
            ("work2-1", Action::Pause),
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
