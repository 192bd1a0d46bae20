//! The arm64 release binaries (`aarch64-unknown-linux-musl`, built by scripts/check-static)
//! on this host through `qemu-aarch64-static`, invoked explicitly: every fixture dry run
//! decides exactly like the tested binary, and one real PAUSE → RESUME against PgBouncer.
//! (scripts/test also runs the whole of tests/cli.rs against them: `PPH_TARGET`, see
//! tests/support/src/foreign.rs.)
//!
//! Without the arm64 binaries (or with ones older than the sources) each test says why and
//! passes, so that `cargo test` works before scripts/check-static; on CI (`CI=true`) that
//! fails instead: there the arm64 build is part of the suite.

use pph_support as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::foreign::{self, AARCH64};
use common::{PgBouncer, PgBouncerBuild, Postgres};

const TIMEOUT: Duration = Duration::from_secs(60);
const ADMIN_URL_EXAMPLE: &str = "postgresql://pgbouncer_admin@pgbouncer-admin:6432/pgbouncer";

/// The arm64 binary `name` under qemu, or None (after saying why) when it is not built and
/// this is not CI.
fn arm64(name: &str) -> Option<Command> {
    match foreign::command(AARCH64, name) {
        Ok(mut cmd) => {
            common::scrub_env(&mut cmd);
            Some(cmd)
        }
        Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("arm64: skipped, {e}");
            None
        }
        Err(e) => panic!("CI=true: {e}"),
    }
}

/// The binary cargo built for this test run (the one every other test file tests).
fn tested(name: &str) -> Command {
    let mut cmd = Command::new(common::bin(name));
    common::scrub_env(&mut cmd);
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).env_remove("RUST_LOG").current_dir("/");
    common::run_with_timeout(cmd, TIMEOUT)
}

/// (exit code, stdout): what a dry run decides. Logs (stderr) carry timestamps: not compared.
fn decision(cmd: Command, args: &[&str]) -> (Option<i32>, String) {
    let out = run(cmd, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every list-*.tsv fixture with the history-*.tsv of the same moment.
fn fixture_pairs() -> Vec<(PathBuf, PathBuf)> {
    let mut pairs = Vec::new();
    for dir in ["patroni3", "patroni304", "patroni4", "synthetic"] {
        let dir = repo().join("tests/fixtures").join(dir);
        let mut lists: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("list-") && n.ends_with(".tsv")
            })
            .collect();
        lists.sort();
        for list in lists {
            let name = list.file_name().unwrap().to_string_lossy().into_owned();
            let history = dir.join(name.replacen("list-", "history-", 1));
            let history = if history.exists() {
                history
            } else {
                repo().join("tests/fixtures/patroni4/history-after-1-switchover.tsv")
            };
            pairs.push((list, history));
        }
    }
    pairs
}

/// Every member named in a `patronictl list -f tsv` fixture, and one that is not.
fn members(list: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(list).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let col = header
        .iter()
        .position(|h| *h == "Member")
        .unwrap_or_else(|| panic!("{}: no Member column", list.display()));
    let mut names: Vec<String> = lines
        .filter_map(|l| l.split('\t').nth(col))
        .map(str::to_string)
        .collect();
    names.push("not-a-member".into());
    names
}

#[test]
fn version_is_the_packages() {
    for name in ["before-stop", "on-role-change"] {
        let Some(cmd) = arm64(name) else { return };
        let out = run(cmd, &["--version"]);
        assert!(out.status.success(), "{name} --version: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn every_fixture_dry_run_decides_like_the_tested_binary() {
    if arm64("before-stop").is_none() {
        return;
    }
    let pairs = fixture_pairs();
    assert!(pairs.len() >= 15, "fixtures not found: {pairs:?}");
    let mut actions = std::collections::BTreeSet::new();
    for (list, history) in &pairs {
        for member in members(list) {
            let args = [
                "--dry-run",
                "--member",
                &member,
                "--list-tsv",
                list.to_str().unwrap(),
                "--history-tsv",
                history.to_str().unwrap(),
                "--pgbouncer",
                ADMIN_URL_EXAMPLE,
            ];
            let got = decision(arm64("before-stop").unwrap(), &args);
            let want = decision(tested("before-stop"), &args);
            assert_eq!(got, want, "arm64 before-stop {}", args.join(" "));
            if let Some(a) = got.1.split("\"action\":\"").nth(1) {
                actions.insert(a.split('"').next().unwrap().to_string());
            }
        }
    }
    for a in ["pause", "skip"] {
        assert!(
            actions.contains(a),
            "no fixture gave {a:?}: the comparison is vacuous ({actions:?})"
        );
    }

    for (role, action) in [("primary", "resume"), ("replica", "skip")] {
        let args = ["--dry-run", "on_role_change", role, "pg"];
        let got = decision(arm64("on-role-change").unwrap(), &args);
        assert_eq!(got.0, Some(0), "on-role-change {}: {got:?}", args.join(" "));
        assert!(
            got.1.contains(&format!("\"action\":\"{action}\"")),
            "on-role-change {}: {got:?}",
            args.join(" ")
        );
        assert_eq!(got, decision(tested("on-role-change"), &args));
    }
}

fn events(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// The `result` of every per-PgBouncer event for `command` (PAUSE, RESUME), in order.
fn results(stderr: &str, command: &str) -> Vec<String> {
    events(stderr)
        .into_iter()
        .filter(|e| e["command"] == command)
        .filter_map(|e| e["result"].as_str().map(str::to_string))
        .collect()
}

fn hook(name: &str, args: &[String]) -> Option<(Output, String)> {
    let mut cmd = arm64(name)?;
    cmd.args(args)
        .env("PGBOUNCER_PASSWORD", PgBouncer::ADMIN_PASSWORD)
        .env("HOOKS_LOG_FORMAT", "json")
        .env("RUST_LOG", "info");
    let out = common::run_with_timeout(cmd, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Some((out, stderr))
}

#[test]
fn arm64_hooks_pause_and_resume_a_real_pgbouncer() {
    if arm64("before-stop").is_none() {
        return;
    }
    let pg = Postgres::start_primary();
    let pgb = PgBouncer::start(PgBouncerBuild::Trixie, "127.0.0.1", pg.port);
    common::spawn_psql(&pgb.app_url(), "SELECT 1").expect_success(Duration::from_secs(10));
    let view: &Path = &pgb.dir.join("list-m1.tsv");
    std::fs::write(
        view,
        "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\n\
         demo\tm1\t127.0.0.1:5432\tLeader\trunning\t1\t\n\
         demo\tm2\t127.0.0.1:5433\tReplica\tstreaming\t1\t0\n",
    )
    .unwrap();

    let args: Vec<String> = [
        "--member",
        "m1",
        "--list-tsv",
        view.to_str().unwrap(),
        "--pgbouncer",
        &pgb.admin_url(),
        // the safety net outlives the hook; tests/hooks.rs covers it
        "--max-pause",
        "0",
    ]
    .map(String::from)
    .into();
    // The pause's mark, as its safety net would hold it: the net is the same binary started
    // again by its own path, which fails here with "Exec format error" (qemu-user without
    // binfmt_misc), as it would not on an arm64 node. tests/hooks.rs covers the net itself.
    let _net = common::session::Session::open(
        &pgb.admin_url(),
        PgBouncer::ADMIN_PASSWORD,
        "pph-pause/m1@arm64",
    )
    .expect("the stand-in for the net's mark");
    let (out, stderr) = hook("before-stop", &args).unwrap();
    assert!(out.status.success(), "before-stop: {out:?}\n{stderr}");
    assert_eq!(results(&stderr, "PAUSE"), ["paused"], "{stderr}");
    assert!(pgb.is_paused(), "not paused after the arm64 before-stop");

    let mut held = common::spawn_psql(&pgb.app_url(), "SELECT 42");
    assert!(
        held.wait_timeout(Duration::from_secs(1)).is_none(),
        "a transaction went through a paused PgBouncer"
    );

    let args: Vec<String> = [
        "--postgres",
        &pg.url(),
        "--pgbouncer",
        &pgb.admin_url(),
        "on_role_change",
        "primary",
        "demo",
    ]
    .map(String::from)
    .into();
    let (out, stderr) = hook("on-role-change", &args).unwrap();
    assert!(out.status.success(), "on-role-change: {out:?}\n{stderr}");
    assert_eq!(results(&stderr, "RESUME"), ["resumed"], "{stderr}");
    assert_eq!(held.expect_success(Duration::from_secs(10)), "42");
    assert!(!pgb.is_paused());
}
