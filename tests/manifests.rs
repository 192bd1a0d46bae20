//! The Kubernetes manifests (configmap/) and the docs (README.md, docs/stackgres.md) must not drift from
//! the binaries: every `--flag` given to `before-stop` / `on-role-change` there, and every
//! `HOOKS_*`, `PGBOUNCER_*` and `PATRONI_NAME` variable named in the manifests, must appear in
//! the binaries' `--help`. The YAML is scanned crudely as text (std only, no YAML parser).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pph_support as common;

const BEFORE_STOP: &str = env!("CARGO_BIN_EXE_before-stop");
const ON_ROLE_CHANGE: &str = env!("CARGO_BIN_EXE_on-role-change");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn help(exe: &str) -> String {
    let mut cmd = Command::new(exe);
    cmd.arg("--help").env_clear();
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{exe} --help exited with {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

fn manifests() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    yaml_files(&repo().join("configmap"), &mut files);
    assert!(!files.is_empty(), "no manifests under configmap/");
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
}

/// Every `HOOKS_…`, `PGBOUNCER_…` and `PATRONI_NAME` token (whole identifiers only, so
/// `PATRONI_NAMESPACE` is not `PATRONI_NAME`).
fn env_names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if is_ident(chars[i]) && (i == 0 || !is_ident(chars[i - 1])) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let ours = (word.starts_with("HOOKS_") && word.len() > 6)
                || (word.starts_with("PGBOUNCER_") && word.len() > 10)
                || word == "PATRONI_NAME";
            if ours {
                found.insert(word);
            }
        } else {
            i += 1;
        }
    }
    found
}

/// `--flag` tokens given to each binary: on a line that invokes `before-stop` or
/// `on-role-change`, the `--[a-z][a-z-]*` tokens after the name, up to the end of that
/// command (`&&`, `||`, `;`, `|`, a backtick or a closing quote).
fn flags_for(text: &str, binary: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(pos) = rest.find(binary) {
            let before = rest[..pos].chars().last();
            let after = &rest[pos + binary.len()..];
            rest = after;
            // the binary's name, not part of a longer word (e.g. "before-stopping")
            if matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                continue;
            }
            if matches!(after.chars().next(), Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                continue;
            }
            let end = ["&&", "||", ";", "|", "`", "\"", "'", "#"]
                .iter()
                .filter_map(|sep| after.find(sep))
                .min()
                .unwrap_or(after.len());
            for token in after[..end].split(|c: char| c.is_whitespace() || c == '=') {
                let flag = token.trim_end_matches([',', ')', '.', ']']);
                let ok = flag.len() > 2
                    && flag.starts_with("--")
                    && flag[2..].starts_with(|c: char| c.is_ascii_lowercase())
                    && flag[2..]
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '-');
                if ok {
                    found.insert(flag.to_string());
                }
            }
        }
    }
    found
}

/// Flags and env vars in `--help`: a flag as a whole word, an env var as `[env: NAME=` or
/// `[env: NAME]` (clap hides values of some).
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .any(|w| w == flag)
}

fn help_has_env(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]"))
}

#[test]
fn manifest_env_vars_exist_in_help() {
    let helps = [
        ("before-stop", help(BEFORE_STOP)),
        ("on-role-change", help(ON_ROLE_CHANGE)),
    ];
    let mut all = BTreeSet::new();
    let mut missing = Vec::new();
    for (path, text) in manifests() {
        for name in env_names(&text) {
            if !helps.iter().any(|(_, h)| help_has_env(h, &name)) {
                missing.push(format!("{}: {name}", path.display()));
            }
            all.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "environment variables named in the manifests but unknown to both binaries' --help:\n  {}",
        missing.join("\n  ")
    );
    // The scan is not vacuous: the deployment cannot work without these.
    for required in [
        "PGBOUNCER_URLS",
        "PGBOUNCER_PASSWORD_FILE",
        "HOOKS_PATRONI_URL",
    ] {
        assert!(
            all.contains(required),
            "the manifests no longer set {required}; found {all:?}"
        );
    }
}

#[test]
fn flags_in_manifests_and_runbook_exist_in_help() {
    let mut sources = manifests();
    for doc in ["README.md", "docs/stackgres.md", "docs/reference.md"] {
        let path = repo().join(doc);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{doc}: {e}"));
        sources.push((path, text));
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for (binary, exe) in [
        ("before-stop", BEFORE_STOP),
        ("on-role-change", ON_ROLE_CHANGE),
    ] {
        let h = help(exe);
        for (path, text) in &sources {
            for flag in flags_for(text, binary) {
                checked += 1;
                if !help_has_flag(&h, &flag) {
                    missing.push(format!("{}: {binary} {flag}", path.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags given to the hooks in the manifests/runbook but absent from their --help:\n  {}",
        missing.join("\n  ")
    );
    assert!(
        checked > 0,
        "no --flag given to the hooks was found: the scan is broken"
    );
}

#[test]
fn patroni_hooks_point_at_the_copied_binaries() {
    let all: String = manifests().into_iter().map(|(_, t)| t).collect();
    for needle in [
        "before_stop: /callbacks/before-stop",
        "on_role_change: /callbacks/on-role-change",
        "on_start: /callbacks/on-role-change",
        "on_restart: /callbacks/on-role-change",
        "mountPath: /callbacks",
    ] {
        assert!(all.contains(needle), "the manifests lost `{needle}`");
    }
}

#[test]
fn scanners_work() {
    let yaml = "- name: PGBOUNCER_URLS\n  # PATRONI_NAMESPACE is not ours, HOOKS_MAX_PAUSE is\n\
                command: [sh, -c, \"/callbacks/before-stop --check --log-format=json && pgbench --client 4\"]\n\
                on-role-change --dry-run on_role_change primary pg; echo --not-a-flag\n\
                the before-stopping --nope\n";
    assert_eq!(
        env_names(yaml).into_iter().collect::<Vec<_>>(),
        ["HOOKS_MAX_PAUSE", "PGBOUNCER_URLS"]
    );
    assert_eq!(
        flags_for(yaml, "before-stop")
            .into_iter()
            .collect::<Vec<_>>(),
        ["--check", "--log-format"]
    );
    assert_eq!(
        flags_for(yaml, "on-role-change")
            .into_iter()
            .collect::<Vec<_>>(),
        ["--dry-run"]
    );
    let h = "      --max-pause <DURATION>\n          [env: HOOKS_MAX_PAUSE=]\n      --pgbouncer <URL>\n          [env: PGBOUNCER_URLS]\n";
    assert!(help_has_flag(h, "--max-pause") && help_has_flag(h, "--pgbouncer"));
    assert!(!help_has_flag(h, "--max"));
    assert!(help_has_env(h, "HOOKS_MAX_PAUSE") && help_has_env(h, "PGBOUNCER_URLS"));
    assert!(!help_has_env(h, "HOOKS_MAX"));
}
