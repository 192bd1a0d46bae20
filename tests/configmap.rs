//! The hooks as a StackGres pod gets them: `scripts/configmap` builds and packs the static
//! binaries, `kubectl kustomize configmap/` renders the ConfigMaps, and
//! `scripts/validate-manifests --unpack-to DIR` lays them out as the SGCluster's volumes and
//! runs the SGCluster's own init container command with busybox (chroot, uid 999, empty
//! environment). What lands in the directory the patroni container mounts at /callbacks must
//! run with an empty environment and decide exactly like the binaries the other tests test.
//!
//! Needs root (chroot), busybox-static and kubectl: scripts/setup installs them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pph_support as common;

const BEFORE_STOP: &str = env!("CARGO_BIN_EXE_before-stop");
const ON_ROLE_CHANGE: &str = env!("CARGO_BIN_EXE_on-role-change");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run_script(args: &[&str]) -> String {
    let mut cmd = Command::new(repo().join(args[0]));
    cmd.args(&args[1..]).current_dir(repo());
    let (status, out, err) = common::run(&mut cmd, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    let text = format!("{out}{err}");
    assert!(
        status.success(),
        "{} exited with {status:?}:\n{text}",
        args.join(" ")
    );
    text
}

/// The directory the patroni container would see at /callbacks.
fn unpacked() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pph-configmap-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    run_script(&["scripts/configmap"]);
    let log = run_script(&[
        "scripts/validate-manifests",
        "-q",
        "--unpack-to",
        dir.to_str().unwrap(),
    ]);
    assert!(log.contains("unpacked like the pod"), "{log}");
    dir
}

fn exec(exe: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.args(args).env_clear().current_dir("/");
    common::run_with_timeout(cmd, Duration::from_secs(30))
}

/// (exit code, stdout): what a dry run decides. Logs (stderr) carry timestamps: not compared.
fn decision(exe: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = exec(exe, args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Every list-*.tsv fixture with the history-*.tsv of the same moment.
fn fixture_pairs() -> Vec<(PathBuf, PathBuf)> {
    let mut pairs = Vec::new();
    for dir in ["patroni3", "patroni304", "patroni4"] {
        let dir = repo().join("tests/fixtures").join(dir);
        let mut lists: Vec<_> = fs::read_dir(&dir)
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
                dir.join("history-after-1-switchover.tsv")
            };
            pairs.push((list, history));
        }
    }
    pairs
}

#[test]
fn hooks_from_the_rendered_configmaps_run_like_the_tested_ones() {
    let dir = unpacked();
    let names: Vec<String> = {
        let mut v: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names,
        ["before-stop", "on-role-change"],
        "in {}",
        dir.display()
    );
    let before_stop = dir.join("before-stop");
    let on_role_change = dir.join("on-role-change");

    for (exe, name) in [
        (&before_stop, "before-stop"),
        (&on_role_change, "on-role-change"),
    ] {
        let out = exec(exe, &["--version"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name} --version: {out:?}");
        assert_eq!(
            stdout.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} --version"
        );
    }

    // before-stop: every fixture, every member in it, the same decision as the tested binary.
    let pairs = fixture_pairs();
    assert!(pairs.len() >= 15, "fixtures not found: {pairs:?}");
    let mut actions = std::collections::BTreeSet::new();
    for (list, history) in &pairs {
        for member in ["m1", "m2", "m3", "pg-0"] {
            let args = [
                "--dry-run",
                "--member",
                member,
                "--list-tsv",
                list.to_str().unwrap(),
                "--history-tsv",
                history.to_str().unwrap(),
                "--pgbouncer",
                "postgresql://pgbouncer_admin@pgbouncer-admin:6432/pgbouncer",
            ];
            let got = decision(&before_stop, &args);
            let want = decision(Path::new(BEFORE_STOP), &args);
            assert_eq!(
                got,
                want,
                "before-stop {} differs from the tested binary",
                args.join(" ")
            );
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

    for role in ["primary", "replica"] {
        let args = ["--dry-run", "on_role_change", role, "pg"];
        let got = decision(&on_role_change, &args);
        assert_eq!(got.0, Some(0), "on-role-change {}: {got:?}", args.join(" "));
        assert_eq!(got, decision(Path::new(ON_ROLE_CHANGE), &args));
    }
    let _ = fs::remove_dir_all(&dir);
}
