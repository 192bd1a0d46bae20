//! The two hooks against a real PostgreSQL 15 and real PgBouncers (Debian's 1.18 and a
//! current one), all on 127.0.0.1: what a client sees is the assertion, not the log.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{PgBouncer, PgBouncerBuild, Postgres};

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
        .env("RUST_LOG", "info");
    cmd
}

fn run(cmd: Command) -> (Output, String) {
    let out = common::run_with_timeout(cmd, HOOK_TIMEOUT);
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
    run(hook("before-stop", &args, PgBouncer::ADMIN_PASSWORD))
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
        assert!(stderr.contains("PAUSE paused"), "{stderr}");
        assert!(stderr.contains("before-stop done"), "{stderr}");
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
        assert!(stderr.contains("RESUME resumed"), "{stderr}");
        if pgb.has_show_state() {
            assert!(stderr.contains("SHOW STATE says not paused"), "{stderr}");
        } else {
            assert!(stderr.contains("SHOW STATE check skipped"), "{stderr}");
        }
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
    assert!(stderr.contains("already paused"), "{stderr}");
    for expected in ["RESUME resumed", "RESUME was not paused"] {
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
        assert_ok(&out, &stderr);
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert!(!pgb.is_paused());
}

#[test]
fn a_replica_stopping_pauses_nothing() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let (out, stderr) = before_stop(&leader_view(&pgb.dir, "m2"), &[&pgb], &[]);
    assert_ok(&out, &stderr);
    assert!(stderr.contains("the leader is m2"), "{stderr}");
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
        assert!(stderr.contains("still draining"), "{stderr}");
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
    assert!(stderr.contains("paused=2"), "{stderr}");
    let (out, stderr) = run(on_role_change(&pg, &[&first, &second], &[]));
    assert_ok(&out, &stderr);
    assert!(!first.is_paused() && !second.is_paused(), "{stderr}");

    // One PgBouncer down: the other is still paused and resumed; the down one is named.
    let down_url = second.admin_url();
    second.kill();
    let (out, stderr) = before_stop(&view, &[&first], &["--pgbouncer", &down_url]);
    assert_ok(&out, &stderr);
    assert!(stderr.contains("failed=1"), "{stderr}");
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
    assert!(stderr.contains("partly resumed"), "{stderr}");
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
        stderr.lines().filter(|l| l.contains("ERROR")).count(),
        1,
        "one error line per target: {stderr}"
    );
}

#[test]
fn on_role_change_waits_for_promotion_before_resuming() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", standby.port);
    pgb.admin("PAUSE").unwrap();

    let mut cmd = on_role_change(&standby, &[&pgb], &["on_role_change", "primary", "demo"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
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

#[test]
fn a_standby_that_never_promotes_gets_no_resume() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", primary.port);
    pgb.admin("PAUSE").unwrap();
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
    assert!(stderr.contains("did not leave recovery"), "{stderr}");
    assert!(stderr.contains("NOT resumed"), "{stderr}");
    assert!(pgb.is_paused());
    pgb.admin("RESUME").unwrap();
}

#[test]
fn standby_leader_resumes_without_waiting_and_replica_does_nothing() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", primary.port);
    pgb.admin("PAUSE").unwrap();
    let (out, stderr) = run(on_role_change(
        &standby,
        &[&pgb],
        &["on_role_change", "replica", "demo"],
    ));
    assert_ok(&out, &stderr);
    assert!(stderr.contains("nothing to do"), "{stderr}");
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

#[test]
fn the_safety_net_resumes_a_forgotten_pause() {
    for build in PgBouncerBuild::all() {
        let pg = Postgres::start_primary();
        let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
        let log = pgb.dir.join("before-stop.log");
        let view = leader_view(&pgb.dir, "m1");
        let view = view.display().to_string();
        let url = pgb.admin_url();
        let args = [
            "--member",
            "m1",
            "--list-tsv",
            &view,
            "--pgbouncer",
            &url,
            "--max-pause",
            "2s",
        ];
        let status = common::wait_until("before-stop", HOOK_TIMEOUT, Duration::from_millis(20), {
            let mut child =
                spawn_logged(hook("before-stop", &args, PgBouncer::ADMIN_PASSWORD), &log);
            move || child.try_wait().unwrap()
        });
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
            || read(&log).contains("SAFETY NET").then_some(()),
        );
        assert!(!pgb.is_paused());
    }
}

#[test]
fn the_safety_net_never_resumes_a_later_pause() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let log = pgb.dir.join("before-stop.log");
    let view = leader_view(&pgb.dir, "m1").display().to_string();
    let url = pgb.admin_url();
    let args = [
        "--member",
        "m1",
        "--list-tsv",
        &view,
        "--pgbouncer",
        &url,
        "--max-pause",
        "3s",
    ];
    let mut child = spawn_logged(hook("before-stop", &args, PgBouncer::ADMIN_PASSWORD), &log);
    let status = common::wait_until(
        "before-stop",
        HOOK_TIMEOUT,
        Duration::from_millis(20),
        || child.try_wait().unwrap(),
    );
    assert!(status.success(), "{}", read(&log));
    let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
    assert_ok(&out, &stderr);
    common::wait_until(
        "the net to see the RESUME",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            read(&log)
                .contains("PgBouncer was resumed; nothing to do")
                .then_some(())
        },
    );
    // An unrelated pause after that: the net is gone and must not touch it.
    pgb.admin("PAUSE").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        pgb.is_paused(),
        "the safety net resumed a later pause: {}",
        read(&log)
    );
    assert!(!read(&log).contains("SAFETY NET"), "{}", read(&log));
    pgb.admin("RESUME").unwrap();
}

#[test]
fn a_callback_killed_mid_wait_still_resumes() {
    use std::os::unix::process::CommandExt;
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    let pgb = PgBouncer::start(PgBouncerBuild::Debian, "127.0.0.1", standby.port);
    pgb.admin("PAUSE").unwrap();
    let log = pgb.dir.join("on-role-change.log");
    let mut cmd = on_role_change(&standby, &[&pgb], &["on_role_change", "master", "demo"]);
    cmd.process_group(0);
    let mut child = spawn_logged(cmd, &log);
    common::wait_until(
        "the detached worker to start",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || read(&log).contains("detached worker").then_some(()),
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
        || read(&log).contains("on-role-change done").then_some(()),
    );
    assert!(read(&log).contains("RESUME resumed"), "{}", read(&log));
    assert!(!pgb.is_paused(), "{}", read(&log));
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
        assert!(stderr.contains("still draining"), "{stderr}");
        // ... and the new primary resumes while the PAUSE is still pending.
        let (out, stderr) = run(on_role_change(&pg, &[&pgb], &[]));
        assert_ok(&out, &stderr);
        long.expect_success(Duration::from_secs(10));
        common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(5));
        assert!(!pgb.is_paused(), "{build:?}");
        // A later PAUSE/RESUME cycle still works: nothing was left half-paused.
        let (out, stderr) = before_stop(&leader_view(&pgb.dir, "m1"), &[&pgb], &[]);
        assert_ok(&out, &stderr);
        assert!(stderr.contains("PAUSE paused"), "{build:?}: {stderr}");
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
    for expected in [
        "version=PgBouncer 1.24",
        "version=PgBouncer 1.18",
        "pool_mode=transaction",
        "show_state=false",
        "role=Leader",
        "ready",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?}: {stderr}");
    }
    assert!(!pgb.is_paused() && !old.is_paused());
    let (out, stderr) = run(on_role_change(&pg, &[&pgb], &["--check"]));
    assert_ok(&out, &stderr);
    assert!(stderr.contains("role=\"primary\""), "{stderr}");
    assert!(
        stderr.contains("route from PgBouncer to the new primary is not verified"),
        "{stderr}"
    );
    // A paused PgBouncer, or one that cannot be reached, makes the check fail.
    pgb.admin("PAUSE").unwrap();
    let (out, stderr) = before_stop(&view, &[&pgb], &["--check"]);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("paused=true"), "{stderr}");
    assert!(pgb.is_paused(), "--check must not change anything");
    pgb.admin("RESUME").unwrap();
}
