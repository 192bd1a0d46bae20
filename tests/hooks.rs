//! The two hooks against a real PostgreSQL 15 and real PgBouncers (Debian's 1.18 and a
//! current one), all on 127.0.0.1: what a client sees is the assertion, and what the hooks
//! say is read from their structured events (`--log-format json`), not from their wording.

use pph_support as common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{events, PgBouncer, PgBouncerBuild, Postgres};

const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn leader_view(dir: &std::path::Path, leader: &str) -> PathBuf {
    let path = dir.join(format!("list-{leader}.tsv"));
    std::fs::write(
        &path,
        format!(
            "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\n\
             demo\tm1\t127.0.0.1:5432\t{}\trunning\t1\t\n\
             demo\tm2\t127.0.0.1:5433\t{}\tstreaming\t1\t0\n",
            if leader == "m1" { "Leader" } else { "Replica" },
            if leader == "m2" { "Leader" } else { "Replica" },
        ),
    )
    .unwrap();
    path
}

fn hook(name: &str, args: &[&str], password: &str) -> Command {
    let mut cmd = common::client(common::bin(name));
    cmd.args(args)
        .env("PGBOUNCER_PASSWORD", password)
        .env("HOOKS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    cmd
}

fn run(cmd: Command) -> (Output, String) {
    let out = common::run_with_timeout(cmd, HOOK_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// A hook that may leave its safety net behind (holding stderr): waited for itself only.
fn run_leaving(cmd: Command) -> (Output, String) {
    let out = common::run_leaving(cmd, HOOK_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

fn before_stop(
    view: &std::path::Path,
    pgbouncers: &[&PgBouncer],
    extra: &[&str],
) -> (Output, String) {
    let mut args = vec![
        "--member".to_string(),
        "m1".into(),
        "--list-tsv".into(),
        view.display().to_string(),
    ];
    for pgb in pgbouncers {
        args.push("--pgbouncer".into());
        args.push(pgb.admin_url());
    }
    if !extra.contains(&"--max-pause") {
        // The safety net outlives the hook and keeps stderr open; its own tests cover it.
        args.extend(["--max-pause".to_string(), "0".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_leaving(hook("before-stop", &args, PgBouncer::ADMIN_PASSWORD))
}

fn on_role_change(pg: &Postgres, pgbouncers: &[&PgBouncer], extra: &[&str]) -> Command {
    let mut args = vec!["--postgres".to_string(), pg.url()];
    for pgb in pgbouncers {
        args.push("--pgbouncer".into());
        args.push(pgb.admin_url());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    hook("on-role-change", &args, PgBouncer::ADMIN_PASSWORD)
}

/// A client transaction through PgBouncer that stays open `seconds`, once it is running.
fn hold_transaction(pg: &Postgres, pgb: &PgBouncer, seconds: u32) -> common::BgClient {
    let sleep = format!("pg_sleep({seconds})");
    let client = common::spawn_psql(&pgb.app_url(), &format!("BEGIN; SELECT {sleep}; COMMIT;"));
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{sleep}%' AND state = 'active' AND pid <> pg_backend_pid()"
    );
    common::wait_until(
        "the long transaction to run",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (pg.psql(&running) == "1").then_some(()),
    );
    client
}

fn assert_ok(out: &Output, stderr: &str) {
    assert!(
        out.status.success(),
        "exit {:?}\n{stderr}",
        out.status.code()
    );
}

#[test]
fn pause_holds_the_next_transaction_and_resume_releases_it() {
    for build in PgBouncerBuild::all() {
        let pg = Postgres::start_primary();
        let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
        common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(10));

        let (out, stderr) = before_stop(&leader_view(&pgb.dir, "m1"), &[&pgb], &[]);
        assert_ok(&out, &stderr);
        assert_eq!(events::results(&stderr, "PAUSE"), ["paused"], "{stderr}");
        assert_eq!(events::summary(&stderr)["outcome"], "paused", "{stderr}");
        assert!(pgb.is_paused(), "{build:?} not paused after before-stop");

        let mut held = common::spawn_psql(&pgb.app_url(), "SELECT 42");
        assert!(
            held.wait_timeout(Duration::from_secs(1)).is_none(),
            "{build:?}: a transaction went through a paused PgBouncer"
        );

        let (out, stderr) = run(on_role_change(
            &pg,
            &[&pgb],
            &["on_role_change", "primary", "demo"],
        ));
        assert_ok(&out, &stderr);
        assert_eq!(events::results(&stderr, "RESUME"), ["resumed"], "{stderr}");
        // Verified by SHOW STATE where PgBouncer has it (>= 1.19), else unverified.
        let verified = if pgb.has_show_state() {
            "resumed"
        } else {
            "unverified"
        };
        assert_eq!(events::summary(&stderr)[verified], 1, "{stderr}");
        assert_eq!(held.expect_success(Duration::from_secs(10)), "42");
        assert!(!pgb.is_paused());
    }
}

#[test]
fn pause_and_resume_are_idempotent() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let view = leader_view(&pgb.dir, "m1");
    let (out, stderr) = before_stop(&view, &[&pgb], &[]);
    assert_ok(&out, &stderr);
    let (out, stderr) = before_stop(&view, &[&pgb], &[]);
    assert_ok(&out, &stderr);
    // The first one's net holds the pause's mark: the second joins the hooks' pause.
    assert_eq!(
        events::results(&stderr, "PAUSE"),
        ["already in a hooks' pause"],
        "{stderr}"
    );
    for expected in ["resumed", "not paused"] {
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
        assert_ok(&out, &stderr);
        assert_eq!(events::results(&stderr, "RESUME"), [expected], "{stderr}");
    }
    assert!(!pgb.is_paused());
}

#[test]
fn a_replica_stopping_pauses_nothing() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let (out, stderr) = before_stop(&leader_view(&pgb.dir, "m2"), &[&pgb], &[]);
    assert_ok(&out, &stderr);
    assert_eq!(events::summary(&stderr)["decision"], "Skip", "{stderr}");
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "nothing to pause",
        "{stderr}"
    );
    assert!(!pgb.is_paused());
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(5));
}

#[test]
fn pause_waits_for_an_open_transaction_within_the_bound() {
    for build in PgBouncerBuild::all() {
        let pg = Postgres::start_primary();
        let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
        // A transaction that stays open for 4 s: PAUSE must wait for it, but only 1 s.
        let mut long = hold_transaction(&pg, &pgb, 4);
        let started = Instant::now();
        let (out, stderr) = before_stop(
            &leader_view(&pgb.dir, "m1"),
            &[&pgb],
            &["--pause-timeout", "1s"],
        );
        let took = started.elapsed();
        assert_ok(&out, &stderr);
        assert_eq!(events::summary(&stderr)["draining"], 1, "{stderr}");
        assert!(
            took < Duration::from_secs(4),
            "before-stop waited for the transaction: {took:?}"
        );
        if pgb.has_show_state() {
            // The safety net relies on this: a PAUSE still draining already reads as paused.
            let state = pgb.admin("SHOW STATE").unwrap();
            assert!(state.lines().any(|l| l == "paused|yes"), "{state}");
        }
        // The open transaction still finishes, and PgBouncer is left paused afterwards.
        long.expect_success(Duration::from_secs(10));
        assert!(pgb.is_paused(), "{build:?}: left pausing, must end paused");
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
        assert_ok(&out, &stderr);
        assert!(!pgb.is_paused());
    }
}

#[test]
fn fan_out_to_two_pgbouncers_and_partial_reachability() {
    let pg = Postgres::start_primary();
    let first = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", pg.port);
    let mut second = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let view = leader_view(&first.dir, "m1");
    let (out, stderr) = before_stop(&view, &[&first, &second], &[]);
    assert_ok(&out, &stderr);
    assert!(first.is_paused() && second.is_paused(), "{stderr}");
    assert_eq!(events::summary(&stderr)["paused"], 2, "{stderr}");
    let (out, stderr) = run(on_role_change(&pg, &[&first, &second], &[]));
    assert_ok(&out, &stderr);
    assert!(!first.is_paused() && !second.is_paused(), "{stderr}");

    // One PgBouncer down: the other is still paused and resumed; the down one is named.
    let down_url = second.admin_url();
    second.kill();
    let (out, stderr) = before_stop(&view, &[&first], &["--pgbouncer", &down_url]);
    assert_ok(&out, &stderr);
    assert_eq!(events::summary(&stderr)["failed"], 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", second.port)),
        "{stderr}"
    );
    assert!(first.is_paused());
    let mut cmd = on_role_change(&pg, &[&first], &[]);
    cmd.args(["--pgbouncer", &down_url]);
    let (out, stderr) = run(cmd);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a target that could not be resumed must show: {stderr}"
    );
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "partly resumed",
        "{stderr}"
    );
    assert!(!first.is_paused());
}

#[test]
fn wrong_password_unreachable_and_unresolvable_targets_are_clear_errors() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let view = leader_view(&pgb.dir, "m1");

    let mut args = vec!["--member", "m1", "--list-tsv"];
    let view_arg = view.display().to_string();
    args.push(&view_arg);
    let url = pgb.admin_url();
    let (out, stderr) = run(hook(
        "before-stop",
        &[&args[..], &["--pgbouncer", &url]].concat(),
        "not-the-password",
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("PGBOUNCER_PASSWORD"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password"),
        "password leaked: {stderr}"
    );
    assert!(!pgb.is_paused());

    let closed = format!(
        "postgresql://pgbouncer_admin@127.0.0.1:{}/pgbouncer",
        common::free_port()
    );
    let (out, stderr) = run(hook(
        "before-stop",
        &[&args[..], &["--pgbouncer", &closed]].concat(),
        "x",
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");

    let nowhere = "postgresql://pgbouncer_admin@no-such-host.invalid:6432/pgbouncer";
    let (out, stderr) = run(hook(
        "before-stop",
        &[
            &args[..],
            &["--pgbouncer", nowhere, "--connect-timeout", "3s"],
        ]
        .concat(),
        "x",
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no-such-host.invalid"), "{stderr}");
    assert_eq!(
        events::find(&stderr, &[("level", "ERROR")]).len(),
        1,
        "one error line per target: {stderr}"
    );
}

#[test]
fn on_role_change_waits_for_promotion_before_resuming() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", standby.port);
    let _mark = pgb.hooks_pause("test@1");

    let mut cmd = on_role_change(&standby, &[&pgb], &["on_role_change", "primary", "demo"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // The hook is told "in recovery" and asks again: it saw the standby and kept waiting.
    let first = common::wait_until(
        "on-role-change to ask whether Postgres is in recovery",
        HOOK_TIMEOUT,
        Duration::from_millis(10),
        || Some(last_recovery_poll(&standby)).filter(|t| !t.is_empty()),
    );
    common::wait_until(
        "on-role-change to ask again",
        HOOK_TIMEOUT,
        Duration::from_millis(10),
        || (last_recovery_poll(&standby) != first).then_some(()),
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "on-role-change returned while Postgres was still in recovery"
    );
    assert!(pgb.is_paused(), "resumed before promotion");

    standby.promote();
    let status = common::wait_until(
        "on-role-change to finish",
        Duration::from_secs(30),
        Duration::from_millis(20),
        || child.try_wait().unwrap(),
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "f");
    assert!(!pgb.is_paused(), "{stderr}");
}

/// When another session's last `SELECT pg_is_in_recovery()` on `pg` started, once it has its
/// answer (the session idle); empty before that.
fn last_recovery_poll(pg: &Postgres) -> String {
    pg.psql(
        "SELECT coalesce(max(query_start)::text, '') FROM pg_stat_activity \
         WHERE query = 'SELECT pg_is_in_recovery()' AND state = 'idle' AND pid <> pg_backend_pid()",
    )
}

#[test]
fn a_standby_that_never_promotes_gets_no_resume() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", primary.port);
    let _mark = pgb.hooks_pause("test@1");
    let (out, stderr) = run(on_role_change(
        &standby,
        &[&pgb],
        &[
            "on_role_change",
            "master",
            "demo",
            "--promote-timeout",
            "1s",
        ],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "not resumed",
        "{stderr}"
    );
    // The reason, in words, for the DBA who reads Patroni's log.
    assert!(stderr.contains("did not leave recovery"), "{stderr}");
    assert!(pgb.is_paused());
    pgb.admin("RESUME").unwrap();
}

#[test]
fn standby_leader_resumes_without_waiting_and_replica_does_nothing() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", primary.port);
    let _mark = pgb.hooks_pause("test@1");
    let (out, stderr) = run(on_role_change(
        &standby,
        &[&pgb],
        &["on_role_change", "replica", "demo"],
    ));
    assert_ok(&out, &stderr);
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "nothing to do",
        "{stderr}"
    );
    assert!(pgb.is_paused());
    let (out, stderr) = run(on_role_change(
        &standby,
        &[&pgb],
        &["on_start", "standby_leader", "demo"],
    ));
    assert_ok(&out, &stderr);
    assert!(!pgb.is_paused(), "{stderr}");
}

/// Runs a hook with stderr in a file: detached workers keep writing to it after the hook exits.
fn spawn_logged(mut cmd: Command, log: &std::path::Path) -> std::process::Child {
    let file = std::fs::File::create(log).unwrap();
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file);
    cmd.spawn().unwrap()
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs before-stop as m1 (the leader) with its safety net armed for `max_pause`, against the
/// admin console at `url`, its stderr (and the detached net's, which inherits it) in `log`;
/// returns once before-stop itself has exited.
fn before_stop_with_net(
    pgb: &PgBouncer,
    url: &str,
    max_pause: &str,
    extra: &[&str],
    log: &std::path::Path,
) -> std::process::ExitStatus {
    let view = leader_view(&pgb.dir, "m1").display().to_string();
    let mut args = vec![
        "--member",
        "m1",
        "--list-tsv",
        &view,
        "--pgbouncer",
        url,
        "--max-pause",
        max_pause,
    ];
    args.extend_from_slice(extra);
    let mut child = spawn_logged(hook("before-stop", &args, PgBouncer::ADMIN_PASSWORD), log);
    common::wait_until(
        "before-stop",
        HOOK_TIMEOUT,
        Duration::from_millis(20),
        || child.try_wait().unwrap(),
    )
}

#[test]
fn the_safety_net_resumes_a_forgotten_pause() {
    for build in PgBouncerBuild::all() {
        let pg = Postgres::start_primary();
        let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
        let log = pgb.dir.join("before-stop.log");
        let status = before_stop_with_net(&pgb, &pgb.admin_url(), "2s", &[], &log);
        assert!(status.success(), "{}", read(&log));
        let mut held = common::spawn_psql(&pgb.app_url(), "SELECT 7");
        assert!(
            held.wait_timeout(Duration::from_millis(500)).is_none(),
            "not paused: {}",
            read(&log)
        );
        // Nobody resumes: the detached net must, shortly after 2 s.
        assert_eq!(
            held.expect_success(Duration::from_secs(15)),
            "7",
            "{}",
            read(&log)
        );
        common::wait_until(
            "the safety net's log line",
            Duration::from_secs(5),
            Duration::from_millis(50),
            || {
                events::said(
                    &read(&log),
                    &[("event", "safety-net"), ("action", "resume")],
                )
                .then_some(())
            },
        );
        assert!(!pgb.is_paused());
    }
}

#[test]
fn the_safety_net_never_resumes_a_later_pause() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let log = pgb.dir.join("before-stop.log");
    let status = before_stop_with_net(&pgb, &pgb.admin_url(), "3s", &[], &log);
    assert!(status.success(), "{}", read(&log));
    let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
    assert_ok(&out, &stderr);
    common::wait_until(
        "the net to see the RESUME",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || events::said(&read(&log), &[("event", "safety-net"), ("action", "leave")]).then_some(()),
    );
    // The net leaves: its process ends (long before its 3 s are up).
    let armed = events::last(&read(&log), &[("event", "safety-net"), ("action", "armed")]);
    let net = armed["pid"].as_i64().expect("the net's pid");
    common::wait_until(
        "the safety net's process to end",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (!common::cluster::util::pid_alive(net)).then_some(()),
    );
    // An unrelated pause after that: nothing is left that could touch it.
    pgb.admin("PAUSE").unwrap();
    assert!(
        pgb.is_paused(),
        "the safety net resumed a later pause: {}",
        read(&log)
    );
    assert!(
        !events::said(
            &read(&log),
            &[("event", "safety-net"), ("action", "resume")]
        ),
        "{}",
        read(&log)
    );
    pgb.admin("RESUME").unwrap();
}

#[test]
fn a_callback_killed_mid_wait_still_resumes() {
    use std::os::unix::process::CommandExt;
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", standby.port);
    let _mark = pgb.hooks_pause("test@1");
    let log = pgb.dir.join("on-role-change.log");
    let mut cmd = on_role_change(&standby, &[&pgb], &["on_role_change", "master", "demo"]);
    cmd.process_group(0);
    let mut child = spawn_logged(cmd, &log);
    common::wait_until(
        "the detached worker to start",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || events::said(&read(&log), &[("event", "worker"), ("action", "started")]).then_some(()),
    );
    // What Patroni does when the next callback starts: SIGKILL the callback's whole group.
    common::signal(child.id(), "KILL");
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the callback was not killed");
    assert!(pgb.is_paused(), "resumed before promotion");

    standby.promote();
    common::wait_until(
        "the worker's RESUME",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            events::parse(&read(&log))
                .iter()
                .any(|e| e["event"] == "summary")
                .then_some(())
        },
    );
    assert_eq!(
        events::results(&read(&log), "RESUME"),
        ["resumed"],
        "{}",
        read(&log)
    );
    assert!(!pgb.is_paused(), "{}", read(&log));
    // Its stdout led to the killed callback: writing its verdict there must not panic.
    common::wait_until(
        "the worker to exit",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || (!pgrep(&log_pattern(&standby))).then_some(()),
    );
    assert!(!read(&log).contains("panicked"), "{}", read(&log));
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(10));
}

#[test]
fn resume_while_a_pause_is_still_draining_leaves_nothing_stuck() {
    for build in PgBouncerBuild::all() {
        let pg = Postgres::start_primary();
        let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
        let mut long = hold_transaction(&pg, &pgb, 3);
        // before-stop gives up on the drain after 0.5 s and leaves PgBouncer pausing ...
        let (out, stderr) = before_stop(
            &leader_view(&pgb.dir, "m1"),
            &[&pgb],
            &["--pause-timeout", "500ms"],
        );
        assert_ok(&out, &stderr);
        assert_eq!(
            events::results(&stderr, "PAUSE"),
            ["still draining"],
            "{stderr}"
        );
        // ... and the new primary resumes while the PAUSE is still pending.
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
        assert_ok(&out, &stderr);
        long.expect_success(Duration::from_secs(10));
        common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(5));
        assert!(!pgb.is_paused(), "{build:?}");
        // A later PAUSE/RESUME cycle still works: nothing was left half-paused.
        let (out, stderr) = before_stop(&leader_view(&pgb.dir, "m1"), &[&pgb], &[]);
        assert_ok(&out, &stderr);
        assert_eq!(
            events::results(&stderr, "PAUSE"),
            ["paused"],
            "{build:?}: {stderr}"
        );
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
        assert_ok(&out, &stderr);
        assert!(!pgb.is_paused());
    }
}

#[test]
fn check_reports_without_changing_anything() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let old = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", pg.port);
    let view = leader_view(&pgb.dir, "m1");
    let (out, stderr) = before_stop(&view, &[&pgb, &old], &["--check"]);
    assert_ok(&out, &stderr);
    let said = events::parse(&stderr);
    let any =
        |key: &str, pred: &dyn Fn(&serde_json::Value) -> bool| said.iter().any(|e| pred(&e[key]));
    let starts = |prefix: &'static str| {
        move |v: &serde_json::Value| v.as_str().is_some_and(|v| v.starts_with(prefix))
    };
    assert!(any("version", &starts("PgBouncer 1.24")), "{stderr}");
    assert!(any("version", &starts("PgBouncer 1.18")), "{stderr}");
    assert!(any("pool_mode", &|v| v == "transaction"), "{stderr}");
    assert!(any("show_state", &|v| v == false), "{stderr}");
    assert!(any("role", &|v| v == "Leader"), "{stderr}");
    assert_eq!(events::summary(&stderr)["outcome"], "ready", "{stderr}");
    assert!(!pgb.is_paused() && !old.is_paused());
    let (out, stderr) = run(on_role_change(&pg, &[&pgb], &["--check"]));
    assert_ok(&out, &stderr);
    let said = events::parse(&stderr);
    assert!(said.iter().any(|e| e["role"] == "primary"), "{stderr}");
    // No --upstream, but server_login_retry = 1 (the harness's): said, not warned.
    assert!(
        said.iter().any(|e| e["server_login_retry"] == 1.0),
        "{stderr}"
    );
    assert!(
        !said.iter().any(|e| e["warning"] == "late-route"),
        "{stderr}"
    );
    // A paused PgBouncer, or one that cannot be reached, makes the check fail.
    pgb.admin("PAUSE").unwrap();
    let (out, stderr) = before_stop(&view, &[&pgb], &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(events::summary(&stderr)["outcome"], "not ready", "{stderr}");
    assert!(stderr.contains("paused=true"), "{stderr}");
    assert!(pgb.is_paused(), "--check must not change anything");
    pgb.admin("RESUME").unwrap();
}

/// Whether a process whose command line contains `pattern` still runs. A pgrep that cannot
/// run, or fails (exit 2 or more), is a failure, not a "no".
fn pgrep(pattern: &str) -> bool {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap_or_else(|e| panic!("pgrep (procps, installed by scripts/setup): {e}"));
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("pgrep -f {pattern:?}: {out:?}"),
    }
}

/// Something unique to the hooks started against `pg`: its URL.
fn log_pattern(pg: &Postgres) -> String {
    format!("on-role-change.*{}", pg.port)
}

/// A TCP proxy to `backend` that forwards every connection, except that it cuts one (both
/// ways) `after` the client sent it a query containing `word`.
struct CutProxy {
    port: u16,
}

impl CutProxy {
    fn start(backend: u16, word: &'static str, after: Duration) -> CutProxy {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().take(64) {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    return;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) =
                    (server.try_clone().unwrap(), client.try_clone().unwrap());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = c_read.read(&mut buf) {
                        if n == 0 || s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        if buf[..n].windows(word.len()).any(|w| w == word.as_bytes()) {
                            std::thread::sleep(after);
                            let _ = client.shutdown(Shutdown::Both);
                            let _ = server.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = s_read.read(&mut buf) {
                        if n == 0 || c_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        CutProxy { port }
    }

    fn admin_url(&self) -> String {
        format!(
            "postgresql://{}@127.0.0.1:{}/pgbouncer",
            PgBouncer::ADMIN_USER,
            self.port
        )
    }
}

#[test]
fn a_pause_whose_answer_was_cut_off_still_arms_the_net() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let proxy = CutProxy::start(pgb.port, "PAUSE", Duration::from_millis(300));
    // PAUSE waits for this transaction; the proxy cuts the hook's connection meanwhile.
    let mut long = hold_transaction(&pg, &pgb, 2);
    let log = pgb.dir.join("before-stop-cut.log");
    let json = ["--log-format", "json"];
    let status = before_stop_with_net(&pgb, &proxy.admin_url(), "4s", &json, &log);
    let done = events::summary(&read(&log));
    assert!(status.success(), "{}", read(&log));
    assert_eq!(done["uncertain"], 1, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    long.expect_success(Duration::from_secs(10));
    assert!(
        pgb.is_paused(),
        "the cut PAUSE did land: PgBouncer must be paused"
    );
    // Nobody resumes: the net, armed for a PAUSE that may have landed, must.
    common::wait_until(
        "the safety net's RESUME",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || (!pgb.is_paused()).then_some(()),
    );
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(5));
}

#[test]
fn without_fork_the_callback_resumes_in_its_own_process() {
    // RLIMIT_NPROC counts every process of the user: with user postgres running Postgres and
    // PgBouncer, a limit of 1 makes every fork of the hook fail, as a pids limit would.
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let _mark = pgb.hooks_pause("test@1");
    let mut cmd = common::client("setpriv");
    cmd.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ])
    .args(["prlimit", "--nproc=1:1", "--"])
    .arg(common::bin("on-role-change"))
    // Host names, not literals: a name lookup is where a thread would be needed.
    .args([
        "--postgres",
        &pg.url().replace("127.0.0.1", "localhost"),
        "--pgbouncer",
        &pgb.admin_url().replace("127.0.0.1", "localhost"),
        "--upstream",
        &pg.url().replace("127.0.0.1", "localhost"),
    ])
    .args(["--log-format", "json", "on_role_change", "primary", "demo"])
    .env("PGBOUNCER_PASSWORD", PgBouncer::ADMIN_PASSWORD)
    .current_dir("/");
    let (out, stderr) = run(cmd);
    assert_ok(&out, &stderr);
    let done = events::summary(&stderr);
    assert_eq!(done["outcome"], "resumed", "{done}");
    assert!(
        events::said(&stderr, &[("event", "worker"), ("action", "in-process")]),
        "{stderr}"
    );
    assert!(!pgb.is_paused(), "{stderr}");
}

#[test]
fn a_stale_route_resumes_only_if_this_member_is_still_primary() {
    let mut local = Postgres::start_primary();
    // Another cluster altogether: the route never reaches `local`.
    let elsewhere = Postgres::start_primary();
    let route = SwitchProxy::start(0, elsewhere.port);
    let upstream = format!("postgresql://postgres@127.0.0.1:{}/postgres", route.port);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", local.port);
    let _mark = pgb.hooks_pause("test@1");
    let cmd = on_role_change(
        &local,
        &[&pgb],
        &[
            "--upstream",
            &upstream,
            "--route-timeout",
            "5s",
            "--no-detach",
            "--log-format",
            "json",
            "on_role_change",
            "primary",
            "demo",
        ],
    );
    let mut hook = common::spawn_bg(cmd);
    // The hook asks the route, finds another cluster, asks again...
    common::wait_until(
        "on-role-change to ask the route twice",
        HOOK_TIMEOUT,
        Duration::from_millis(5),
        || (route.accepted() >= 2).then_some(()),
    );
    // ... and this member goes away while its route is still stale.
    local.stop();
    let out = hook
        .wait_timeout(HOOK_TIMEOUT)
        .expect("on-role-change")
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "not resumed",
        "{stderr}"
    );
    assert!(
        pgb.is_paused(),
        "resumed although this member is gone: {stderr}"
    );
    pgb.admin("RESUME").unwrap();
}

#[test]
fn the_1_18_safety_net_does_not_fill_pgbouncer_s_log() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", pg.port);
    let log = pgb.dir.join("before-stop-net.log");
    before_stop_with_net(&pgb, &pgb.admin_url(), "3s", &[], &log);
    common::wait_until(
        "the safety net's RESUME",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || (!pgb.is_paused()).then_some(()),
    );
    let errors = pgb
        .log()
        .lines()
        .filter(|l| l.contains("ERROR invalid command 'SHOW STATE'"))
        .count();
    // One probe tells the net there is no SHOW STATE; it used to ask every 500 ms.
    assert!(
        errors <= 1,
        "{errors} SHOW STATE errors in PgBouncer's log:\n{}",
        pgb.log()
    );
}

#[test]
fn a_promotion_wait_whose_login_is_refused_backs_off() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    // The harness's Postgres trusts every local login: a role that does not exist is the
    // login it refuses, as it would a wrong password.
    let wrong = format!("postgresql://nosuch@127.0.0.1:{}/postgres", pg.port);
    let refused = "role \"nosuch\" does not exist";
    let before = pg.log().matches(refused).count();
    let mut cmd = hook(
        "on-role-change",
        &[
            "--postgres",
            &wrong,
            "--pgbouncer",
            &pgb.admin_url(),
            "--promote-timeout",
            "3s",
            "--no-detach",
            "--log-format",
            "json",
            "on_role_change",
            "primary",
            "demo",
        ],
        PgBouncer::ADMIN_PASSWORD,
    );
    cmd.env("PGCONNECT_TIMEOUT", "2");
    let (out, stderr) = run(cmd);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "not resumed",
        "{stderr}"
    );
    let logins = pg.log().matches(refused).count() - before;
    // 10 ms, doubling to 1 s: about 9 tries in 3 s (it was one every ~15 ms, 200 in 3 s).
    assert!((2..=12).contains(&logins), "{logins} failed logins in 3 s");
}

#[test]
fn check_warns_when_a_late_route_would_cost_server_login_retry() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    pgb.admin("SET server_login_retry = 15").unwrap();
    let warned = |extra: &[&str]| {
        let mut args = vec!["--check", "--log-format", "json"];
        args.extend_from_slice(extra);
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &args));
        assert_ok(&out, &stderr);
        events::parse(&stderr)
            .iter()
            .any(|e| e["warning"] == "late-route")
    };
    assert!(
        warned(&[]),
        "no warning without --upstream and with server_login_retry = 15"
    );
    assert!(
        !warned(&["--upstream", &pg.url()]),
        "warned although the route is checked"
    );
    pgb.admin("SET server_login_retry = 1").unwrap();
    assert!(!warned(&[]), "warned although server_login_retry = 1");
}

/// A TCP proxy on `port` (0: any) whose target can be switched: each new connection goes to
/// the target of the moment (0: refused), as a Service or HAProxy does after a failover.
struct SwitchProxy {
    port: u16,
    target: std::sync::Arc<std::sync::atomic::AtomicU16>,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl SwitchProxy {
    fn start(port: u16, target: u16) -> SwitchProxy {
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicU16, Ordering};
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = std::sync::Arc::new(AtomicU16::new(target));
        let current = shared.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().take(500) {
                let Ok(client) = client else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let to = current.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        SwitchProxy {
            port,
            target: shared,
            accepted,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn switch_to(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }
}

fn watchdog(pgb: &PgBouncer, extra: &[&str], log: &std::path::Path) -> std::process::Child {
    let mut args = vec!["--log-format", "json"];
    for (flag, default) in [("--interval", "100ms"), ("--run-for", "60s")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    let url = pgb.admin_url();
    args.extend(["--pgbouncer", &url]);
    spawn_logged(
        hook("pgbouncer-watchdog", &args, PgBouncer::ADMIN_PASSWORD),
        log,
    )
}

fn watchdog_resumes(log: &std::path::Path) -> Vec<serde_json::Value> {
    events::parse(&read(log))
        .into_iter()
        .filter(|e| e["event"] == "watchdog" && e["action"] == "resume")
        .collect()
}

#[test]
fn the_watchdog_resumes_once_the_route_reaches_a_new_primary_not_before() {
    let mut primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let route = SwitchProxy::start(0, primary.port);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", route.port);
    let upstream = format!("postgresql://postgres@127.0.0.1:{}/postgres", route.port);
    let log = pgb.dir.join("watchdog.log");
    let mut dog = watchdog(&pgb, &["--upstream", &upstream, "--max-pause", "30s"], &log);
    std::thread::sleep(Duration::from_millis(500));
    // The outgoing primary drains and stops: the route still leads to it, then to nothing.
    let _mark = pgb.hooks_pause("test@1");
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        pgb.is_paused(),
        "resumed while the old primary still answered: {}",
        read(&log)
    );
    primary.stop();
    std::thread::sleep(Duration::from_millis(500));
    standby.promote();
    common::wait_until(
        "the standby to leave recovery",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (standby.psql("SELECT pg_is_in_recovery()") == "f").then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        pgb.is_paused(),
        "resumed before the route reached the new primary: {}",
        read(&log)
    );
    let switched = Instant::now();
    route.switch_to(standby.port);
    common::wait_until(
        "the watchdog's RESUME",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (!pgb.is_paused()).then_some(()),
    );
    let took = switched.elapsed();
    let resumes = watchdog_resumes(&log);
    assert_eq!(resumes.len(), 1, "{}", read(&log));
    assert_eq!(resumes[0]["reason"], "new-primary", "{}", read(&log));
    assert!(
        took < Duration::from_secs(2),
        "{took:?} after the route switched"
    );
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(5));
    common::signal(dog.id(), "TERM");
    let _ = dog.wait();
}

#[test]
fn the_watchdog_ends_any_pause_at_max_pause_and_the_next_one_again() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let log = pgb.dir.join("watchdog.log");
    let mut dog = watchdog(&pgb, &["--max-pause", "2s"], &log);
    for round in 1..=2 {
        let _mark = pgb.hooks_pause("test@1");
        let paused = Instant::now();
        common::wait_until(
            "the watchdog's RESUME",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || (!pgb.is_paused()).then_some(()),
        );
        let took = paused.elapsed();
        assert!(
            (Duration::from_millis(1900)..Duration::from_secs(7)).contains(&took),
            "round {round}: resumed after {took:?}"
        );
        assert_eq!(watchdog_resumes(&log).len(), round, "{}", read(&log));
        assert_eq!(watchdog_resumes(&log)[round - 1]["reason"], "max-pause");
    }
    common::signal(dog.id(), "TERM");
    let status = dog.wait().unwrap();
    assert!(
        status.success(),
        "the watchdog must stop cleanly on SIGTERM: {status:?}"
    );
}

#[test]
fn a_resume_that_cannot_reach_pgbouncer_at_first_is_tried_again() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let _mark = pgb.hooks_pause("test@1");
    // The admin console's address refuses connections until the first RESUME failed.
    let port = common::free_port();
    let url = format!(
        "postgresql://{}@127.0.0.1:{port}/pgbouncer",
        PgBouncer::ADMIN_USER
    );
    let cmd = hook(
        "on-role-change",
        &[
            "--postgres",
            &pg.url(),
            "--pgbouncer",
            &url,
            "--no-detach",
            "--log-format",
            "json",
            "--resume-retry",
            "10s",
            "on_role_change",
            "primary",
            "demo",
        ],
        PgBouncer::ADMIN_PASSWORD,
    );
    let log = pgb.dir.join("on-role-change.log");
    let mut callback = spawn_logged(cmd, &log);
    common::wait_until(
        "a RESUME that failed and is tried again",
        HOOK_TIMEOUT,
        Duration::from_millis(10),
        || {
            events::said(
                &read(&log),
                &[("command", "RESUME"), ("result", "retrying")],
            )
            .then_some(())
        },
    );
    let _proxy = SwitchProxy::start(port, pgb.port);
    let status = common::wait_until(
        "on-role-change",
        HOOK_TIMEOUT,
        Duration::from_millis(20),
        || callback.try_wait().unwrap(),
    );
    let stderr = read(&log);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(events::summary(&stderr)["outcome"], "resumed", "{stderr}");
    assert!(!pgb.is_paused(), "{stderr}");
}

#[test]
fn the_watchdog_keeps_its_sessions_instead_of_logging_in_every_look() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let logins = |text: &str, db: &str| text.matches(&format!("login attempt: db={db} ")).count();
    let admin_before = logins(&pgb.log(), "pgbouncer");
    let log = pgb.dir.join("watchdog-quiet.log");
    let mut cmd = hook(
        "pgbouncer-watchdog",
        &[
            "--interval",
            "50ms",
            "--run-for",
            "2s",
            "--pgbouncer",
            &pgb.admin_url(),
            "--upstream",
            &pg.url(),
        ],
        PgBouncer::ADMIN_PASSWORD,
    );
    cmd.env("HOOKS_LOG_FORMAT", "json");
    let mut dog = spawn_logged(cmd, &log);
    let status = common::wait_until(
        "the watchdog to stop",
        HOOK_TIMEOUT,
        Duration::from_millis(50),
        || dog.try_wait().unwrap(),
    );
    assert!(status.success(), "{}", read(&log));
    // About 40 looks in 2 s, and one admin login (it was one a look).
    let admin = logins(&pgb.log(), "pgbouncer") - admin_before;
    assert!(admin <= 2, "{admin} admin logins in 2 s:\n{}", pgb.log());
}

// ------------------------------------------------------------------ whose pause (issue 15)

/// `GET path` from the watchdog's --listen address: (status code, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    // Not listening yet (just started): no answer, as a probe would see it.
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// Waits (bounded) for the watchdog's log to hold an event `action` matching `also`.
fn wait_event(
    log: &std::path::Path,
    action: &str,
    also: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    common::wait_until(
        &format!("the watchdog's {action} event"),
        Duration::from_secs(15),
        Duration::from_millis(20),
        || {
            events::parse(&read(log))
                .into_iter()
                .find(|e| e["event"] == "watchdog" && e["action"] == action && also(e))
        },
    )
}

#[test]
fn a_dba_s_pause_survives_the_hooks_their_net_and_the_watchdog() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = pgb.dir.join("watchdog.log");
    let mut dog = watchdog(
        &pgb,
        &[
            "--upstream",
            &pg.url(),
            "--max-pause",
            "1s",
            "--listen",
            &listen,
        ],
        &log,
    );
    // A DBA freezes PgBouncer for a cutover (psql, no mark).
    pgb.admin("PAUSE").unwrap();
    wait_event(&log, "pause-seen", |e| e["owner"] == "other");
    // A switchover now: before-stop leaves the pause alone and arms no net for it ...
    let view = leader_view(&pgb.dir, "m1");
    let (out, stderr) = before_stop(&view, &[&pgb], &["--max-pause", "1s"]);
    assert_ok(&out, &stderr);
    assert_eq!(
        events::results(&stderr, "PAUSE"),
        ["left alone"],
        "{stderr}"
    );
    assert_eq!(events::summary(&stderr)["left_alone"], 1, "{stderr}");
    assert!(
        !events::said(&stderr, &[("event", "safety-net"), ("action", "armed")]),
        "{stderr}"
    );
    // ... and on-role-change on the new primary does not RESUME it.
    let (out, stderr) = run(on_role_change(
        &pg,
        &[&pgb],
        &["--no-detach", "on_role_change", "primary", "demo"],
    ));
    assert_ok(&out, &stderr);
    assert_eq!(
        events::results(&stderr, "RESUME"),
        ["left alone"],
        "{stderr}"
    );
    assert_eq!(events::summary(&stderr)["left_alone"], 1, "{stderr}");
    // Twice --max-pause later (and with the route reaching the primary all along): still
    // paused, nobody resumed it. Waiting for an absence takes the time it names.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(pgb.is_paused(), "the DBA's pause was ended: {}", read(&log));
    assert!(watchdog_resumes(&log).is_empty(), "{}", read(&log));
    // Seen, not silent: the status says whose pause it is and who ends it.
    let (code, status) = http_get(port, "/status");
    assert_eq!(code, 200, "{status}");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pgbouncers"][0]["paused"], true, "{status}");
    assert_eq!(status["pgbouncers"][0]["owner"], "other", "{status}");
    assert!(
        status["pgbouncers"][0]["ended_by"]
            .as_str()
            .unwrap()
            .starts_with("not the hooks"),
        "{status}"
    );
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pph_watchdog_paused{")
                && l.contains("owner=\"other\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains("pph_watchdog_pauses_total{owner=\"other\"} 1"),
        "{metrics}"
    );
    assert_eq!(http_get(port, "/readyz").0, 200, "{}", read(&log));
    // The operator's command says the same, and exits 1 while PgBouncer is paused.
    let (out, stderr) = run(hook(
        "pgbouncer-watchdog",
        &["--status", "--listen", &listen],
        PgBouncer::ADMIN_PASSWORD,
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["pgbouncers"][0]["owner"], "other", "{printed}");
    // The DBA ends it.
    pgb.admin("RESUME").unwrap();
    wait_event(&log, "pause-ended", |e| e["owner"] == "other");
    common::signal(dog.id(), "TERM");
    let _ = dog.wait();
}

#[test]
fn an_operator_s_hold_keeps_a_hooks_pause_until_the_hold_ends() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let log = pgb.dir.join("watchdog.log");
    let mut dog = watchdog(&pgb, &["--max-pause", "1s"], &log);
    let hold = common::session::Session::open(
        &pgb.admin_url(),
        PgBouncer::ADMIN_PASSWORD,
        "pph-hold maintenance",
    )
    .unwrap();
    let net_log = pgb.dir.join("before-stop.log");
    let status = before_stop_with_net(&pgb, &pgb.admin_url(), "1s", &[], &net_log);
    assert!(status.success(), "{}", read(&net_log));
    assert!(pgb.is_paused());
    let (out, stderr) = run(on_role_change(
        &pg,
        &[&pgb],
        &["--no-detach", "on_role_change", "primary", "demo"],
    ));
    assert_ok(&out, &stderr);
    assert_eq!(
        events::results(&stderr, "RESUME"),
        ["left alone"],
        "{stderr}"
    );
    // The net's deadline passes: it leaves the held pause alone.
    common::wait_until(
        "the net's deadline",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            events::said(
                &read(&net_log),
                &[("event", "safety-net"), ("action", "left-alone")],
            )
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pgb.is_paused(), "a held pause was ended: {}", read(&log));
    assert!(watchdog_resumes(&log).is_empty(), "{}", read(&log));
    // The hold ends: the hooks' pause, long past --max-pause, ends within a look or two.
    let released = Instant::now();
    drop(hold);
    common::wait_until(
        "the watchdog's RESUME",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (!pgb.is_paused()).then_some(()),
    );
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "{:?}",
        released.elapsed()
    );
    assert_eq!(
        watchdog_resumes(&log)[0]["reason"],
        "max-pause",
        "{}",
        read(&log)
    );
    common::signal(dog.id(), "TERM");
    let _ = dog.wait();
}

/// The documented bound: a hooks' pause whose every other process died ends within
/// --max-pause + --interval + --look-timeout (README, "The guarantee"). Measured over runs.
#[test]
fn an_orphaned_hooks_pause_ends_within_the_documented_bound() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let log = pgb.dir.join("watchdog.log");
    let (max_pause, interval, look) = (2000, 250, 1000);
    let mut dog = watchdog(
        &pgb,
        &[
            "--max-pause",
            "2s",
            "--interval",
            "250ms",
            "--look-timeout",
            "1s",
        ],
        &log,
    );
    let mut longest = Duration::ZERO;
    for run in 1..=3 {
        let id = format!("orphan@{run}");
        let paused_at = Instant::now();
        let mark = pgb.hooks_pause(&id);
        // The watchdog has seen the mark and holds it itself; then every other process dies.
        wait_event(&log, "relay", |e| e["pause_id"] == id.as_str());
        drop(mark);
        common::wait_until(
            "the watchdog's RESUME",
            Duration::from_secs(15),
            Duration::from_millis(10),
            || (!pgb.is_paused()).then_some(()),
        );
        let took = paused_at.elapsed();
        longest = longest.max(took);
        let resumes = watchdog_resumes(&log);
        assert_eq!(resumes.len(), run, "{}", read(&log));
        assert_eq!(resumes[run - 1]["reason"], "max-pause", "{}", read(&log));
    }
    let bound = Duration::from_millis(max_pause + interval + look);
    eprintln!("BOUND: longest orphaned pause {longest:?} over 3 runs (bound {bound:?})");
    assert!(longest <= bound, "{longest:?} > {bound:?}\n{}", read(&log));
    common::signal(dog.id(), "TERM");
    let _ = dog.wait();
}

#[test]
fn the_watchdog_says_what_it_cannot_see_once_and_its_probes_fail() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = pgb.dir.join("watchdog-wrong.log");
    let mut cmd = hook(
        "pgbouncer-watchdog",
        &[
            "--interval",
            "50ms",
            "--run-for",
            "30s",
            "--listen",
            &listen,
            "--pgbouncer",
            &pgb.admin_url(),
        ],
        "not-the-password",
    );
    cmd.env("HOOKS_LOG_FORMAT", "json");
    let mut dog = spawn_logged(cmd, &log);
    // Many failed looks, one line when the failure starts.
    common::wait_until(
        "ten failed looks",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || {
            let (_, metrics) = http_get(port, "/metrics");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("pph_watchdog_look_errors_total{kind=\"admin\"} "))
                .and_then(|n| n.parse::<f64>().ok())
                .filter(|n| *n >= 10.0)
        },
    );
    let failing: Vec<_> = events::parse(&read(&log))
        .into_iter()
        .filter(|e| e["event"] == "watchdog" && e["action"] == "failing")
        .collect();
    assert_eq!(failing.len(), 1, "{}", read(&log));
    assert_eq!(failing[0]["kind"], "admin", "{}", read(&log));
    let (code, why) = http_get(port, "/readyz");
    assert_eq!(code, 503, "{why}");
    assert!(why.starts_with("admin:"), "{why}");
    assert_eq!(http_get(port, "/healthz").0, 200);
    common::signal(dog.id(), "TERM");
    let _ = dog.wait();
    // --check says the same, in one line, exit 1; with the right password, exit 0.
    let check = |password: &str| {
        run(hook(
            "pgbouncer-watchdog",
            &[
                "--check",
                "--pgbouncer",
                &pgb.admin_url(),
                "--upstream",
                &pg.url(),
            ],
            password,
        ))
    };
    let (out, stderr) = check("not-the-password");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<_> = events::parse(&stderr)
        .into_iter()
        .filter(|e| e["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(errors[0]["kind"], "admin", "{stderr}");
    assert_eq!(events::summary(&stderr)["outcome"], "not ready", "{stderr}");
    let (out, stderr) = check(PgBouncer::ADMIN_PASSWORD);
    assert_ok(&out, &stderr);
    assert_eq!(events::summary(&stderr)["outcome"], "ready", "{stderr}");
}

#[test]
fn the_watchdog_asks_pgbouncer_1_18_for_show_state_once() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", pg.port);
    let log = pgb.dir.join("watchdog-118.log");
    let mut dog = watchdog(&pgb, &["--interval", "50ms", "--run-for", "2s"], &log);
    let status = common::wait_until(
        "the watchdog to stop",
        HOOK_TIMEOUT,
        Duration::from_millis(50),
        || dog.try_wait().unwrap(),
    );
    assert!(status.success(), "{}", read(&log));
    let errors = pgb
        .log()
        .lines()
        .filter(|l| l.contains("ERROR invalid command 'SHOW STATE'"))
        .count();
    assert_eq!(errors, 1, "{}", pgb.log());
}

/// The watchdog's costs, for docs/benchmarks.md (on demand:
/// `cargo test --test hooks -- --ignored --nocapture watchdog_costs`, after
/// `scripts/check-static`): calm for 20 s beside an idle PgBouncer, its peak RSS, CPU time, and
/// logins; the time of a `/metrics` scrape; how soon it RESUMEs after the route reaches a new
/// primary. Prints one `COSTS` line.
#[test]
#[ignore = "a measurement, run on demand"]
fn watchdog_costs() {
    let musl = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-musl/release/pgbouncer-watchdog");
    let bin = std::env::var("PPH_COST_BIN").map_or(musl, PathBuf::from);
    let mut primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let route = SwitchProxy::start(0, primary.port);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", route.port);
    let upstream = format!("postgresql://postgres@127.0.0.1:{}/postgres", route.port);
    let sessions = || -> u64 {
        primary
            .psql("SELECT sessions FROM pg_stat_database WHERE datname = 'postgres'")
            .parse()
            .unwrap()
    };
    let logins = |text: &str| text.matches("login attempt: db=pgbouncer ").count();
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = pgb.dir.join("watchdog-costs.log");
    let mut cmd = common::client(&bin);
    cmd.args([
        "--pgbouncer",
        &pgb.admin_url(),
        "--upstream",
        &upstream,
        "--listen",
        &listen,
        "--max-pause",
        "60s",
        "--log-format",
        "json",
    ])
    .env("PGBOUNCER_PASSWORD", PgBouncer::ADMIN_PASSWORD);
    let mut dog = spawn_logged(cmd, &log);
    common::wait_until(
        "the watchdog ready",
        Duration::from_secs(15),
        Duration::from_millis(50),
        || (http_get(port, "/readyz").0 == 200).then_some(()),
    );
    let (admin0, pg0) = (logins(&pgb.log()), sessions());
    let cpu = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / 100.0
    };
    let cpu0 = cpu(dog.id());
    let calm = Duration::from_secs(20);
    std::thread::sleep(calm);
    let cpu_s = cpu(dog.id()) - cpu0;
    let admin_logins = logins(&pgb.log()) - admin0;
    let pg_logins = sessions() - pg0;
    let status = std::fs::read_to_string(format!("/proc/{}/status", dog.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // 100 scrapes of /metrics, one at a time.
    let t = Instant::now();
    for _ in 0..100 {
        assert_eq!(http_get(port, "/metrics").0, 200);
    }
    let scrape_ms = t.elapsed().as_secs_f64() * 1000.0 / 100.0;
    // A hooks' pause; the old primary stops; the route switches to the promoted standby.
    let mark = pgb.hooks_pause("costs@1");
    wait_event(&log, "relay", |e| e["pause_id"] == "costs@1");
    primary.stop();
    standby.promote();
    common::wait_until(
        "the standby to leave recovery",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || (standby.psql("SELECT pg_is_in_recovery()") == "f").then_some(()),
    );
    let switched = Instant::now();
    route.switch_to(standby.port);
    common::wait_until(
        "the watchdog's RESUME",
        Duration::from_secs(10),
        Duration::from_millis(2),
        || (!pgb.is_paused()).then_some(()),
    );
    let resume_ms = switched.elapsed().as_millis();
    drop(mark);
    eprintln!(
        "COSTS calm_s={} rss_kib={rss_kib} cpu_s={cpu_s:.2} admin_logins={admin_logins} upstream_logins={pg_logins} scrape_ms={scrape_ms:.2} resume_after_route_ms={resume_ms} bin={}",
        calm.as_secs(),
        bin.display()
    );
    assert!(rss_kib <= 5 * 1024, "{rss_kib} KiB");
    assert!(
        admin_logins <= 1 && pg_logins <= 1,
        "{admin_logins} {pg_logins}"
    );
    common::signal(dog.id(), "TERM");
    let _ = dog.wait();
}
