use super::*;

fn id(started: &str) -> Option<Identity> {
    Some(Identity {
        system_identifier: "7".into(),
        started: started.into(),
        in_recovery: false,
    })
}

fn paused(on: bool) -> Option<State> {
    Some(State {
        paused: on,
        suspended: false,
    })
}

fn hooks(ids: &[&str]) -> Option<Owner> {
    Some(Owner::Hooks(ids.iter().map(|s| s.to_string()).collect()))
}

/// A look: state, owner, the primary sampled now, the last one sampled before.
fn look(
    state: Option<State>,
    owner: Option<Owner>,
    primary: Option<Identity>,
    last: Option<Identity>,
) -> Look {
    Look {
        state,
        owner,
        primary,
        last_primary: last,
    }
}

const MAX: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn a_hooks_pause_ends_once_the_route_reaches_a_new_primary_not_before() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut m = Memory::default();
    // (look, at second, verdict)
    let table = [
        (look(paused(false), None, id("A"), None), 0, Verdict::Wait),
        // Paused by the hooks while A drains: A still answers, so wait.
        (
            look(paused(true), hooks(&["m1@1"]), id("A"), id("A")),
            1,
            Verdict::Wait,
        ),
        // A gone, nothing writable yet.
        (
            look(paused(true), hooks(&["m1@1"]), None, id("A")),
            2,
            Verdict::Wait,
        ),
        // B writable: RESUME.
        (
            look(paused(true), hooks(&["m1@1"]), id("B"), id("A")),
            3,
            Verdict::NewPrimary,
        ),
    ];
    for (i, (l, s, want)) in table.into_iter().enumerate() {
        assert_eq!(judge(&mut m, &l, at(s), MAX), want, "row {i}");
    }
    assert_eq!(m.pause.as_ref().unwrap().before, id("A"));
    // Resumed: the memory forgets the pause.
    judge(
        &mut m,
        &look(paused(false), None, id("B"), id("B")),
        at(4),
        MAX,
    );
    assert_eq!(m.pause, None);
}

#[tokio::test(start_paused = true)]
async fn somebody_elses_pause_is_never_ended_and_a_hold_stops_the_clock() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    // A DBA's pause (no mark), through a switchover and long past --max-pause.
    let mut m = Memory::default();
    assert_eq!(
        judge(
            &mut m,
            &look(paused(true), Some(Owner::Other), id("A"), id("A")),
            at(0),
            MAX
        ),
        Verdict::NotOurs(Owner::Other)
    );
    for s in [1, 30, 61, 200, 1000] {
        let l = look(paused(true), Some(Owner::Other), id("B"), id("A"));
        assert_eq!(judge(&mut m, &l, at(s), MAX), Verdict::Wait, "at {s}");
    }
    // Even if a hooks' mark shows up later, a pause first seen unmarked stays somebody else's.
    let l = look(paused(true), hooks(&["m1@1"]), id("B"), id("B"));
    assert_eq!(judge(&mut m, &l, at(1001), MAX), Verdict::Wait);

    // A hooks' pause that an operator holds: nothing ends it while the hold lasts.
    let mut m = Memory::default();
    judge(
        &mut m,
        &look(paused(true), hooks(&["m1@1"]), id("A"), id("A")),
        at(0),
        MAX,
    );
    for s in [5, 61, 500] {
        let l = look(
            paused(true),
            Some(Owner::Held(vec!["m1@1".into()])),
            id("B"),
            id("A"),
        );
        assert_eq!(judge(&mut m, &l, at(s), MAX), Verdict::Wait, "held at {s}");
    }
    // The hold ends: the hooks' rules apply again (a new primary, long past max-pause).
    let l = look(paused(true), hooks(&["m1@1"]), id("B"), id("B"));
    assert_eq!(judge(&mut m, &l, at(501), MAX), Verdict::NewPrimary);

    // A hooks' pause that began under a hold is the hooks' once the hold ends.
    let mut m = Memory::default();
    let held = Owner::Held(vec!["m1@1".into()]);
    let l = look(paused(true), Some(held.clone()), id("A"), id("A"));
    assert_eq!(judge(&mut m, &l, at(0), MAX), Verdict::NotOurs(held));
    let l = look(paused(true), hooks(&["m1@1"]), id("A"), id("A"));
    assert_eq!(judge(&mut m, &l, at(61), MAX), Verdict::TooLong);
}

#[tokio::test(start_paused = true)]
async fn back_to_back_switchovers_judge_each_pause_against_its_own_primary() {
    let t0 = Instant::now();
    let ms = |v: u64| t0 + Duration::from_millis(v);
    let mut m = Memory::default();
    // A→B: paused at 0 while A drains; B writable at 1500: RESUME.
    judge(
        &mut m,
        &look(paused(true), hooks(&["m1@1"]), id("A"), id("A")),
        ms(0),
        MAX,
    );
    let l = look(paused(true), hooks(&["m1@1"]), id("B"), id("A"));
    assert_eq!(judge(&mut m, &l, ms(1500), MAX), Verdict::NewPrimary);
    judge(
        &mut m,
        &look(paused(false), None, id("B"), id("B")),
        ms(1750),
        MAX,
    );
    // B→A 1 s later: this pause began with B draining, and B still answers: wait.
    let l = look(paused(true), hooks(&["m2@2"]), id("B"), id("B"));
    assert_eq!(judge(&mut m, &l, ms(2750), MAX), Verdict::Wait);
    assert_eq!(m.pause.as_ref().unwrap().before, id("B"));
    let l = look(paused(true), hooks(&["m2@2"]), id("B"), id("B"));
    assert_eq!(judge(&mut m, &l, ms(3000), MAX), Verdict::Wait);
    // A (restarted, a new postmaster) writable: RESUME.
    let l = look(paused(true), hooks(&["m2@2"]), id("A2"), id("B"));
    assert_eq!(judge(&mut m, &l, ms(4000), MAX), Verdict::NewPrimary);

    // A RESUME and a new PAUSE between two looks: the ids changed, so it is a new pause
    // with its own clock and its own primary (the one the route reaches now).
    let mut m = Memory::default();
    judge(
        &mut m,
        &look(paused(true), hooks(&["m1@1"]), id("A"), id("A")),
        ms(0),
        MAX,
    );
    let l = look(paused(true), hooks(&["m2@2"]), id("B"), id("B"));
    assert_eq!(judge(&mut m, &l, ms(59_900), MAX), Verdict::Wait);
    assert_eq!(m.pause.as_ref().unwrap().since, ms(59_900));
    assert_eq!(m.pause.as_ref().unwrap().before, id("B"));
    let l = look(paused(true), hooks(&["m2@2"]), id("B"), id("B"));
    assert_eq!(
        judge(&mut m, &l, ms(61_000), MAX),
        Verdict::Wait,
        "not the first pause's clock"
    );
    // Ids that overlap (a second before-stop joined the pause) are the same pause.
    let l = look(paused(true), hooks(&["m2@2", "m3@3"]), id("B"), id("B"));
    assert_eq!(judge(&mut m, &l, ms(119_900), MAX), Verdict::TooLong);
}

#[tokio::test(start_paused = true)]
async fn a_pause_is_recorded_only_once_its_owner_is_known_and_resumes_back_off() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut m = Memory::default();
    // SHOW CLIENTS did not answer: nothing recorded, no clock started.
    assert_eq!(
        judge(
            &mut m,
            &look(paused(true), None, id("A"), id("A")),
            at(0),
            MAX
        ),
        Verdict::Wait
    );
    assert_eq!(m.pause, None);
    judge(
        &mut m,
        &look(paused(true), hooks(&["x"]), None, id("A")),
        at(10),
        MAX,
    );
    assert_eq!(m.pause.as_ref().unwrap().since, at(10));
    let l = look(paused(true), hooks(&["x"]), id("A"), id("A"));
    assert_eq!(judge(&mut m, &l, at(70), MAX), Verdict::TooLong);
    // The RESUME failed: wait 250 ms, then 500 ms, ... before the next try.
    failed_resume(&mut m, at(70));
    assert_eq!(judge(&mut m, &l, at(70), MAX), Verdict::Wait);
    assert_eq!(
        judge(&mut m, &l, at(70) + Duration::from_millis(250), MAX),
        Verdict::TooLong
    );
    failed_resume(&mut m, at(71));
    assert_eq!(
        judge(&mut m, &l, at(71) + Duration::from_millis(499), MAX),
        Verdict::Wait
    );
    assert_eq!(
        judge(&mut m, &l, at(71) + Duration::from_millis(500), MAX),
        Verdict::TooLong
    );
    for _ in 0..10 {
        failed_resume(&mut m, at(80));
    }
    assert_eq!(
        m.pause.as_ref().unwrap().next_try,
        Some(at(82)),
        "at most 2 s"
    );
}

#[tokio::test(start_paused = true)]
async fn without_show_state_only_marked_pauses_are_seen() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut m = Memory::default();
    // PgBouncer < 1.19, no mark: nothing is known, nothing done, however long.
    for s in [0, 100, 1000] {
        let l = look(None, Some(Owner::Other), id("B"), id("A"));
        assert_eq!(judge(&mut m, &l, at(s), MAX), Verdict::Wait);
        assert_eq!(m.pause, None);
    }
    // A hooks' mark: a hooks' pause, ended when the route reaches a new primary.
    judge(
        &mut m,
        &look(None, hooks(&["m1@1"]), id("A"), id("A")),
        at(0),
        MAX,
    );
    let l = look(None, hooks(&["m1@1"]), id("B"), id("A"));
    assert_eq!(judge(&mut m, &l, at(2), MAX), Verdict::NewPrimary);
    // Marks gone: over.
    judge(
        &mut m,
        &look(None, Some(Owner::Other), id("B"), id("B")),
        at(3),
        MAX,
    );
    assert_eq!(m.pause, None);
}

#[tokio::test]
async fn re_resolved_targets_keep_what_is_known_of_those_still_there() {
    let resolve = |hosts: &'static str| async move {
        crate::pgbouncer::Url::parse(&format!("postgresql://a@{hosts}/pgbouncer"))
            .unwrap()
            .resolve(None, Duration::from_secs(1))
            .await
            .unwrap()
    };
    let mut watched = Vec::new();
    merge_targets(&mut watched, resolve("10.0.0.1:6432,10.0.0.2:6432").await);
    assert_eq!(watched.len(), 2);
    // What the watchdog knows of 10.0.0.2: a hooks' pause, and no SHOW STATE there.
    watched[1].no_show_state = true;
    watched[1].memory.pause = Some(Pause {
        since: Instant::now(),
        since_wall: SystemTime::now(),
        owner: Owner::Hooks(vec!["m1@1".into()]),
        before: None,
        next_try: None,
        tries: 0,
    });
    // The name now lists 10.0.0.2 and a new pod, 10.0.0.3; 10.0.0.1 is gone.
    merge_targets(&mut watched, resolve("10.0.0.2:6432,10.0.0.3:6432").await);
    let shown: Vec<&str> = watched.iter().map(|w| w.target.shown.as_str()).collect();
    assert_eq!(
        shown,
        [
            "postgresql://a@10.0.0.2:6432/pgbouncer",
            "postgresql://a@10.0.0.3:6432/pgbouncer"
        ]
    );
    assert!(watched[0].no_show_state && watched[0].memory.pause.is_some());
    assert!(!watched[1].no_show_state && watched[1].memory.pause.is_none());
}
