//! The hooks as a StackGres pod gets them: `scripts/configmap` builds and packs the static
//! binaries, `kubectl kustomize configmap/` renders the ConfigMaps, and [`unpack_like_the_pod`]
//! lays them out as the SGCluster's volumes in a scratch root and runs the SGCluster's own
//! init container command there with busybox (chroot, uid 999 like StackGres's pods, empty
//! environment). What lands in the directory the patroni container mounts at /callbacks must
//! run with an empty environment and decide exactly like the binaries the other tests test.
//!
//! Needs root (chroot), busybox-static and kubectl: scripts/setup installs them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use pph_support as common;
use pph_support::manifests::kube::{self, Volume};
use pph_support::manifests::stackgres::{self as sg, SgCluster};
use pph_support::manifests::{self as m};
use serde_json::Value;

const BEFORE_STOP: &str = env!("CARGO_BIN_EXE_before-stop");
const ON_ROLE_CHANGE: &str = env!("CARGO_BIN_EXE_on-role-change");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{tool} not found (scripts/setup installs it)"))
}

/// The files a configMap or projected-configMap volume shows: path -> (bytes, mode); `None`
/// for an emptyDir.
fn volume_files(
    vol: &Volume,
    config_maps: &BTreeMap<&str, &Value>,
) -> Option<BTreeMap<String, (Vec<u8>, u32)>> {
    if vol.empty_dir.is_some() {
        return None;
    }
    // (ConfigMap name, items, mode) per source; Kubernetes' default mode is 0644
    let sources: Vec<(String, Vec<kube::KeyToPath>, i32)> = if let Some(c) = &vol.config_map {
        vec![(
            c.name.clone(),
            c.items.clone(),
            c.default_mode.unwrap_or(0o644),
        )]
    } else if let Some(p) = &vol.projected {
        p.sources
            .iter()
            .filter_map(|s| s.config_map.as_ref())
            .map(|c| {
                (
                    c.name.clone(),
                    c.items.clone(),
                    p.default_mode.unwrap_or(0o644),
                )
            })
            .collect()
    } else {
        panic!(
            "volume {}: only emptyDir, configMap and projected configMap volumes are laid out here",
            vol.name
        )
    };
    let mut files = BTreeMap::new();
    for (name, items, mode) in sources {
        let cm = config_maps
            .get(name.as_str())
            .unwrap_or_else(|| panic!("volume {}: ConfigMap {name} not rendered", vol.name));
        let mut content: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            content.insert(
                k.clone(),
                v.as_str().unwrap_or_default().as_bytes().to_vec(),
            );
        }
        for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
            let bytes = m::base64_decode(v.as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("ConfigMap {name} {k}: {e}"));
            content.insert(k.clone(), bytes);
        }
        if items.is_empty() {
            for (k, v) in content {
                files.insert(k, (v, mode as u32));
            }
        } else {
            for it in items {
                let v = content
                    .get(&it.key)
                    .unwrap_or_else(|| panic!("ConfigMap {name} has no key {}", it.key));
                files.insert(it.path.clone(), (v.clone(), it.mode.unwrap_or(mode) as u32));
            }
        }
    }
    Some(files)
}

/// Does what a pod does at start: lays the rendered ConfigMaps out as the SGCluster's custom
/// volumes in a scratch root, runs each init container's command there with busybox (chroot,
/// the pod's uid, `PATH=/bin` only) and copies what the patroni container sees at /callbacks
/// into `dest`. Returns the names copied; `Err` when an init container fails, as the pod would
/// not start.
fn unpack_like_the_pod(docs: &[Value], dest: &Path) -> Result<Vec<String>, String> {
    let busybox = which("busybox");
    let chroot = which("chroot");
    let cl: SgCluster = kube::parse(
        m::of_kind(docs, "SGCluster")
            .next()
            .expect("no SGCluster rendered"),
    )
    .unwrap_or_else(|e| panic!("SGCluster: {e}"));
    let pods = &cl.spec.pods;
    let config_maps: BTreeMap<&str, &Value> = m::of_kind(docs, "ConfigMap")
        .map(|c| (m::name(c), c))
        .collect();
    // StackGres names custom volumes custom-<name> (sg::SRC_VOLUME_PREFIX)
    let volumes: BTreeMap<String, &Volume> = pods
        .custom_volumes
        .iter()
        .map(|v| (format!("{}{}", sg::VOLUME_PREFIX, v.name), v))
        .collect();

    let scratch = tempfile::Builder::new()
        .prefix("pph-pod-")
        .tempdir()
        .unwrap();
    let root = scratch.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap(); // uid 999 must enter
    fs::create_dir(root.join("bin")).unwrap();
    fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(&busybox).arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }

    // volume name -> the directory standing for it in the scratch root
    let mut laid_out: BTreeMap<String, PathBuf> = BTreeMap::new();
    assert!(
        !pods.custom_init_containers.is_empty(),
        "the SGCluster has no init container to unpack the hooks"
    );
    for c in &pods.custom_init_containers {
        for mnt in &c.volume_mounts {
            let at = root.join(mnt.mount_path.trim_start_matches('/'));
            if let Some(dir) = laid_out.get(&mnt.name) {
                if *dir != at {
                    fs::create_dir_all(at.parent().unwrap()).unwrap();
                    symlink(dir, &at).unwrap();
                }
                continue;
            }
            let vol = volumes.get(&mnt.name).unwrap_or_else(|| {
                panic!(
                    "init container {} mounts {}: no such custom volume",
                    c.name, mnt.name
                )
            });
            fs::create_dir_all(&at).unwrap();
            match volume_files(vol, &config_maps) {
                // an emptyDir is writable by the pod
                None => fs::set_permissions(&at, fs::Permissions::from_mode(0o777)).unwrap(),
                Some(files) => {
                    for (rel, (bytes, mode)) in files {
                        fs::write(at.join(&rel), bytes).unwrap();
                        fs::set_permissions(at.join(&rel), fs::Permissions::from_mode(mode))
                            .unwrap();
                    }
                }
            }
            laid_out.insert(mnt.name.clone(), at);
        }
        let mut cmd = Command::new(&chroot);
        cmd.arg(format!("--userspec={0}:{0}", sg::POD_UID))
            .arg(root)
            .args(c.command.iter().chain(&c.args))
            .env_clear()
            .env("PATH", "/bin");
        let out = common::run_with_timeout(cmd, Duration::from_secs(60));
        if !out.status.success() {
            return Err(format!(
                "init container {} failed ({}): {}{}",
                c.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let mount = pods
        .custom_volume_mounts
        .get("patroni")
        .into_iter()
        .flatten()
        .find(|mnt| mnt.mount_path.trim_end_matches('/') == "/callbacks")
        .expect("the patroni container mounts nothing at /callbacks");
    let dir = laid_out.get(&mount.name).unwrap_or_else(|| {
        panic!(
            "/callbacks is {}, which no init container filled",
            mount.name
        )
    });
    fs::create_dir_all(dest).unwrap();
    let mut names = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dest.join(e.file_name())).unwrap();
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The directory the patroni container would see at /callbacks, from freshly packed hooks.
fn unpacked() -> tempfile::TempDir {
    m::pack_hooks();
    let docs = m::render(&repo().join("configmap")).unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::Builder::new()
        .prefix("pph-callbacks-")
        .tempdir()
        .unwrap();
    let names = unpack_like_the_pod(&docs, dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(names, ["before-stop", "on-role-change"], "in /callbacks");
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
    let tmp = unpacked();
    let dir = tmp.path();
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
}

#[test]
fn an_init_container_that_fails_stops_the_pod() {
    let mut docs = m::rendered().to_vec();
    let cl = docs.iter_mut().find(|d| m::kind(d) == "SGCluster").unwrap();
    let init = &mut cl["spec"]["pods"]["customInitContainers"][0];
    init["command"] = serde_json::json!(["sh", "-c", "echo cannot unpack >&2; exit 3"]);
    init.as_object_mut().unwrap().remove("args");
    let dir = tempfile::tempdir().unwrap();
    let err =
        unpack_like_the_pod(&docs, dir.path()).expect_err("a failing init container was accepted");
    assert!(
        err.contains("exit status: 3") && err.contains("cannot unpack"),
        "{err}"
    );
}
