//! What users apply, checked offline: the objects `kubectl kustomize` renders from configmap/
//! and configmap/drill/ (tests/support/src/manifests/). One test per fact, and for each fact
//! ordinary negative tests that feed it a broken copy of the rendered objects, so no check can
//! pass by accepting everything.
//!
//! * schemas: built-in kinds against the project's typed Kubernetes schema (`kube.rs`), SGCluster
//!   and SGDbOps against its own schema written from StackGres's Java classes (`stackgres.rs`),
//!   and, when StackGres's CRDs are at hand (`$STACKGRES_CRDS_DIR`, else
//!   `../shared/stackgres-crds`), against their openAPIV3Schema too (printed "skipped" when not);
//! * what StackGres's code does with an SGCluster, each fact naming its source file (the `SRC_*`
//!   constants of `stackgres.rs`);
//! * Kubernetes limits (ConfigMap size, client-side apply's annotation), references between
//!   objects, every manifest listed in a kustomization;
//! * the hooks' flags and variables used in the manifests and the runbook exist in `--help`.
//!
//! Needs kubectl (scripts/setup); packs the hooks first (scripts/configmap) when
//! configmap/hooks-bin/ is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pph_support as common;
use pph_support::manifests::kube::{self, IntOrString};
use pph_support::manifests::stackgres::{self as sg, SgCluster, SgDbOps};
use pph_support::manifests::{self as m, crd};
use serde_json::{json, Value};

const BEFORE_STOP: &str = env!("CARGO_BIN_EXE_before-stop");
const ON_ROLE_CHANGE: &str = env!("CARGO_BIN_EXE_on-role-change");
const WATCHDOG: &str = env!("CARGO_BIN_EXE_pgbouncer-watchdog");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of the rendered objects, changed by `f`.
fn broken(f: impl FnOnce(&mut Vec<Value>)) -> Vec<Value> {
    let mut docs = m::rendered().to_vec();
    f(&mut docs);
    docs
}

fn first_mut<'a>(docs: &'a mut [Value], kind: &str) -> &'a mut Value {
    docs.iter_mut()
        .find(|d| m::kind(d) == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

fn patroni_env(docs: &mut [Value]) -> &mut Vec<Value> {
    first_mut(docs, "SGCluster")
        .pointer_mut("/spec/pods/customEnv/patroni")
        .and_then(Value::as_array_mut)
        .expect("SGCluster customEnv.patroni")
}

fn set_env(docs: &mut [Value], name: &str, value: Option<&str>) {
    let env = patroni_env(docs);
    env.retain(|e| e["name"] != name);
    if let Some(v) = value {
        env.push(json!({"name": name, "value": v}));
    }
}

fn clusters(docs: &[Value]) -> Vec<SgCluster> {
    let all: Vec<SgCluster> = m::of_kind(docs, "SGCluster")
        .map(|d| kube::parse(d).unwrap_or_else(|e| panic!("{}: {e}", m::label(d))))
        .collect();
    assert!(!all.is_empty(), "no SGCluster rendered");
    all
}

/// Passes when `errs` is empty; else fails listing them.
fn assert_clean(what: &str, errs: Vec<String>) {
    assert!(errs.is_empty(), "{what}:\n  {}", errs.join("\n  "));
}

/// The broken copy must be refused, with an error that mentions `needle`.
fn assert_refused(errs: Vec<String>, needle: &str) {
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "the broken copy was not refused for {needle:?}: {errs:?}"
    );
}

// ====================================================================== schemas

/// Schema errors of every object: built-in kinds against kube.rs, stackgres.io against
/// stackgres.rs.
fn schema_errors(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for d in docs {
        let api = d["apiVersion"].as_str().unwrap_or_default();
        let r = if api.starts_with("stackgres.io/") {
            sg::check(d)
        } else {
            kube::check(d)
        };
        if let Err(e) = r {
            errs.push(format!("{}: {e}", m::label(d)));
        }
    }
    errs
}

#[test]
fn rendered_objects_match_the_kubernetes_and_stackgres_schemas() {
    let docs = m::rendered();
    for want in [
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "SGCluster",
        "SGDbOps",
    ] {
        assert!(
            m::of_kind(docs, want).next().is_some(),
            "no {want} rendered"
        );
    }
    assert_clean("schema errors", schema_errors(docs));
}

#[test]
fn kubernetes_schema_refuses_an_unknown_field() {
    let docs = broken(|d| first_mut(d, "Service")["spec"]["portz"] = json!([{"port": 1}]));
    assert_refused(schema_errors(&docs), "spec.portz");
    assert_refused(schema_errors(&docs), "unknown field `portz`");
}

#[test]
fn kubernetes_schema_refuses_a_wrong_type_and_a_bad_enum() {
    let docs = broken(|d| first_mut(d, "Deployment")["spec"]["replicas"] = json!("two"));
    assert_refused(schema_errors(&docs), "spec.replicas");
    let docs = broken(|d| {
        first_mut(d, "Deployment")["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("Sometimes")
    });
    assert_refused(schema_errors(&docs), "imagePullPolicy");
}

#[test]
fn kubernetes_schema_refuses_a_kind_it_does_not_know() {
    let docs = broken(|d| {
        d.push(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"}}))
    });
    assert_refused(schema_errors(&docs), "no schema for apps/v1 StatefulSet");
}

#[test]
fn stackgres_schema_refuses_a_misspelt_field_and_a_missing_one() {
    let docs = broken(|d| {
        let pods = &mut first_mut(d, "SGCluster")["spec"]["pods"];
        pods["customEnvs"] = json!({"patroni": [{"name": "X", "value": "y"}]});
    });
    assert_refused(schema_errors(&docs), "spec.pods.customEnvs");
    let docs = broken(|d| {
        let pods = first_mut(d, "SGCluster")["spec"]["pods"]
            .as_object_mut()
            .unwrap();
        pods.remove("persistentVolume");
    });
    assert_refused(schema_errors(&docs), "persistentVolume");
}

#[test]
fn stackgres_schema_refuses_a_bad_sgdbops_and_an_unknown_api_version() {
    let docs = broken(|d| first_mut(d, "SGDbOps")["spec"]["maxRetries"] = json!("zero"));
    assert_refused(schema_errors(&docs), "spec.maxRetries");
    let docs = broken(|d| first_mut(d, "SGDbOps")["spec"]["op"] = json!("reboot"));
    assert_refused(schema_errors(&docs), "spec.op");
    let docs = broken(|d| first_mut(d, "SGDbOps")["apiVersion"] = json!("stackgres.io/v1beta1"));
    assert_refused(
        schema_errors(&docs),
        "no schema for stackgres.io/v1beta1 SGDbOps",
    );
}

/// Libtest captures print!/eprint! of passing tests; a skip must be seen, so it goes to the
/// process's stderr directly.
fn say_skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

#[test]
fn stackgres_objects_match_the_upstream_crds_when_present() {
    let where_ = crd::crds_dir(&repo());
    let crds = match crd::Crds::load(&where_).unwrap_or_else(|e| panic!("{e}")) {
        Some(c) => c,
        None => {
            let crd::CrdsDir::IfPresent(dir) = where_ else {
                unreachable!()
            };
            return say_skipped(
                "stackgres_objects_match_the_upstream_crds_when_present",
                &format!(
                    "StackGres CRDs not at {} (set STACKGRES_CRDS_DIR); the project's own \
                     SGCluster/SGDbOps schema still ran",
                    dir.display()
                ),
            );
        }
    };
    let docs = m::rendered();
    let mut errs = Vec::new();
    let mut checked = 0;
    for d in docs.iter().filter(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("stackgres.io/"))
    }) {
        checked += 1;
        errs.extend(
            crds.validate(d)
                .into_iter()
                .map(|e| format!("{}: {e}", m::label(d))),
        );
    }
    assert!(checked >= 2, "no StackGres object checked");
    assert_clean(&format!("against the CRDs in {}", crds.dir.display()), errs);
    // and the same CRDs refuse a broken copy
    let bad = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["pods"]["customEnvs"] = json!({});
    });
    let cl = m::of_kind(&bad, "SGCluster").next().unwrap();
    assert_refused(crds.validate(cl), "/spec/pods/customEnvs: unknown field");
    let _ = writeln!(
        std::io::stderr(),
        "upstream CRDs: {} ({})",
        crds.dir.display(),
        crds.kinds().join(", ")
    );
}

#[test]
fn crd_validator_table() {
    let schema = json!({
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "n": {"type": "integer"},
                    "s": {"type": "string", "enum": ["a", "b"]},
                    "port": {"x-kubernetes-int-or-string": true},
                    "list": {"type": "array", "items": {"type": "boolean"}},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "map": {"type": "object", "additionalProperties": {"type": "string"}},
                    "maybe": {"type": "string", "nullable": true}
                }
            }
        }
    });
    let ok = |spec: Value| {
        let mut e = Vec::new();
        crd::validate(&schema, &json!({ "spec": spec }), "", &mut e);
        e
    };
    assert_clean(
        "valid",
        ok(
            json!({"n": 1, "s": "a", "port": "http", "list": [true], "free": {"x": 1},
                  "map": {"k": "v"}, "maybe": null}),
        ),
    );
    assert_clean("int-or-string as int", ok(json!({"port": 8009})));
    for (spec, needle) in [
        (json!({"n": "1"}), "/spec/n: string where integer"),
        (json!({"s": "c"}), "/spec/s: \"c\" is not one of"),
        (json!({"other": 1}), "/spec/other: unknown field"),
        (json!({"list": [1]}), "/spec/list/0: integer where boolean"),
        (
            json!({"map": {"k": 1}}),
            "/spec/map/k: integer where string",
        ),
        (
            json!({"port": true}),
            "/spec/port: boolean where an integer or string",
        ),
        (json!({"n": null}), "/spec/n: null is not allowed"),
    ] {
        assert_refused(ok(spec.clone()), needle);
    }
    let mut e = Vec::new();
    crd::validate(&schema, &json!({}), "", &mut e);
    assert_refused(e, "missing required field spec");
}

// ====================================================================== files

/// Every YAML file under `root` parses and is listed (directly, or as a kustomization root
/// listed by another) in a kustomization.yaml.
fn unlisted_or_broken(root: &Path) -> Vec<String> {
    let files = m::manifest_files(root);
    let mut listed = BTreeSet::new();
    let mut errs = Vec::new();
    for f in &files {
        let text = fs::read_to_string(f).unwrap();
        let docs = match m::parse_docs(&text) {
            Ok(d) if !d.is_empty() => d,
            Ok(_) => {
                errs.push(format!("{}: no YAML document", f.display()));
                continue;
            }
            Err(e) => {
                errs.push(format!("{}: {e}", f.display()));
                continue;
            }
        };
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            listed.insert(f.clone());
            let k = &docs[0];
            for key in ["resources", "configurations"] {
                for r in k[key].as_array().into_iter().flatten() {
                    let r = r.as_str().unwrap_or_default();
                    let p = f.parent().unwrap().join(r);
                    if p.is_dir() {
                        listed.insert(p.join("kustomization.yaml"));
                    } else if p.is_file() {
                        listed.insert(p);
                    } else {
                        errs.push(format!("{}: {key} entry {r} does not exist", f.display()));
                    }
                }
            }
        }
    }
    for f in &files {
        if !listed.contains(f) {
            errs.push(format!(
                "{}: not listed in any kustomization.yaml",
                f.display()
            ));
        }
    }
    errs
}

#[test]
fn every_manifest_parses_and_is_listed_in_a_kustomization() {
    let roots = m::kustomization_roots();
    assert!(roots.len() >= 2, "kustomization roots: {roots:?}");
    assert_clean("manifests", unlisted_or_broken(&repo().join("configmap")));
}

#[test]
fn an_unlisted_or_broken_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [a.yaml, gone.yaml]\n",
    )
    .unwrap();
    fs::write(dir.path().join("a.yaml"), "kind: ConfigMap\n").unwrap();
    fs::write(dir.path().join("stray.yaml"), "kind: ConfigMap\n").unwrap();
    fs::write(dir.path().join("bad.yml"), "a: {b: \n").unwrap();
    let errs = unlisted_or_broken(dir.path());
    assert_refused(errs.clone(), "stray.yaml: not listed");
    assert_refused(errs.clone(), "gone.yaml does not exist");
    assert_refused(errs, "bad.yml: YAML does not parse");
}

// ====================================================================== StackGres's code

/// Mounts name custom volumes as `custom-<name>` ([`sg::SRC_VOLUME_PREFIX`]).
fn volume_prefix(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        let pods = &cl.spec.pods;
        let declared: BTreeSet<String> = pods
            .custom_volumes
            .iter()
            .map(|v| format!("{}{}", sg::VOLUME_PREFIX, v.name))
            .collect();
        let mut mounts = Vec::new();
        for (section, map) in [
            ("customVolumeMounts", &pods.custom_volume_mounts),
            ("customInitVolumeMounts", &pods.custom_init_volume_mounts),
        ] {
            for (c, ms) in map {
                mounts.extend(ms.iter().map(|mnt| (format!("{section}.{c}"), mnt)));
            }
        }
        for c in pods
            .custom_init_containers
            .iter()
            .chain(&pods.custom_containers)
        {
            mounts.extend(
                c.volume_mounts
                    .iter()
                    .map(|mnt| (format!("container {}", c.name), mnt)),
            );
        }
        assert!(
            !mounts.is_empty(),
            "SGCluster/{} mounts nothing",
            cl.metadata.name
        );
        for (where_, mnt) in mounts {
            if !declared.contains(&mnt.name) {
                errs.push(format!(
                    "SGCluster/{} {where_}: mount {:?} is not a custom volume as StackGres names \
                     it ({declared:?}) [{}]",
                    cl.metadata.name,
                    mnt.name,
                    sg::SRC_VOLUME_PREFIX
                ));
            }
        }
    }
    errs
}

#[test]
fn mounts_name_custom_volumes_with_stackgres_prefix() {
    assert_clean("volume prefix", volume_prefix(m::rendered()));
}

#[test]
fn a_mount_without_the_custom_prefix_is_refused() {
    let docs = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["pods"]["customVolumeMounts"]["patroni"][0]["name"] =
            json!("c-callbacks")
    });
    assert_refused(
        volume_prefix(&docs),
        "customVolumeMounts.patroni: mount \"c-callbacks\"",
    );
    let docs = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["pods"]["customInitContainers"][0]["volumeMounts"][0]
            ["name"] = json!("hooks-packed")
    });
    assert_refused(volume_prefix(&docs), "mount \"hooks-packed\"");
}

/// customEnv / customVolumeMounts name containers of the cluster pod ([`sg::SRC_CONTAINERS`]).
fn pod_containers(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        let p = &cl.spec.pods;
        let keys = p
            .custom_env
            .keys()
            .map(|k| ("customEnv", k))
            .chain(p.custom_env_from.keys().map(|k| ("customEnvFrom", k)))
            .chain(
                p.custom_volume_mounts
                    .keys()
                    .map(|k| ("customVolumeMounts", k)),
            );
        let custom: Vec<&str> = p
            .custom_containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for (section, k) in keys {
            if !sg::POD_CONTAINERS.contains(&k.as_str()) && !custom.contains(&k.as_str()) {
                errs.push(format!(
                    "SGCluster/{} {section}.{k}: no such container in the pod ({:?}) [{}]",
                    cl.metadata.name,
                    sg::POD_CONTAINERS,
                    sg::SRC_CONTAINERS
                ));
            }
        }
    }
    errs
}

#[test]
fn custom_env_and_mounts_name_containers_of_the_pod() {
    assert_clean("containers", pod_containers(m::rendered()));
}

#[test]
fn custom_env_for_a_container_the_pod_lacks_is_refused() {
    let docs = broken(|d| {
        let env = first_mut(d, "SGCluster")["spec"]["pods"]["customEnv"]
            .as_object_mut()
            .unwrap();
        let v = env.remove("patroni").unwrap();
        env.insert("postgres".into(), v);
    });
    assert_refused(
        pod_containers(&docs),
        "customEnv.postgres: no such container",
    );
}

/// No customEnv name that StackGres sets itself on that container, none twice ([`sg::SRC_ENV`]).
fn duplicate_env(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        for (container, envs) in &cl.spec.pods.custom_env {
            let mut seen = BTreeSet::new();
            for e in envs {
                if container == "patroni" && sg::PATRONI_ENV.contains(&e.name.as_str()) {
                    errs.push(format!(
                        "SGCluster/{} customEnv.patroni sets {}, which StackGres sets on the \
                         patroni container: the server-side apply of the StatefulSet fails [{}]",
                        cl.metadata.name,
                        e.name,
                        sg::SRC_ENV
                    ));
                }
                if !seen.insert(&e.name) {
                    errs.push(format!(
                        "SGCluster/{} customEnv.{container} names {} twice [{}]",
                        cl.metadata.name,
                        e.name,
                        sg::SRC_ENV
                    ));
                }
            }
        }
    }
    errs
}

#[test]
fn custom_env_repeats_no_variable_stackgres_sets() {
    assert_clean("duplicate env", duplicate_env(m::rendered()));
}

#[test]
fn custom_env_naming_a_stackgres_variable_or_one_twice_is_refused() {
    let docs = broken(|d| set_env(d, "PGUSER", Some("postgres")));
    assert_refused(duplicate_env(&docs), "sets PGUSER");
    let docs = broken(|d| {
        patroni_env(d).push(json!({"name": "PATRONI_NAME",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}))
    });
    assert_refused(duplicate_env(&docs), "sets PATRONI_NAME");
    let docs = broken(|d| {
        let env = patroni_env(d);
        let first = env[0].clone();
        env.push(first);
    });
    assert_refused(duplicate_env(&docs), "twice");
}

fn env_value<'a>(cl: &'a SgCluster, name: &str) -> Option<&'a str> {
    cl.spec
        .pods
        .custom_env
        .get("patroni")?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

/// `scheme://host:port` of a URL without a crate: (scheme, host, port).
fn url_parts(url: &str, default_port: u16) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit('@').next()?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (hostport, default_port),
    };
    Some((scheme, host, port))
}

/// HOOKS_PATRONI_URL is Patroni's REST API in the pod: http://127.0.0.1:8009 ([`sg::SRC_REST`]).
fn patroni_rest(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    let want = format!("http://127.0.0.1:{}", sg::PATRONI_REST_PORT);
    for cl in clusters(docs) {
        let ok = env_value(&cl, "HOOKS_PATRONI_URL")
            .and_then(|u| url_parts(u, 80))
            .is_some_and(|(scheme, host, port)| {
                scheme == "http"
                    && matches!(host, "127.0.0.1" | "localhost")
                    && port == sg::PATRONI_REST_PORT
            });
        if !ok {
            errs.push(format!(
                "SGCluster/{}: HOOKS_PATRONI_URL is {:?}, Patroni's REST API in the pod is {want} \
                 (without it before-stop starts patronictl on every stop) [{}]",
                cl.metadata.name,
                env_value(&cl, "HOOKS_PATRONI_URL"),
                sg::SRC_REST
            ));
        }
    }
    errs
}

#[test]
fn patroni_rest_url_is_plain_http_on_8009() {
    assert_clean("REST API", patroni_rest(m::rendered()));
}

#[test]
fn patroni_rest_url_on_8008_over_https_or_missing_is_refused() {
    for url in [
        Some("http://127.0.0.1:8008"),
        Some("https://127.0.0.1:8009"),
        Some("http://pg:8009"),
        None,
    ] {
        let docs = broken(|d| set_env(d, "HOOKS_PATRONI_URL", url));
        assert_refused(patroni_rest(&docs), "HOOKS_PATRONI_URL is");
    }
}

/// StackGres's patronictl is a wrapper that finds its own configuration ([`sg::SRC_PATRONICTL`]).
fn patronictl_args(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        for n in ["HOOKS_PATRONICTL", "HOOKS_PATRONICTL_ARGS"] {
            if env_value(&cl, n).is_some() {
                errs.push(format!(
                    "SGCluster/{} sets {n}: the patronictl of the patroni container passes its \
                     configuration itself; call it as is [{}]",
                    cl.metadata.name,
                    sg::SRC_PATRONICTL
                ));
            }
        }
    }
    errs
}

#[test]
fn patronictl_is_called_without_arguments() {
    assert_clean("patronictl", patronictl_args(m::rendered()));
}

#[test]
fn patronictl_with_a_config_file_is_refused() {
    let docs = broken(|d| {
        set_env(
            d,
            "HOOKS_PATRONICTL_ARGS",
            Some("--config-file=/etc/patroni.yml"),
        )
    });
    assert_refused(patronictl_args(&docs), "sets HOOKS_PATRONICTL_ARGS");
}

fn initial_config(cl: &SgCluster) -> serde_json::Map<String, Value> {
    cl.spec
        .configurations
        .as_ref()
        .and_then(|c| c.patroni.as_ref())
        .and_then(|p| p.initial_config.clone())
        .unwrap_or_default()
}

/// initialConfig holds only what StackGres lets change on an existing cluster
/// ([`sg::SRC_INITIAL`]).
fn initial_config_keys(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        let initial = initial_config(&cl);
        let mut extra: Vec<String> = initial
            .keys()
            .filter(|k| *k != "postgresql")
            .cloned()
            .collect();
        if let Some(pg) = initial.get("postgresql").and_then(Value::as_object) {
            extra.extend(
                pg.keys()
                    .filter(|k| !sg::INITIAL_CONFIG_CHANGEABLE.contains(&k.as_str()))
                    .map(|k| format!("postgresql.{k}")),
            );
        }
        if !extra.is_empty() {
            errs.push(format!(
                "SGCluster/{} initialConfig sets {extra:?}: StackGres refuses to change it on an \
                 existing cluster [{}]",
                cl.metadata.name,
                sg::SRC_INITIAL
            ));
        }
    }
    errs
}

#[test]
fn initial_config_only_sets_what_an_existing_cluster_may_change() {
    assert_clean("initialConfig", initial_config_keys(m::rendered()));
}

#[test]
fn initial_config_with_postgres_parameters_is_refused() {
    let docs = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["configurations"]["patroni"]["initialConfig"]
            ["postgresql"]["parameters"] = json!({"max_connections": "200"})
    });
    assert_refused(initial_config_keys(&docs), "postgresql.parameters");
}

/// Patroni runs the hooks from the volume the patroni container mounts: before_stop is
/// before-stop, every callback on-role-change, all under a patroni mount.
fn hook_paths(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        let initial = initial_config(&cl);
        let pg = &initial.get("postgresql").cloned().unwrap_or_default();
        let mounts: Vec<&str> = cl
            .spec
            .pods
            .custom_volume_mounts
            .get("patroni")
            .into_iter()
            .flatten()
            .map(|mnt| mnt.mount_path.trim_end_matches('/'))
            .collect();
        let mut hooks = vec![("before_stop", pg["before_stop"].clone(), "before-stop")];
        for cb in ["on_role_change", "on_start", "on_restart"] {
            hooks.push((cb, pg["callbacks"][cb].clone(), "on-role-change"));
        }
        for (key, cmd, binary) in hooks {
            let exe = cmd
                .as_str()
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default();
            let (dir, file) = exe.rsplit_once('/').unwrap_or(("", exe));
            if file != binary || !mounts.contains(&dir) {
                errs.push(format!(
                    "SGCluster/{}: Patroni's {key} is {cmd}, not {binary} in a directory the \
                     patroni container mounts ({mounts:?}) [{}]",
                    cl.metadata.name,
                    sg::SRC_INITIAL
                ));
            }
        }
    }
    errs
}

#[test]
fn patroni_runs_the_hooks_from_the_patroni_mounts() {
    assert_clean("hook paths", hook_paths(m::rendered()));
}

#[test]
fn a_hook_outside_the_mounts_or_a_missing_callback_is_refused() {
    let docs = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["configurations"]["patroni"]["initialConfig"]
            ["postgresql"]["before_stop"] = json!("/usr/local/bin/before-stop")
    });
    assert_refused(
        hook_paths(&docs),
        "before_stop is \"/usr/local/bin/before-stop\"",
    );
    let docs = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["configurations"]["patroni"]["initialConfig"]
            ["postgresql"]["callbacks"]
            .as_object_mut()
            .unwrap()
            .remove("on_start");
    });
    assert_refused(hook_paths(&docs), "on_start is null");
}

/// `host=` / `port=` of every entry of a pgbouncer.ini [databases] section.
fn pgbouncer_hosts(docs: &[Value]) -> Vec<(String, String, u16)> {
    let mut out = Vec::new();
    for cm in m::of_kind(docs, "ConfigMap") {
        for (key, text) in cm["data"].as_object().into_iter().flatten() {
            let text = text.as_str().unwrap_or_default();
            if !key.ends_with(".ini") {
                continue;
            }
            let mut in_databases = false;
            for line in text.lines() {
                let line = line.split(';').next().unwrap_or_default().trim();
                if line.starts_with('[') {
                    in_databases = line == "[databases]";
                    continue;
                }
                if !in_databases || !line.contains('=') {
                    continue;
                }
                let field = |f: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(f))
                        .map(str::to_string)
                };
                if let Some(host) = field("host=") {
                    let port = field("port=").and_then(|p| p.parse().ok()).unwrap_or(5432);
                    out.push((format!("{} {key}", m::label(cm)), host, port));
                }
            }
        }
    }
    out
}

/// PgBouncer and the route check point at the cluster's primary Service `<cluster>:5432`
/// ([`sg::SRC_SERVICE`]).
fn primary_service(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    let clusters = clusters(docs);
    let names: Vec<&str> = clusters.iter().map(|c| c.metadata.name.as_str()).collect();
    let mut targets = pgbouncer_hosts(docs);
    assert!(
        !targets.is_empty(),
        "no pgbouncer.ini [databases] host= rendered"
    );
    for cl in &clusters {
        for u in env_value(cl, "HOOKS_UPSTREAM_URLS")
            .unwrap_or_default()
            .split(',')
        {
            if let Some((_, host, port)) = url_parts(u.trim(), sg::PRIMARY_PORT) {
                let who = format!("SGCluster/{} HOOKS_UPSTREAM_URLS", cl.metadata.name);
                targets.push((who, host.to_string(), port));
            }
        }
    }
    for (where_, host, port) in targets {
        let short = host.split('.').next().unwrap_or_default();
        if !names.contains(&short) || port != sg::PRIMARY_PORT {
            errs.push(format!(
                "{where_}: {host}:{port} is not the primary Service of an SGCluster \
                 ({names:?} port {}) [{}]",
                sg::PRIMARY_PORT,
                sg::SRC_SERVICE
            ));
        }
    }
    errs
}

#[test]
fn pgbouncer_and_the_route_check_use_the_primary_service() {
    assert_clean("primary Service", primary_service(m::rendered()));
}

#[test]
fn the_deprecated_primary_service_or_another_port_is_refused() {
    let docs = broken(|d| {
        set_env(
            d,
            "HOOKS_UPSTREAM_URLS",
            Some("postgresql://pgbouncer_auth@pg-primary:5432/postgres"),
        )
    });
    assert_refused(
        primary_service(&docs),
        "pg-primary:5432 is not the primary Service",
    );
    let docs = broken(|d| {
        let cm = d
            .iter_mut()
            .find(|c| c["data"]["pgbouncer.ini"].is_string())
            .unwrap();
        let ini = cm["data"]["pgbouncer.ini"]
            .as_str()
            .unwrap()
            .replace("port=5432", "port=5433");
        cm["data"]["pgbouncer.ini"] = json!(ini);
    });
    assert_refused(primary_service(&docs), "pg:5433 is not the primary Service");
}

/// Init containers write the hooks as the pod's user (uid 999, [`sg::SRC_UID`]): none runs
/// as another user, or the patroni container could not use what it wrote.
fn init_container_user(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cl in clusters(docs) {
        for c in &cl.spec.pods.custom_init_containers {
            let uid = c.security_context.as_ref().and_then(|s| s.run_as_user);
            if uid.is_some_and(|u| u != i64::from(sg::POD_UID)) {
                errs.push(format!(
                    "SGCluster/{} init container {} runs as uid {uid:?}, the pod's user is {} [{}]",
                    cl.metadata.name,
                    c.name,
                    sg::POD_UID,
                    sg::SRC_UID
                ));
            }
        }
    }
    errs
}

#[test]
fn init_containers_run_as_the_pods_user() {
    assert_clean("init container user", init_container_user(m::rendered()));
}

#[test]
fn an_init_container_as_root_is_refused() {
    let docs = broken(|d| {
        first_mut(d, "SGCluster")["spec"]["pods"]["customInitContainers"][0]["securityContext"]
            ["runAsUser"] = json!(0)
    });
    assert_refused(init_container_user(&docs), "runs as uid Some(0)");
}

/// A new hook build reaches the pods through an SGDbOps restart: the cluster's StatefulSet
/// updates pods OnDelete ([`sg::SRC_ROLLOUT`]), so the drill restarts the SGCluster.
fn rollout(docs: &[Value]) -> Vec<String> {
    let names: Vec<String> = clusters(docs)
        .into_iter()
        .map(|c| c.metadata.name)
        .collect();
    let restarts: Vec<SgDbOps> = m::of_kind(docs, "SGDbOps")
        .filter_map(|d| kube::parse::<SgDbOps>(d).ok())
        .filter(|o| o.spec.op == sg::DbOpsOperation::Restart)
        .collect();
    names
        .iter()
        .filter(|n| !restarts.iter().any(|o| &o.spec.sg_cluster == *n))
        .map(|n| {
            format!(
                "SGCluster/{n}: no SGDbOps restarts it, and its pods only take new hooks when \
                 restarted [{}]",
                sg::SRC_ROLLOUT
            )
        })
        .collect()
}

#[test]
fn an_sgdbops_restart_rolls_new_hooks_in() {
    assert_clean("rollout", rollout(m::rendered()));
}

#[test]
fn a_drill_that_does_not_restart_the_cluster_is_refused() {
    let docs = broken(|d| first_mut(d, "SGDbOps")["spec"]["op"] = json!("vacuum"));
    assert_refused(rollout(&docs), "no SGDbOps restarts it");
    let docs = broken(|d| first_mut(d, "SGDbOps")["spec"]["sgCluster"] = json!("other"));
    assert_refused(rollout(&docs), "no SGDbOps restarts it");
}

// ====================================================================== Kubernetes limits

/// Kubernetes: a ConfigMap's data + binaryData, decoded, <= 1 MiB (MaxSecretSize, core/v1
/// validation `ValidateConfigMap`).
const CONFIGMAP_LIMIT: usize = 1024 * 1024;
/// Kubernetes: all annotations of an object <= 256 KiB (`TotalAnnotationSizeLimitB`,
/// apimachinery objectmeta validation); client-side apply copies the object into one.
const ANNOTATION_LIMIT: usize = 256 * 1024;

fn configmap_size(cm: &Value) -> Result<usize, String> {
    let mut n = 0;
    for (k, v) in cm["data"].as_object().into_iter().flatten() {
        n += k.len() + v.as_str().unwrap_or_default().len();
    }
    for (k, v) in cm["binaryData"].as_object().into_iter().flatten() {
        n += k.len() + m::base64_decode(v.as_str().unwrap_or_default())?.len();
    }
    Ok(n)
}

fn configmap_sizes(docs: &[Value]) -> Vec<String> {
    let mut errs = Vec::new();
    for cm in m::of_kind(docs, "ConfigMap") {
        match configmap_size(cm) {
            Ok(n) if n > CONFIGMAP_LIMIT => errs.push(format!(
                "{}: {n} bytes of data + binaryData, over the {CONFIGMAP_LIMIT} of a ConfigMap",
                m::label(cm)
            )),
            Ok(_) => {}
            Err(e) => errs.push(format!("{}: {e}", m::label(cm))),
        }
    }
    errs
}

#[test]
fn every_configmap_fits_in_one_mib() {
    let docs = m::rendered();
    let hooks: Vec<_> = m::of_kind(docs, "ConfigMap")
        .filter(|c| c["binaryData"].is_object())
        .collect();
    assert!(
        hooks.len() >= 2,
        "hook ConfigMaps rendered: {}",
        hooks.len()
    );
    assert_clean("ConfigMap size", configmap_sizes(docs));
}

#[test]
fn a_configmap_over_one_mib_is_refused() {
    let docs = broken(|d| {
        let cm = d.iter_mut().find(|c| c["binaryData"].is_object()).unwrap();
        // 1 MiB of zero bytes, base64
        cm["binaryData"]["padding"] = json!("A".repeat(CONFIGMAP_LIMIT / 3 * 4 + 4));
    });
    assert_refused(configmap_sizes(&docs), "over the 1048576 of a ConfigMap");
}

/// The texts that tell users how to apply configmap/.
fn apply_texts() -> BTreeMap<String, String> {
    [
        "README.md",
        "docs/stackgres.md",
        "configmap/kustomization.yaml",
    ]
    .into_iter()
    .map(|f| (f.to_string(), fs::read_to_string(repo().join(f)).unwrap()))
    .collect()
}

/// Objects too big for client-side apply's annotation: then every `kubectl apply -k
/// configmap/` in the texts must be `--server-side`, and each text must say so.
fn server_side_apply(docs: &[Value], texts: &BTreeMap<String, String>) -> Vec<String> {
    let big: Vec<String> = docs
        .iter()
        .filter(|d| serde_json::to_vec(d).unwrap().len() > ANNOTATION_LIMIT)
        .map(m::label)
        .collect();
    if big.is_empty() {
        return Vec::new();
    }
    let mut errs = Vec::new();
    for (file, text) in texts {
        for line in text.lines() {
            let Some(at) = line.find("kubectl apply") else {
                continue;
            };
            let cmd = line[at..].split('`').next().unwrap_or_default();
            let words: Vec<&str> = cmd.split_whitespace().collect();
            let applies_configmap = words
                .windows(2)
                .any(|w| w[0] == "-k" && matches!(w[1], "configmap" | "configmap/"));
            if applies_configmap && !words.contains(&"--server-side") {
                errs.push(format!(
                    "{file}: `{}` is client-side, but {big:?} exceed the {ANNOTATION_LIMIT}-byte \
                     annotation of client-side apply: use --server-side",
                    cmd.trim()
                ));
            }
        }
        if !text.contains("--server-side") {
            errs.push(format!(
                "{file}: does not say to apply with --server-side, but {big:?} exceed the \
                 {ANNOTATION_LIMIT}-byte annotation of client-side apply"
            ));
        }
    }
    errs
}

#[test]
fn objects_too_big_for_client_side_apply_are_applied_server_side() {
    assert_clean(
        "server-side apply",
        server_side_apply(m::rendered(), &apply_texts()),
    );
}

#[test]
fn a_client_side_apply_of_the_configmaps_is_refused() {
    let mut texts = apply_texts();
    texts
        .get_mut("README.md")
        .unwrap()
        .push_str("\n```sh\nkubectl apply -k configmap/ -n db\n```\n");
    assert_refused(
        server_side_apply(m::rendered(), &texts),
        "README.md: `kubectl apply -k configmap/ -n db` is client-side",
    );
    let texts = apply_texts()
        .into_iter()
        .map(|(k, v)| (k, v.replace("--server-side", "")))
        .collect();
    assert_refused(
        server_side_apply(m::rendered(), &texts),
        "does not say to apply with --server-side",
    );
}

// ====================================================================== references

fn names_of(docs: &[Value], kind: &str) -> BTreeMap<String, Value> {
    m::of_kind(docs, kind)
        .map(|d| (m::name(d).to_string(), d.clone()))
        .collect()
}

/// Volumes and env name rendered ConfigMaps / Secrets (and Secret keys); Services select pods
/// of a rendered workload; SGDbOps name a rendered SGCluster.
fn references(docs: &[Value]) -> Vec<String> {
    let config_maps = names_of(docs, "ConfigMap");
    let secrets = names_of(docs, "Secret");
    let mut errs = Vec::new();
    let secret_has = |name: &str, key: &str| {
        secrets
            .get(name)
            .is_some_and(|s| s["data"].get(key).is_some() || s["stringData"].get(key).is_some())
    };
    let check_volume = |who: &str, v: &kube::Volume, errs: &mut Vec<String>| {
        let mut refs = Vec::new();
        if let Some(c) = &v.config_map {
            refs.push(("ConfigMap", c.name.clone()));
        }
        if let Some(s) = &v.secret {
            refs.push(("Secret", s.secret_name.clone()));
            for it in &s.items {
                if !secret_has(&s.secret_name, &it.key) {
                    errs.push(format!(
                        "{who}: volume {} uses key {} absent from Secret {}",
                        v.name, it.key, s.secret_name
                    ));
                }
            }
        }
        for src in v.projected.iter().flat_map(|p| &p.sources) {
            if let Some(c) = &src.config_map {
                refs.push(("ConfigMap", c.name.clone()));
            }
            if let Some(s) = &src.secret {
                refs.push(("Secret", s.name.clone()));
            }
        }
        for (kind, name) in refs {
            let there = if kind == "ConfigMap" {
                config_maps.contains_key(&name)
            } else {
                secrets.contains_key(&name)
            };
            if !there {
                errs.push(format!(
                    "{who}: volume {} uses {kind} {name}, not rendered",
                    v.name
                ));
            }
        }
    };
    let check_env = |who: &str, env: &[kube::EnvVar], errs: &mut Vec<String>| {
        for e in env {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                if !secret_has(&r.name, &r.key) {
                    errs.push(format!(
                        "{who}: env {} uses key {} of Secret {}, not rendered",
                        e.name, r.key, r.name
                    ));
                }
            }
        }
    };
    let mut pod_labels = Vec::new();
    let mut workloads = Vec::new();
    for d in m::of_kind(docs, "Deployment") {
        if let Ok(w) = kube::parse::<kube::Deployment>(d) {
            workloads.push((m::label(d), w.spec.template));
        }
    }
    for d in m::of_kind(docs, "Job") {
        if let Ok(w) = kube::parse::<kube::Job>(d) {
            workloads.push((m::label(d), w.spec.template));
        }
    }
    for (who, tpl) in &workloads {
        pod_labels.push(tpl.metadata.labels.clone());
        for v in &tpl.spec.volumes {
            check_volume(who, v, &mut errs);
        }
        for c in tpl.spec.init_containers.iter().chain(&tpl.spec.containers) {
            check_env(&format!("{who} container {}", c.name), &c.env, &mut errs);
        }
    }
    let clusters = clusters(docs);
    for cl in &clusters {
        let who = format!("SGCluster/{}", cl.metadata.name);
        for v in &cl.spec.pods.custom_volumes {
            check_volume(&who, v, &mut errs);
        }
        for (c, env) in &cl.spec.pods.custom_env {
            check_env(&format!("{who} customEnv.{c}"), env, &mut errs);
        }
    }
    for d in m::of_kind(docs, "Service") {
        if let Ok(s) = kube::parse::<kube::Service>(d) {
            let sel = &s.spec.selector;
            let selects = pod_labels
                .iter()
                .any(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v)));
            if !sel.is_empty() && !selects {
                errs.push(format!(
                    "{}: selector {sel:?} matches no rendered pod template",
                    m::label(d)
                ));
            }
            for p in &s.spec.ports {
                if let Some(IntOrString::Str(port)) = &p.target_port {
                    let named = workloads.iter().any(|(_, t)| {
                        t.spec
                            .containers
                            .iter()
                            .any(|c| c.ports.iter().any(|cp| cp.name.as_deref() == Some(port)))
                    });
                    if !named {
                        errs.push(format!(
                            "{}: targetPort {port} is no container port's name",
                            m::label(d)
                        ));
                    }
                }
            }
        }
    }
    for d in m::of_kind(docs, "SGDbOps") {
        let target = d["spec"]["sgCluster"].as_str().unwrap_or_default();
        if !clusters.iter().any(|c| c.metadata.name == target) {
            errs.push(format!(
                "{}: sgCluster {target:?} is not a rendered SGCluster",
                m::label(d)
            ));
        }
    }
    errs
}

#[test]
fn references_between_objects_resolve() {
    assert_clean("references", references(m::rendered()));
}

#[test]
fn a_dangling_reference_is_refused() {
    let docs = broken(|d| first_mut(d, "SGDbOps")["spec"]["sgCluster"] = json!("nope"));
    assert_refused(
        references(&docs),
        "sgCluster \"nope\" is not a rendered SGCluster",
    );
    // the hashed name of a generated ConfigMap, not rewritten in the SGCluster
    let docs = broken(|d| {
        let volumes = first_mut(d, "SGCluster")["spec"]["pods"]["customVolumes"]
            .as_array_mut()
            .unwrap();
        let cm = volumes
            .iter_mut()
            .find_map(|v| v.pointer_mut("/projected/sources/0/configMap"))
            .expect("a projected ConfigMap volume");
        cm["name"] = json!("hooks-before-stop");
    });
    assert_refused(
        references(&docs),
        "uses ConfigMap hooks-before-stop, not rendered",
    );
    let docs = broken(|d| {
        d.iter_mut()
            .find_map(|s| {
                s.get_mut("stringData")
                    .and_then(Value::as_object_mut)
                    .filter(|o| o.contains_key("pgpass"))
            })
            .expect("a Secret with pgpass")
            .remove("pgpass");
    });
    assert_refused(references(&docs), "uses key pgpass absent from Secret");
    let docs = broken(|d| {
        first_mut(d, "Service")["spec"]["selector"] = json!({"app.kubernetes.io/name": "pgbouncr"})
    });
    assert_refused(references(&docs), "matches no rendered pod template");
}

// ====================================================================== the hooks' --help

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

fn helps() -> [(&'static str, String); 3] {
    [
        ("before-stop", help(BEFORE_STOP)),
        ("on-role-change", help(ON_ROLE_CHANGE)),
        ("pgbouncer-watchdog", help(WATCHDOG)),
    ]
}

/// Is `name` one of the hooks' variables (not Patroni's, PostgreSQL's or Kubernetes')?
fn ours(name: &str) -> bool {
    name.starts_with("HOOKS_") || name.starts_with("PGBOUNCER_")
}

/// Every variable the rendered objects give the hooks: the SGCluster's customEnv and the
/// env of every container that runs a hook.
fn hook_env(docs: &[Value]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for cl in clusters(docs) {
        for env in cl.spec.pods.custom_env.values() {
            names.extend(env.iter().map(|e| e.name.clone()).filter(|n| ours(n)));
        }
    }
    for d in m::of_kind(docs, "Deployment") {
        let w: kube::Deployment = kube::parse(d).unwrap_or_else(|e| panic!("{e}"));
        for c in w
            .spec
            .template
            .spec
            .containers
            .iter()
            .chain(&w.spec.template.spec.init_containers)
        {
            names.extend(c.env.iter().map(|e| e.name.clone()).filter(|n| ours(n)));
        }
    }
    names
}

fn help_has_env(help: &str, name: &str) -> bool {
    help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]"))
}

fn help_has_flag(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == '<')
        .any(|w| w == flag)
}

#[test]
fn variables_the_manifests_set_exist_in_help() {
    let helps = helps();
    let names = hook_env(m::rendered());
    for required in [
        "PGBOUNCER_URLS",
        "PGBOUNCER_PASSWORD_FILE",
        "HOOKS_PATRONI_URL",
    ] {
        assert!(
            names.contains(required),
            "the manifests no longer set {required}: {names:?}"
        );
    }
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !helps.iter().any(|(_, h)| help_has_env(h, n)))
        .collect();
    assert!(
        missing.is_empty(),
        "variables set in the manifests but unknown to both hooks' --help: {missing:?}"
    );
}

/// `--flag` tokens given to `binary` in a text: on a line naming the binary, the
/// `--[a-z][a-z-]*` tokens after it, up to the end of that command (`&&`, `||`, `;`, `|`, a
/// backtick, a quote, a comment).
fn flags_for(text: &str, binary: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    for line in text.lines() {
        let mut rest = line;
        while let Some(pos) = rest.find(binary) {
            let before = rest[..pos].chars().last();
            let after = &rest[pos + binary.len()..];
            rest = after;
            if before.is_some_and(word) || after.chars().next().is_some_and(word) {
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

/// Every command line of the rendered containers (command + args, joined), for the flag scan.
fn container_commands(docs: &[Value]) -> String {
    let mut out = String::new();
    let mut add = |c: &kube::Container| {
        out.push_str(
            &c.command
                .iter()
                .chain(&c.args)
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
        );
        out.push('\n');
    };
    for cl in clusters(docs) {
        cl.spec
            .pods
            .custom_init_containers
            .iter()
            .for_each(&mut add);
    }
    for d in m::of_kind(docs, "Deployment") {
        let w: kube::Deployment = kube::parse(d).unwrap_or_else(|e| panic!("{e}"));
        w.spec
            .template
            .spec
            .init_containers
            .iter()
            .for_each(&mut add);
        w.spec.template.spec.containers.iter().for_each(&mut add);
    }
    out
}

#[test]
fn flags_in_the_manifests_and_the_runbook_exist_in_help() {
    let mut sources = vec![(
        "rendered configmap/".to_string(),
        container_commands(m::rendered()),
    )];
    for doc in ["README.md", "docs/stackgres.md", "docs/reference.md"] {
        let text = fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
        sources.push((doc.to_string(), text));
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for (binary, h) in helps() {
        for (src, text) in &sources {
            for flag in flags_for(text, binary) {
                checked += 1;
                if !help_has_flag(&h, &flag) {
                    missing.push(format!("{src}: {binary} {flag}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "flags absent from the hooks' --help:\n  {}",
        missing.join("\n  ")
    );
    assert!(
        checked > 0,
        "no --flag given to the hooks was found: the scan is broken"
    );
}

#[test]
fn scanners_table() {
    let text = "command: [sh, -c, \"/callbacks/before-stop --check --log-format=json && pgbench --client 4\"]\n\
                on-role-change --dry-run on_role_change primary pg; echo --not-a-flag\n\
                the before-stopping --nope\n";
    assert_eq!(
        flags_for(text, "before-stop")
            .into_iter()
            .collect::<Vec<_>>(),
        ["--check", "--log-format"]
    );
    assert_eq!(
        flags_for(text, "on-role-change")
            .into_iter()
            .collect::<Vec<_>>(),
        ["--dry-run"]
    );
    let h = "      --max-pause <DURATION>\n          [env: HOOKS_MAX_PAUSE=]\n      --pgbouncer <URL>\n          [env: PGBOUNCER_URLS]\n";
    assert!(help_has_flag(h, "--max-pause") && help_has_flag(h, "--pgbouncer"));
    assert!(!help_has_flag(h, "--max"));
    assert!(help_has_env(h, "HOOKS_MAX_PAUSE") && help_has_env(h, "PGBOUNCER_URLS"));
    assert!(!help_has_env(h, "HOOKS_MAX"));
    assert!(ours("HOOKS_MAX_PAUSE") && ours("PGBOUNCER_URLS") && !ours("PATRONI_NAMESPACE"));
    assert_eq!(
        url_parts("postgresql://u@pg.db.svc:5433/postgres", 5432),
        Some(("postgresql", "pg.db.svc", 5433))
    );
    assert_eq!(
        url_parts("http://127.0.0.1", 80),
        Some(("http", "127.0.0.1", 80))
    );
    assert_eq!(url_parts("no-scheme", 80), None);
    for (text, want) in [
        ("", &b""[..]),
        ("Zg==", b"f"),
        ("Zm8=", b"fo"),
        ("Zm9v", b"foo"),
        ("Zm9vYg==", b"foob"),
        ("AP8=", b"\x00\xff"),
    ] {
        assert_eq!(m::base64_decode(text).unwrap(), want, "{text}");
    }
    for bad in ["Zg=", "Z===", "Zg==Zg==", "Zm9*"] {
        assert!(m::base64_decode(bad).is_err(), "{bad} accepted");
    }
}
