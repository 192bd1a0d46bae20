//! Both binaries from the outside, with no servers: dry runs, exit codes, messages, `--help`.

use pph_support as common;

use common::events;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LEADER_M1: &str = "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\n\
                         demo\tm1\t10.0.0.1:5432\tLeader\trunning\t3\t\n\
                         demo\tm2\t10.0.0.2:5432\tReplica\tstreaming\t3\t0\n";
const NO_LEADER: &str = "Cluster\tMember\tHost\tRole\tState\tTL\tLag in MB\n\
                         demo\tm1\t10.0.0.1:5432\tReplica\tstopping\t\t\n\
                         demo\tm2\t10.0.0.2:5432\tReplica\tstreaming\t3\t0\n";
const HISTORY_M2_NEWEST: &str = "TL\tLSN\tReason\tTimestamp\tNew Leader\n\
                                 1\t25165984\tno recovery target specified\t2026-11-27T10:00:00+00:00\tm1\n\
                                 2\t33554592\tno recovery target specified\t2026-11-27T10:05:00+00:00\tm2\n";
const HISTORY_M1_NEWEST: &str = "TL\tLSN\tReason\tTimestamp\tNew Leader\n\
                                 1\t25165984\tno recovery target specified\t2026-11-27T10:00:00+00:00\tm2\n\
                                 2\t33554592\tno recovery target specified\t2026-11-27T10:05:00+00:00\tm1\n";

/// A scratch directory for one test, removed when it goes out of scope.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new(name: &str) -> Scratch {
        Scratch(
            tempfile::Builder::new()
                .prefix(&format!("pph-cli-{name}-"))
                .tempdir()
                .unwrap(),
        )
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.file(name, &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }
}

fn hook(name: &str) -> Command {
    let mut cmd = common::client(common::bin(name));
    for var in [
        "PATRONI_NAME",
        "PGBOUNCER_URLS",
        "PGBOUNCER_PASSWORD",
        "PGBOUNCER_PASSWORD_FILE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn run(mut cmd: Command, stdin: Option<&str>) -> (Option<i32>, String, String) {
    let out: Output = match stdin {
        None => common::run_with_timeout(cmd, Duration::from_secs(30)),
        Some(text) => {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
            drop(child.stdin.take());
            child.wait_with_output().unwrap()
        }
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dry_before_stop(member: &str, list: &Path, history: &Path) -> (Option<i32>, String, String) {
    run(dry_before_stop_cmd(member, list, history), None)
}

fn dry_before_stop_cmd(member: &str, list: &Path, history: &Path) -> Command {
    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", member, "--list-tsv"])
        .arg(list)
        .arg("--history-tsv")
        .arg(history)
        .args([
            "--pgbouncer",
            "postgresql://admin:s3cret@pgbouncer:6432/pgbouncer",
        ]);
    cmd
}

#[test]
fn dry_run_decisions() {
    let s = Scratch::new("decisions");
    let leader = s.file("leader.tsv", LEADER_M1);
    let no_leader = s.file("no-leader.tsv", NO_LEADER);
    let m2_newest = s.file("h-m2.tsv", HISTORY_M2_NEWEST);
    let m1_newest = s.file("h-m1.tsv", HISTORY_M1_NEWEST);
    let empty_history = s.file("h-empty.tsv", "TL\tLSN\tReason\tTimestamp\tNew Leader\n");
    let table = [
        ("m1", &leader, &m2_newest, "pause"),
        ("m2", &leader, &m2_newest, "skip"),
        ("m1", &no_leader, &m1_newest, "pause"),
        // m1 led an older timeline only: a restart of it must not pause.
        ("m1", &no_leader, &m2_newest, "skip"),
        ("m1", &no_leader, &empty_history, "pause"),
    ];
    for (member, list, history, action) in table {
        let mut cmd = dry_before_stop_cmd(member, list, history);
        cmd.args(["--log-format", "json"]);
        let (code, stdout, stderr) = run(cmd, None);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(
            stdout.lines().count(),
            1,
            "exactly one JSON object: {stdout}"
        );
        assert!(
            stdout.starts_with(&format!("{{\"action\":\"{action}\",")),
            "{member}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("\"member\":\"{member}\"")),
            "{stdout}"
        );
        assert!(
            stdout.contains("\"targets\":[\"postgresql://admin@pgbouncer:6432/pgbouncer\"]"),
            "{stdout}"
        );
        assert!(
            !stdout.contains("s3cret") && !stderr.contains("s3cret"),
            "password leaked"
        );
        let decided = events::last(&stderr, &[("event", "decided")]);
        assert_eq!(decided["member"], member, "{stderr}");
        assert_eq!(decided["source"], "files", "{stderr}");
        assert_eq!(events::summary(&stderr)["outcome"], "dry run", "{stderr}");
    }
}

#[test]
fn dry_run_reads_stdin_and_crlf() {
    let s = Scratch::new("stdin");
    let history = s.file("h.tsv", HISTORY_M2_NEWEST);
    let mut cmd = hook("before-stop");
    cmd.args([
        "--dry-run",
        "--member",
        "m1",
        "--list-tsv",
        "-",
        "--history-tsv",
    ])
    .arg(&history);
    let (code, stdout, stderr) = run(cmd, Some(&LEADER_M1.replace('\n', "\r\n")));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"action\":\"pause\""), "{stdout}");
}

#[test]
fn bad_cluster_views_are_one_clear_line_and_exit_1() {
    let s = Scratch::new("bad");
    let history = s.file("h.tsv", HISTORY_M2_NEWEST);
    let table = [
        ("", "list output is empty"),
        ("Cluster\tHost\tRole\n", "no `Member` column"),
        ("Member\tHost\n", "no `Role` column"),
        (
            "Cluster\tMember\tRole\tState\ndemo\tm1\tLeader\n",
            "truncated",
        ),
        // an unknown role is no longer an error (issue 10), an empty one is
        (
            "Cluster\tMember\tRole\ndemo\tm1\t\n",
            "gives member \"m1\" no role",
        ),
        (
            "Cluster\tMember\tRole\ndemo\tm9\tLeader\n",
            "member \"m1\" is not in the cluster view",
        ),
        ("+--------+\n| Member |\n", "no `Member` column"),
    ];
    for (text, message) in table {
        let list = s.file("list.tsv", text);
        let (code, stdout, stderr) = dry_before_stop("m1", &list, &history);
        assert_eq!(code, Some(1), "{text:?}: {stderr}");
        assert!(stdout.is_empty(), "no JSON on failure: {stdout}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(message), "{text:?}: {stderr}");
    }
}

#[test]
fn patronictl_problems() {
    let s = Scratch::new("patronictl");
    let args_log = s.path().join("args.log");
    let good = s.script(
        "good",
        &format!(
            "echo \"$@\" >> {log}\ncase \"$*\" in *list*) printf '{list}' ;; *) printf '{history}' ;; esac",
            log = args_log.display(),
            list = LEADER_M1.replace('\t', "\\t").replace('\n', "\\n"),
            history = HISTORY_M2_NEWEST.replace('\t', "\\t").replace('\n', "\\n"),
        ),
    );
    let failing = s.script("failing", "echo 'Error: cannot reach the DCS' >&2; exit 3");
    let garbage = s.script("garbage", "echo '<html>nope</html>'");
    let hanging = s.script("hanging", "exec sleep 30");
    let missing = s.path().join("not-there");

    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", "m1", "--patronictl"])
        .arg(&good)
        .args(["--patronictl-arg=--config-file=/etc/patroni.yml"]);
    let (code, stdout, stderr) = run(cmd, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"action\":\"pause\""), "{stdout}");
    let calls = std::fs::read_to_string(&args_log).unwrap();
    assert!(
        calls.contains("--config-file=/etc/patroni.yml list -f json"),
        "{calls}"
    );
    assert!(
        calls.contains("--config-file=/etc/patroni.yml history -f json"),
        "{calls}"
    );

    let table: [(&Path, &str); 4] = [
        (&failing, "cannot reach the DCS"),
        (&garbage, "no `Member` column"),
        (&hanging, "did not finish within 1s"),
        (&missing, "set --patronictl"),
    ];
    for (program, message) in table {
        let mut cmd = hook("before-stop");
        cmd.args([
            "--dry-run",
            "--member",
            "m1",
            "--patronictl-timeout",
            "1s",
            "--patronictl",
        ])
        .arg(program);
        let started = Instant::now();
        let (code, _, stderr) = run(cmd, None);
        assert_eq!(code, Some(1), "{program:?}: {stderr}");
        assert!(stderr.contains(message), "{program:?}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not bounded: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let s = Scratch::new("usage");
    let list = s.file("l.tsv", LEADER_M1);
    let table: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "before-stop",
            vec!["--member", "m1"],
            "no PgBouncer to pause",
        ),
        (
            "before-stop",
            vec!["--dry-run", "--list-tsv", "-", "--history-tsv", "-"],
            "cannot both read standard input",
        ),
        (
            "before-stop",
            vec!["--pause-timeout", "soon"],
            "not a duration",
        ),
        (
            "before-stop",
            vec!["--pgbouncer", "postgresql://a:pw@h:notaport/x"],
            "is not a PostgreSQL URL",
        ),
        (
            "on-role-change",
            vec!["on_role_change", "primary"],
            "expected ACTION ROLE SCOPE",
        ),
        ("on-role-change", vec![], "no PgBouncer to resume"),
        (
            "on-role-change",
            vec!["--log-format", "xml"],
            "invalid value 'xml'",
        ),
    ];
    for (name, args, message) in table {
        let mut cmd = hook(name);
        cmd.args(&args);
        if name == "before-stop" {
            cmd.env("HOOKS_LIST_TSV", &list);
        }
        let (code, _, stderr) = run(cmd, None);
        assert_eq!(code, Some(2), "{name} {args:?}: {stderr}");
        assert!(stderr.contains(message), "{name} {args:?}: {stderr}");
        assert!(!stderr.contains("pw@"), "password leaked: {stderr}");
    }
}

#[test]
fn on_role_change_dry_runs() {
    let table: Vec<(Vec<&str>, &str)> = vec![
        (vec!["on_role_change", "primary", "demo"], "resume"),
        (vec!["on_role_change", "master", "demo"], "resume"),
        (vec!["on_restart", "primary", "demo"], "resume"),
        (vec!["on_start", "standby_leader", "demo"], "resume"),
        (vec![], "resume"),
        (vec!["on_role_change", "replica", "demo"], "skip"),
        (vec!["on_stop", "primary", "demo"], "skip"),
        (vec!["on_role_change", "sovereign", "demo"], "skip"),
    ];
    for (args, action) in table {
        let mut cmd = hook("on-role-change");
        cmd.arg("--dry-run").args(&args);
        let (code, stdout, stderr) = run(cmd, None);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(
            stdout.starts_with(&format!("{{\"action\":\"{action}\",")),
            "{args:?}: {stdout}"
        );
    }
}

#[test]
fn help_documents_every_flag_with_its_env_var() {
    let both = [
        ("--pgbouncer", "PGBOUNCER_URLS"),
        ("--pgbouncer-password-file", "PGBOUNCER_PASSWORD_FILE"),
        ("--connect-timeout", "HOOKS_CONNECT_TIMEOUT"),
        ("--command-timeout", "HOOKS_COMMAND_TIMEOUT"),
        ("--dry-run", "HOOKS_DRY_RUN"),
        ("--check", "HOOKS_CHECK"),
        ("--log-format", "HOOKS_LOG_FORMAT"),
    ];
    let before_stop = [
        ("--member", "PATRONI_NAME"),
        ("--patronictl", "HOOKS_PATRONICTL"),
        ("--patronictl-arg", "HOOKS_PATRONICTL_ARGS"),
        ("--patronictl-timeout", "HOOKS_PATRONICTL_TIMEOUT"),
        ("--patroni-url", "HOOKS_PATRONI_URL"),
        ("--list-tsv", "HOOKS_LIST_TSV"),
        ("--history-tsv", "HOOKS_HISTORY_TSV"),
        ("--pause-timeout", "HOOKS_PAUSE_TIMEOUT"),
        ("--max-pause", "HOOKS_MAX_PAUSE"),
    ];
    let on_role_change = [
        ("--postgres", "HOOKS_POSTGRES_URL"),
        ("--poll-interval", "HOOKS_POLL_INTERVAL"),
        ("--promote-timeout", "HOOKS_PROMOTE_TIMEOUT"),
        ("--upstream", "HOOKS_UPSTREAM_URLS"),
        ("--route-timeout", "HOOKS_ROUTE_TIMEOUT"),
    ];
    for (name, own) in [
        ("before-stop", &before_stop[..]),
        ("on-role-change", &on_role_change[..]),
    ] {
        let mut cmd = hook(name);
        cmd.arg("--help")
            .env("PGBOUNCER_URLS", "postgresql://a:leaked@h/pgbouncer");
        let (code, help, _) = run(cmd, None);
        assert_eq!(code, Some(0));
        for (flag, env) in both.iter().chain(own) {
            let line = help
                .lines()
                .position(|l| {
                    let l = l.trim_start();
                    l == *flag || l.starts_with(&format!("{flag} "))
                })
                .unwrap_or_else(|| panic!("{name} --help lacks {flag}:\n{help}"));
            let block: String = help
                .lines()
                .skip(line)
                .take(8)
                .collect::<Vec<_>>()
                .join("\n");
            assert!(
                block.contains(&format!("env: {env}")),
                "{name} {flag} lacks [env: {env}]:\n{block}"
            );
        }
        assert!(help.contains("PGBOUNCER_PASSWORD"), "{help}");
        assert!(help.contains("Exit codes"), "{help}");
        assert!(!help.contains("leaked"), "env value shown in --help");
        let mut cmd = hook(name);
        cmd.arg("--version");
        let (code, version, _) = run(cmd, None);
        assert_eq!(code, Some(0));
        assert!(version.starts_with(name), "{version}");
    }
}

#[test]
fn unreachable_local_postgres_and_missing_password_file() {
    let port = common::free_port();
    let mut cmd = hook("on-role-change");
    cmd.args([
        "on_role_change",
        "primary",
        "demo",
        "--no-detach",
        "--promote-timeout",
        "1s",
    ])
    .args([
        "--postgres",
        &format!("postgresql://postgres@127.0.0.1:{port}/postgres"),
    ])
    .args(["--pgbouncer", "postgresql://admin@127.0.0.1:1/pgbouncer"]);
    let started = Instant::now();
    let (code, _, stderr) = run(cmd, None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("did not leave recovery within 1s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("refused"),
        "the last error is named: {stderr}"
    );
    assert!(stderr.contains("NOT resumed"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let s = Scratch::new("password-file");
    let list = s.file("l.tsv", LEADER_M1);
    let mut cmd = hook("before-stop");
    cmd.args(["--member", "m1", "--list-tsv"])
        .arg(&list)
        .args(["--pgbouncer", "postgresql://admin@127.0.0.1:1/pgbouncer"])
        .arg("--pgbouncer-password-file")
        .arg(s.path().join("no-such-secret"));
    let (code, _, stderr) = run(cmd, None);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot read --pgbouncer-password-file"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_patroni_api_falls_back_to_patronictl_output() {
    let s = Scratch::new("api-fallback");
    let list = s.file("l.tsv", LEADER_M1);
    let history = s.file("h.tsv", HISTORY_M2_NEWEST);
    let port = common::free_port();
    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", "m1", "--patronictl-timeout", "2s"])
        .args(["--patroni-url", &format!("http://127.0.0.1:{port}")])
        .arg("--list-tsv")
        .arg(&list)
        .arg("--history-tsv")
        .arg(&history);
    cmd.args(["--log-format", "json"]);
    let (code, stdout, stderr) = run(cmd, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        events::last(&stderr, &[("event", "decided")])["source"],
        "files",
        "{stderr}"
    );
    assert!(stdout.contains("\"action\":\"pause\""), "{stdout}");

    let mut cmd = hook("before-stop");
    cmd.args([
        "--dry-run",
        "--member",
        "m1",
        "--patroni-url",
        "https://127.0.0.1:8008",
    ]);
    let (code, _, stderr) = run(cmd, None);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("only http:// is supported"), "{stderr}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let s = Scratch::new("json");
    let list = s.file("l.tsv", LEADER_M1);
    let mut cmd = hook("before-stop");
    cmd.args([
        "--dry-run",
        "--member",
        "m1",
        "--log-format",
        "json",
        "--list-tsv",
    ])
    .arg(&list)
    .env("HOOKS_HISTORY_TSV", &list);
    let (code, stdout, stderr) = run(cmd, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("\"action\":\"pause\""));
    let said = events::parse(&stderr);
    assert!(!said.is_empty(), "{stderr}");
    assert!(
        stderr.lines().all(|line| line.starts_with('{')) && said.len() == stderr.lines().count(),
        "every line one JSON object: {stderr}"
    );
    for value in &said {
        assert!(
            value.get("level").is_some() && value.get("message").is_some(),
            "{value}"
        );
    }
    let last = said.last().unwrap();
    assert_eq!(last["event"], "summary", "{stderr}");
    assert_eq!(last["hook"], "before-stop", "{stderr}");
    assert_eq!(last["outcome"], "dry run", "{stderr}");
}

#[test]
fn a_patroni_api_that_accepts_but_never_answers_is_raced_by_patronictl() {
    // What Patroni's REST API does after SIGTERM: the socket accepts, nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let s = Scratch::new("api-silent");
    let list = s.file("l.tsv", LEADER_M1);
    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", "m1"])
        .args(["--patroni-url", &format!("http://127.0.0.1:{port}")])
        .arg("--list-tsv")
        .arg(&list)
        .arg("--history-tsv")
        .arg(&list);
    cmd.args(["--log-format", "json"]);
    let started = Instant::now();
    let (code, stdout, stderr) = run(cmd, None);
    let took = started.elapsed();
    drop(silent);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        events::last(&stderr, &[("event", "decided")])["source"],
        "files",
        "{stderr}"
    );
    assert!(stdout.contains("\"action\":\"pause\""), "{stdout}");
    assert!(
        took < Duration::from_secs(3),
        "waited {took:?} for a silent REST API"
    );
}

/// A Patroni REST API stand-in on 127.0.0.1 that answers `GET /cluster` and `GET /history`
/// (m1 the leader) after `delay`, for `connections` connections.
fn slow_patroni_api(delay: Duration, connections: usize) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = [0u8; 1024];
                let n = stream.read(&mut request).unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                let body = if request.starts_with("GET /history") {
                    r#"[[1, 25165984, "no recovery target specified", "2026-11-27T10:00:00+00:00", "m2"]]"#
                } else {
                    r#"{"members": [{"name": "m1", "role": "leader", "state": "running"}, {"name": "m2", "role": "replica", "state": "streaming"}]}"#
                };
                std::thread::sleep(delay);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

#[test]
fn a_slow_patroni_api_still_wins_over_a_patronictl_that_fails() {
    let port = slow_patroni_api(Duration::from_millis(200), 2);
    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", "m1", "--log-format", "json"])
        .args(["--patroni-url", &format!("http://127.0.0.1:{port}")])
        .args(["--patronictl", "/nonexistent/patronictl"]);
    let (code, stdout, stderr) = run(cmd, None);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        events::last(&stderr, &[("event", "decided")])["source"],
        "rest",
        "{stderr}"
    );
    assert!(stdout.contains("\"action\":\"pause\""), "{stdout}");
}

#[test]
fn every_source_failing_names_both_reasons() {
    let s = Scratch::new("both-fail");
    let port = common::free_port();
    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", "m1", "--log-format", "json"])
        .args(["--patroni-url", &format!("http://127.0.0.1:{port}")])
        .arg("--patronictl")
        .arg(s.script("patronictl", "echo 'etcd is down' >&2; exit 1"));
    let (code, _, stderr) = run(cmd, None);
    assert_eq!(code, Some(1), "{stderr}");
    // The failed run's summary carries the reason, in words, for the DBA.
    let summary = events::summary(&stderr);
    assert_eq!(summary["outcome"], "failed", "{stderr}");
    let reason = summary["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("127.0.0.1") && reason.contains("etcd is down"),
        "{stderr}"
    );
}

#[test]
fn one_timeout_bounds_the_whole_run() {
    let s = Scratch::new("deadline");
    // A patronictl that hangs: the run ends at --timeout, not at --patronictl-timeout.
    let mut cmd = hook("before-stop");
    cmd.args([
        "--member",
        "m1",
        "--timeout",
        "1s",
        "--patronictl-timeout",
        "20s",
    ])
    .arg("--patronictl")
    .arg(s.script("patronictl", "exec sleep 30"))
    .args(["--pgbouncer", "postgresql://admin@127.0.0.1:1/pgbouncer"]);
    let started = Instant::now();
    let (code, _, stderr) = run(cmd, None);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    assert!(stderr.contains("--timeout"), "{stderr}");

    // A PgBouncer that accepts and never answers: --connect-timeout 20s, but --timeout 1s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let list = s.file("l.tsv", LEADER_M1);
    let mut cmd = hook("before-stop");
    cmd.args([
        "--member",
        "m1",
        "--timeout",
        "1s",
        "--connect-timeout",
        "20s",
    ])
    .args(["--max-pause", "0", "--log-format", "json", "--list-tsv"])
    .arg(&list)
    .arg("--history-tsv")
    .arg(&list)
    .args([
        "--pgbouncer",
        &format!("postgresql://admin@127.0.0.1:{port}/pgbouncer"),
    ]);
    let started = Instant::now();
    let (code, _, stderr) = run(cmd, None);
    let took = started.elapsed();
    drop(silent);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}: {stderr}");
    assert_eq!(
        events::summary(&stderr)["outcome"],
        "nothing paused",
        "{stderr}"
    );
}

#[test]
fn url_lists_passwords_and_tls_settings() {
    let s = Scratch::new("urls");
    let list = s.file("l.tsv", LEADER_M1);
    let dry = |urls: &str| {
        let mut cmd = hook("before-stop");
        cmd.args(["--dry-run", "--member", "m1", "--list-tsv"])
            .arg(&list)
            .arg("--history-tsv")
            .arg(&list)
            .env("PGBOUNCER_URLS", urls);
        run(cmd, None)
    };
    // A comma in a password and a multi-host URL do not split the list.
    let (code, stdout, stderr) = dry(
        "postgresql://admin:pa,ss@pgb-a:6432/pgbouncer,postgresql://admin@pgb-b:6432,pgb-c:6432/pgbouncer",
    );
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        report["targets"].as_array().map(Vec::len),
        Some(2),
        "{stdout}"
    );
    assert!(
        !stdout.contains("pa,ss") && !stderr.contains("pa,ss"),
        "{stdout}{stderr}"
    );
    // TLS settings that cannot work are a usage error in one clear line, exit 2, the
    // password not shown; TLS itself is accepted (the dry run connects to nothing).
    for (url, cause) in [
        (
            "postgresql://admin:s3cret@pgb:6432/pgbouncer?sslmode=verify-full",
            "needs the CA file",
        ),
        (
            "postgresql://admin@pgb:6432/pgbouncer?password=s3cret&sslmode=verify-everything",
            "not a libpq sslmode",
        ),
        (
            "postgresql://admin@pgb:6432/pgbouncer?channel_binding=require",
            "channel_binding=require needs TLS",
        ),
        (
            "postgresql://admin@pgb:6432/pgbouncer?sslmode=verify-full&sslrootcert=system",
            "sslrootcert=system",
        ),
    ] {
        let (code, _, stderr) = dry(url);
        assert_eq!(code, Some(2), "{url}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(cause) && !stderr.contains("s3cret"),
            "{stderr}"
        );
    }
    let (code, _, stderr) =
        dry("postgresql://admin@pgb:6432/pgbouncer?sslmode=verify-full&sslrootcert=/etc/ca.crt");
    assert_eq!(code, Some(0), "{stderr}");
}

/// docs/reference.md ends with each binary's `--help`, between `<!-- help:NAME -->` and
/// `<!-- /help -->`: they must be what the binaries print. `PPH_UPDATE_REFERENCE=1` rewrites
/// them instead.
#[test]
fn the_reference_shows_each_binary_s_help() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/reference.md");
    let mut text = std::fs::read_to_string(&path).unwrap();
    let mut stale = Vec::new();
    for name in ["before-stop", "on-role-change", "pgbouncer-watchdog"] {
        let mut cmd = Command::new(common::bin(name));
        cmd.env_clear().arg("--help");
        let (code, help, stderr) = run(cmd, None);
        assert_eq!(code, Some(0), "{stderr}");
        let open = format!("<!-- help:{name} -->\n");
        let start = text.find(&open).expect("the opening marker") + open.len();
        let end = start
            + text[start..]
                .find("<!-- /help -->")
                .expect("the closing marker");
        let block = format!("```text\n{}\n```\n", help.trim_end());
        if text[start..end] != block {
            stale.push(name);
            text.replace_range(start..end, &block);
        }
    }
    if std::env::var_os("PPH_UPDATE_REFERENCE").is_some() {
        std::fs::write(&path, text).unwrap();
    } else {
        assert!(
            stale.is_empty(),
            "docs/reference.md does not show the current --help of {stale:?}: run PPH_UPDATE_REFERENCE=1 cargo test --test cli the_reference"
        );
    }
}

#[test]
fn a_failed_run_ends_with_a_summary_event_too() {
    let s = Scratch::new("failed-summary");
    let list = s.file("l.tsv", "");
    let mut cmd = hook("before-stop");
    cmd.args(["--dry-run", "--member", "m1", "--log-format", "json"])
        .arg("--list-tsv")
        .arg(&list)
        .arg("--history-tsv")
        .arg(&list);
    let (code, _, stderr) = run(cmd, None);
    assert_eq!(code, Some(1), "{stderr}");
    let said = events::parse(&stderr);
    assert_eq!(said.len(), stderr.lines().count(), "{stderr}");
    let last = said.last().expect("a summary event");
    assert_eq!(last["event"], "summary", "{stderr}");
    assert_eq!(last["hook"], "before-stop", "{stderr}");
    assert_eq!(last["outcome"], "failed", "{stderr}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("list output is empty"),
        "{stderr}"
    );

    let mut cmd = hook("on-role-change");
    cmd.args(["--log-format", "json", "only-one-argument"]);
    let (code, _, stderr) = run(cmd, None);
    assert_eq!(code, Some(2), "{stderr}");
    let said = events::parse(&stderr);
    assert_eq!(said.len(), stderr.lines().count(), "{stderr}");
    let last = said.last().expect("a summary event");
    assert_eq!(last["event"], "summary", "{stderr}");
    assert_eq!(last["outcome"], "usage error", "{stderr}");
}

/// The watchdog has its own face: a flag of the hooks is a usage error there, not ignored, and
/// so is the watch mode on a hook.
#[test]
fn the_watchdog_refuses_what_is_not_its_own() {
    let url = "postgresql://admin@127.0.0.1:6432/pgbouncer";
    let table: [(&str, &[&str]); 7] = [
        (
            "pgbouncer-watchdog",
            &["--pgbouncer", url, "--promote-timeout", "5s"],
        ),
        ("pgbouncer-watchdog", &["--pgbouncer", url, "--dry-run"]),
        (
            "pgbouncer-watchdog",
            &["--pgbouncer", url, "on_role_change", "primary", "x"],
        ),
        (
            "pgbouncer-watchdog",
            &["--pgbouncer", url, "--max-pause", "0"],
        ),
        ("pgbouncer-watchdog", &["--status"]),
        ("pgbouncer-watchdog", &["--max-pause", "5s"]),
        ("on-role-change", &["--watch", "--pgbouncer", url]),
    ];
    for (name, args) in table {
        let mut cmd = hook(name);
        cmd.args(args);
        let (code, _, stderr) = run(cmd, None);
        assert_eq!(code, Some(2), "{name} {args:?}: {stderr}");
        assert!(
            !stderr.trim().is_empty(),
            "{name} {args:?}: no reason given"
        );
    }
}
