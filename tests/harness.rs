//! Proves the integration-test harness and the PgBouncer behaviour the hooks rely on,
//! with real servers and without the hook binaries.

use pph_support as common;

use common::{events, spawn_psql, PgBouncer, PgBouncerBuild, Postgres};
use std::time::Duration;

/// How long a paused client must stay blocked to count as "held".
const HELD_FOR: Duration = Duration::from_millis(1000);

fn pause_holds_and_resume_releases(build: PgBouncerBuild) {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
    match build {
        PgBouncerBuild::Debian => assert!(pgb.version.starts_with("1.18."), "{}", pgb.version),
        PgBouncerBuild::Trixie => {
            assert!(common::version_ge(&pgb.version, (1, 24)), "{}", pgb.version)
        }
    }

    // A transaction goes through PgBouncer to Postgres, as user app.
    let url = pgb.app_url();
    let out = common::psql_url(
        &url,
        "BEGIN; INSERT INTO t(v) VALUES ('before'); SELECT current_user; COMMIT;",
        None,
    )
    .expect("transaction through pgbouncer");
    assert_eq!(out, "app");
    assert_eq!(pg.psql("SELECT count(*) FROM t WHERE v = 'before'"), "1");

    if build == PgBouncerBuild::Debian {
        // Why is_paused() reads the log on 1.18.
        let e = pgb.admin("SHOW STATE").expect_err("1.18 knows SHOW STATE");
        assert!(e.contains("invalid command"), "{e}");
    }
    assert!(!pgb.is_paused(), "fresh pgbouncer reports paused");
    pgb.admin("PAUSE").expect("PAUSE");
    assert!(pgb.is_paused(), "not paused after PAUSE");
    // A second PAUSE is refused (both versions), the state stays paused.
    let again = pgb.admin("PAUSE").expect_err("second PAUSE accepted");
    assert!(
        again.contains("already"),
        "unexpected second-PAUSE answer: {again}"
    );
    assert!(pgb.is_paused());

    // A new client's transaction is held while paused...
    let mut client = spawn_psql(&url, "INSERT INTO t(v) VALUES ('during') RETURNING v");
    assert!(
        client.wait_timeout(HELD_FOR).is_none(),
        "transaction completed while PgBouncer was paused"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM t WHERE v = 'during'"), "0");
    let waiting = pgb
        .app_pool()
        .into_iter()
        .find(|(k, _)| k == "cl_waiting")
        .map(|(_, v)| v)
        .expect("cl_waiting column");
    assert_eq!(waiting, "1", "held client should be cl_waiting");

    // ... and released by RESUME.
    pgb.admin("RESUME").expect("RESUME");
    assert_eq!(client.expect_success(Duration::from_secs(10)), "during");
    assert_eq!(pg.psql("SELECT count(*) FROM t WHERE v = 'during'"), "1");
    assert!(!pgb.is_paused(), "still paused after RESUME");
    let not_paused = pgb
        .admin("RESUME")
        .expect_err("RESUME of a running pooler accepted");
    assert!(
        not_paused.contains("not paused"),
        "unexpected RESUME answer: {not_paused}"
    );
}

#[test]
fn pause_holds_and_resume_releases_pgbouncer_debian_1_18() {
    pause_holds_and_resume_releases(PgBouncerBuild::Debian);
}

#[test]
fn pause_holds_and_resume_releases_pgbouncer_trixie() {
    pause_holds_and_resume_releases(PgBouncerBuild::Trixie);
}

#[test]
fn all_builds_are_listed() {
    let versions: Vec<String> = PgBouncerBuild::all().iter().map(|b| b.version()).collect();
    assert!(versions[0].starts_with("1.18."), "{versions:?}");
    assert!(common::version_ge(&versions[1], (1, 24)), "{versions:?}");
}

#[test]
fn standby_replicates_and_promotes() {
    let primary = Postgres::start_primary();
    let standby = Postgres::start_standby(&primary);
    assert_ne!(primary.port, standby.port);
    assert_eq!(primary.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");

    primary.psql("INSERT INTO t(v) VALUES ('replicated')");
    common::wait_until(
        "row on standby",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || (standby.psql("SELECT count(*) FROM t WHERE v = 'replicated'") == "1").then_some(()),
    );
    assert!(
        standby.try_psql("INSERT INTO t(v) VALUES ('x')").is_err(),
        "standby accepted a write"
    );

    // PgBouncer in front of the primary, re-pointed at the standby after promotion.
    let mut pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", primary.port);
    assert_eq!(
        common::psql_url(&pgb.app_url(), "SELECT inet_server_port()", None).unwrap(),
        primary.port.to_string()
    );

    standby.promote();
    common::wait_until(
        "promotion",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || (standby.psql("SELECT pg_is_in_recovery()") == "f").then_some(()),
    );
    standby.psql("INSERT INTO t(v) VALUES ('after promote')");
    assert_eq!(standby.psql("SELECT count(*) FROM t"), "2");
    pgb.set_backend("127.0.0.1", standby.port);
    pgb.admin("RECONNECT").expect("RECONNECT");
    assert_eq!(
        common::psql_url(&pgb.app_url(), "SELECT inet_server_port()", None).unwrap(),
        standby.port.to_string()
    );
    // The unix socket works too (libpq `host=<dir>`), as on-role-change's PGHOST would.
    let mut c = common::client(common::pg_bin("psql"));
    c.args(["-XAtq", "-h"]).arg(standby.socket_dir()).args([
        "-p",
        &standby.port.to_string(),
        "-U",
        "postgres",
        "-c",
        "SELECT pg_is_in_recovery()",
    ]);
    let out = common::run_ok(&mut c, common::CMD_TIMEOUT).unwrap();
    assert_eq!(out.trim(), "f");
}

#[test]
fn run_with_timeout_kills_the_child() {
    let mut c = std::process::Command::new("sleep");
    c.arg("30");
    let start = std::time::Instant::now();
    let out = common::run_with_timeout(c, Duration::from_millis(200));
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
}

/// In transaction mode PAUSE returns only when running transactions have ended
/// (what before-stop's --pause-timeout bounds); nothing is lost.
fn pause_waits_for_open_transaction(build: PgBouncerBuild) {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(build, "127.0.0.1", pg.port);
    let mut txn = spawn_psql(
        &pgb.app_url(),
        "BEGIN; INSERT INTO t(v) VALUES ('in flight'); SELECT pg_sleep(0.8); COMMIT;",
    );
    common::wait_until(
        "transaction running on the server",
        Duration::from_secs(10),
        Duration::from_millis(10),
        || {
            let n = pg.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'active'",
            );
            (n == "1").then_some(())
        },
    );
    let mut pause = pgb.spawn_admin("PAUSE");
    assert!(
        pause.wait_timeout(Duration::from_millis(300)).is_none(),
        "PAUSE returned while a transaction was running"
    );
    assert!(pgb.is_paused(), "a pending PAUSE counts as paused");
    pause.expect_success(Duration::from_secs(10));
    // PAUSE returned only after the transaction committed.
    assert_eq!(pg.psql("SELECT count(*) FROM t WHERE v = 'in flight'"), "1");
    txn.expect_success(Duration::from_secs(5));
    assert!(pgb.is_paused());
    pgb.admin("RESUME").expect("RESUME");
    assert!(!pgb.is_paused());
}

#[test]
fn pause_waits_for_open_transaction_pgbouncer_debian_1_18() {
    pause_waits_for_open_transaction(PgBouncerBuild::Debian);
}

#[test]
fn pause_waits_for_open_transaction_pgbouncer_trixie() {
    pause_waits_for_open_transaction(PgBouncerBuild::Trixie);
}

#[test]
fn restart_keeps_data_and_stop_is_idempotent() {
    let mut pg = Postgres::start_primary();
    pg.psql("INSERT INTO t(v) VALUES ('kept')");
    let pid = pg.pid().unwrap();
    pg.restart();
    assert_ne!(pg.pid().unwrap(), pid);
    assert_eq!(pg.psql("SELECT v FROM t"), "kept");
    pg.stop();
    assert!(
        pg.try_psql("SELECT 1").is_err(),
        "server still answers after stop"
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    pg.stop();
}

// The one parser of the hooks' structured events (tests/support/src/events.rs).

#[test]
fn the_event_parser_reads_json_lines_with_and_without_a_prefix_and_skips_the_rest() {
    let text = concat!(
        "{\"event\":\"summary\",\"hook\":\"before-stop\",\"outcome\":\"paused\"}\n",
        "2026-01-01 12:00:00 INFO: no JSON here\n",
        "{not json}\n",
        "[1]\n",
        "pod/pg-0 {\"event\":\"route\",\"action\":\"reached\"}\r\n",
        "{\"command\":\"PAUSE\",\"result\":\"paused\"}\n",
        "{\"event\":\"summary\",\"hook\":\"on-role-change\",\"outcome\":\"resumed\"}\n",
    );
    assert_eq!(events::parse(text).len(), 4);
    assert!(events::said(
        text,
        &[("event", "route"), ("action", "reached")]
    ));
    assert!(!events::said(
        text,
        &[("event", "route"), ("action", "stale")]
    ));
    assert_eq!(events::summary(text)["hook"], "on-role-change");
    assert_eq!(events::summaries(text, "before-stop").len(), 1);
    assert_eq!(events::results(text, "PAUSE"), ["paused"]);
    assert!(events::results(text, "RESUME").is_empty());
}

#[test]
#[should_panic(expected = "no event with")]
fn a_missing_event_is_a_failure_that_shows_the_log() {
    events::summary("{\"event\":\"decided\"}\n");
}
