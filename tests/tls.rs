//! The hooks over TLS against real servers on 127.0.0.1: PostgreSQL 15 with `ssl = on` and a
//! `hostssl`-only pg_hba.conf (TLS 1.3, an RSA certificate), PgBouncer 1.24 with
//! `client_tls_sslmode = require` (TLS 1.2, a P-256 certificate), a CA and
//! certificates made by the test (`openssl`). What the hooks did is read from their JSON
//! events and from the servers; a refusal must be one line naming its cause, exit 1, and
//! leave nothing paused.

use pph_support as common;
use pph_support::events;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::tls::{pgbouncer_tls, postgres_tls_only, Ca};
use common::{PgBouncer, PgBouncerBuild, Postgres, APP_PASSWORD};

const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn leader_view(dir: &Path) -> PathBuf {
    let path = dir.join("list-m1.tsv");
    std::fs::write(
        &path,
        "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\n\
         demo\tm1\t127.0.0.1:5432\tLeader\trunning\t1\t\n\
         demo\tm2\t127.0.0.1:5433\tReplica\tstreaming\t1\t0\n",
    )
    .unwrap();
    path
}

/// A hook with the admin password in its environment (never argv) and `extra_env`.
fn hook(name: &str, args: &[&str], json: bool, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = common::client(common::bin(name));
    cmd.args(args)
        .env("PGBOUNCER_PASSWORD", PgBouncer::ADMIN_PASSWORD)
        .env("RUST_LOG", "info");
    if json {
        cmd.env("HOOKS_LOG_FORMAT", "json");
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

fn run(cmd: Command) -> (Output, String) {
    let out = common::run_with_timeout(cmd, HOOK_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// `url` with TLS query parameters.
fn with(url: &str, params: &str) -> String {
    format!("{url}?{params}")
}

fn before_stop(view: &Path, pgbouncer: &str, extra: &[&str], json: bool) -> (Output, String) {
    let view = view.display().to_string();
    let mut args = vec![
        "--member",
        "m1",
        "--list-tsv",
        &view,
        "--pgbouncer",
        pgbouncer,
        "--max-pause",
        "0",
    ];
    args.extend(extra);
    // Its safety net (holding the pause's mark) keeps stderr open: wait for the hook only.
    let out = common::run_leaving(hook("before-stop", &args, json, &[]), HOOK_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

#[test]
fn pause_and_resume_over_verified_tls_with_the_route_check_and_channel_binding() {
    let ca = Ca::new("main");
    // RSA for Postgres, P-256 over TLS 1.2 for PgBouncer: both kinds of key, both versions.
    let pg_cert = ca.issue_rsa("postgres", &["DNS:localhost", "IP:127.0.0.1"]);
    let pgb_cert = ca.issue("pgbouncer", &["IP:127.0.0.1"], false);
    let pg = Postgres::start_primary();
    postgres_tls_only(&pg, &pg_cert);
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    pgbouncer_tls(&pgb, "require", &pgb_cert, "tls_protocols = tlsv1.2");

    // Both servers refuse plaintext: what passes below went over TLS.
    let plain_console = common::psql_url(
        &with(&pgb.admin_url(), "sslmode=disable"),
        "SHOW VERSION",
        Some(PgBouncer::ADMIN_PASSWORD),
    );
    assert!(plain_console.is_err(), "{plain_console:?}");
    // The hooks' refusal for a plaintext console URL points at TLS, not reachability.
    let (out, stderr) = before_stop(&leader_view(&pgb.dir), &pgb.admin_url(), &[], false);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the console requires TLS"), "{stderr}");
    assert!(!pgb.is_paused());
    let app_pg = format!("postgresql://app@localhost:{}/postgres", pg.port);
    let plain_pg = common::psql_url(
        &with(&app_pg, "sslmode=disable"),
        "SELECT 1",
        Some(APP_PASSWORD),
    );
    assert!(
        plain_pg
            .as_ref()
            .is_err_and(|e| e.contains("no encryption")),
        "{plain_pg:?}"
    );
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(10));

    let ca_file = ca.cert().display().to_string();
    let console = with(
        &pgb.admin_url(),
        &format!("sslmode=verify-full&sslrootcert={ca_file}"),
    );
    let (out, stderr) = before_stop(&leader_view(&pgb.dir), &console, &[], true);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(events::summary(&stderr)["outcome"], "paused", "{stderr}");
    assert!(pgb.is_paused(), "not paused after before-stop: {stderr}");
    let mut held = common::spawn_psql(&pgb.app_url(), "SELECT 42");
    assert!(
        held.wait_timeout(Duration::from_secs(1)).is_none(),
        "a transaction went through a paused PgBouncer"
    );

    // The local Postgres by its name (verify-full), the route by its address (the
    // certificate lists both), each with channel binding required: SCRAM-SHA-256-PLUS.
    let local = with(
        &app_pg,
        &format!("sslmode=verify-full&sslrootcert={ca_file}&channel_binding=require"),
    );
    let upstream = format!("postgresql://app@127.0.0.1:{}/postgres", pg.port);
    let (out, stderr) = run(hook(
        "on-role-change",
        &[
            "--postgres",
            &local,
            "--pgbouncer",
            &console,
            "--upstream",
            &upstream,
            "on_role_change",
            "primary",
            "demo",
        ],
        true,
        &[
            ("PGPASSWORD", APP_PASSWORD),
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", &ca_file),
            ("PGCHANNELBINDING", "require"),
        ],
    ));
    assert!(out.status.success(), "{stderr}");
    assert!(
        events::said(&stderr, &[("event", "route"), ("action", "reached")]),
        "route not checked over TLS: {stderr}"
    );
    assert_eq!(events::summary(&stderr)["resumed"], 1, "{stderr}");
    assert_eq!(held.expect_success(Duration::from_secs(10)), "42");
    assert!(!pgb.is_paused());
    let tls_sessions = pg.psql(
        "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'app' AND ssl",
    );
    assert_ne!(
        tls_sessions, "0",
        "PgBouncer's server connection is not TLS"
    );

    // Channel binding is really checked: a role that logs in without SCRAM cannot bind.
    let trusted = with(
        &format!("postgresql://postgres@localhost:{}/postgres", pg.port),
        &format!("sslmode=verify-full&sslrootcert={ca_file}&channel_binding=require"),
    );
    let (out, stderr) = run(hook(
        "on-role-change",
        &["--check", "--postgres", &trusted, "--pgbouncer", &console],
        false,
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("channel binding"), "{stderr}");
}

#[test]
fn a_wrong_ca_a_wrong_name_and_an_expired_certificate_are_one_clear_line_each() {
    let ca = Ca::new("trusted");
    let other = Ca::new("other");
    let pg = Postgres::start_primary();
    let cases = [
        (
            other.issue("other-ca", &["IP:127.0.0.1"], false),
            "not signed by the CA in sslrootcert",
        ),
        (
            ca.issue("wrong-name", &["DNS:pgbouncer.example"], false),
            "not valid for host name \"127.0.0.1\"",
        ),
        (
            ca.issue("expired", &["IP:127.0.0.1"], true),
            "certificate has expired",
        ),
    ];
    let ca_file = ca.cert().display().to_string();
    let verify_full = format!("sslmode=verify-full&sslrootcert={ca_file}");
    for (cert, cause) in &cases {
        let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
        pgbouncer_tls(&pgb, "require", cert, "");
        let view = leader_view(&pgb.dir);
        let (out, stderr) = before_stop(&view, &with(&pgb.admin_url(), &verify_full), &[], false);
        assert_eq!(out.status.code(), Some(1), "{cause}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "one error line: {stderr}");
        assert!(errors[0].contains(cause), "want {cause:?}: {stderr}");
        assert!(!pgb.is_paused(), "{cause}: paused anyway");

        // libpq's weaker modes accept what they do not check.
        let (weaker, why) = match *cause {
            c if c.starts_with("not valid for host") => ("verify-ca", "verify-ca ignores the name"),
            c if c.starts_with("not signed") => ("require", "require checks no certificate"),
            _ => continue,
        };
        let url = with(
            &pgb.admin_url(),
            &format!("sslmode={weaker}&sslrootcert={ca_file}"),
        );
        let url = if weaker == "require" {
            with(&pgb.admin_url(), "sslmode=require")
        } else {
            url
        };
        let (out, stderr) = before_stop(&view, &url, &["--check"], false);
        assert!(out.status.success(), "{why}: {stderr}");
    }

    // A TLS-only Postgres named with the wrong CA: on-role-change --check says so in one line.
    postgres_tls_only(&pg, &other.issue("pg-other", &["IP:127.0.0.1"], false));
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let local = with(
        &format!("postgresql://postgres@127.0.0.1:{}/postgres", pg.port),
        &verify_full,
    );
    let (out, stderr) = run(hook(
        "on-role-change",
        &[
            "--check",
            "--postgres",
            &local,
            "--pgbouncer",
            &pgb.admin_url(),
        ],
        false,
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not signed by the CA in sslrootcert"),
        "{stderr}"
    );
    // And without sslmode the hint says TLS, not reachability.
    let plain = format!("postgresql://app@127.0.0.1:{}/postgres", pg.port);
    let (out, stderr) = run(hook(
        "on-role-change",
        &[
            "--check",
            "--postgres",
            &plain,
            "--pgbouncer",
            &pgb.admin_url(),
        ],
        false,
        &[("PGPASSWORD", APP_PASSWORD)],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("add sslmode=require"), "{stderr}");
}

#[test]
fn pgsslmode_require_leaves_a_socket_path_alone() {
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    let _mark = pgb.hooks_pause("tls@1");
    let socket = pg.socket_dir().display().to_string();
    let port = pg.port.to_string();
    // Patroni's environment: the local Postgres by its socket, PGSSLMODE=require for TCP.
    let (out, stderr) = run(hook(
        "on-role-change",
        &[
            "--pgbouncer",
            &pgb.admin_url(),
            "on_role_change",
            "primary",
            "demo",
        ],
        true,
        &[
            ("PGHOST", &socket),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGSSLMODE", "require"),
            ("PGCHANNELBINDING", "prefer"),
        ],
    ));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(events::summary(&stderr)["resumed"], 1, "{stderr}");
    assert!(!pgb.is_paused());
}
