//! What users apply: the objects `kubectl kustomize` renders from configmap/ (and its drill/),
//! loaded as JSON values for the checks of tests/manifests.rs and the pod unpack of
//! tests/configmap.rs. Offline: kubectl's built-in kustomize reads only the repository.
//!
//! * [`kube`]: the Kubernetes schema of the built-in kinds the manifests use (typed, closed);
//! * [`stackgres`]: the SGCluster / SGDbOps fields the manifests use and the facts of
//!   StackGres's code the hooks rely on, each naming its source file;
//! * [`crd`]: the full check against StackGres's CRDs when they are at hand.
//!
//! kubectl: `$KUBECTL`, default `/opt/kubectl/bin/kubectl` (scripts/setup installs it).

pub mod crd;
pub mod kube;
pub mod stackgres;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::Res;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

pub fn kubectl() -> PathBuf {
    std::env::var_os("KUBECTL")
        .filter(|k| !k.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/kubectl/bin/kubectl"))
}

/// Every YAML document of `text`, as JSON values (empty documents dropped).
pub fn parse_docs(text: &str) -> Res<Vec<Value>> {
    let mut docs = Vec::new();
    for d in serde_norway::Deserializer::from_str(text) {
        let v = Value::deserialize(d).map_err(|e| format!("YAML does not parse: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// `kubectl kustomize DIR`: exactly the objects `kubectl apply -k DIR` would send.
pub fn render(dir: &Path) -> Res<Vec<Value>> {
    let mut cmd = Command::new(kubectl());
    cmd.arg("kustomize").arg(dir);
    let (status, out, err) = crate::run(&mut cmd, Duration::from_secs(120)).map_err(|e| {
        format!(
            "{} kustomize: {e} (scripts/setup installs kubectl)",
            kubectl().display()
        )
    })?;
    if !status.success() {
        let hint = if err.contains("hooks-bin") {
            " (scripts/configmap builds the hooks the generator reads)"
        } else {
            ""
        };
        return Err(format!(
            "kubectl kustomize {} failed: {}{hint}",
            dir.display(),
            err.split_whitespace().collect::<Vec<_>>().join(" ")
        ));
    }
    parse_docs(&out)
}

/// The hooks' xz'd binaries that configmap/kustomization.yaml's generator reads.
pub const PACKED: &[&str] = &[
    "configmap/hooks-bin/before-stop-amd64.xz",
    "configmap/hooks-bin/on-role-change-amd64.xz",
    "configmap/hooks-bin/pgbouncer-watchdog-amd64.xz",
    "configmap/hooks-bin/before-stop-arm64.xz",
    "configmap/hooks-bin/on-role-change-arm64.xz",
    "configmap/hooks-bin/pgbouncer-watchdog-arm64.xz",
];

/// Runs `scripts/configmap` (static release build, xz -9 into configmap/hooks-bin/), once
/// per test process: tests that call it together wait for the one run instead of racing on
/// the files it writes.
pub fn pack_hooks() {
    static PACKED_ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    let r = PACKED_ONCE.get_or_init(|| {
        let repo = repo();
        let mut cmd = Command::new(repo.join("scripts/configmap"));
        cmd.current_dir(&repo);
        let (status, out, err) = crate::run(&mut cmd, Duration::from_secs(1200))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{status}\n{out}{err}"))
        }
    });
    if let Err(e) = r {
        panic!("scripts/configmap: {e}");
    }
}

/// The kustomization roots under configmap/: `configmap/` and `configmap/drill/`.
pub fn kustomization_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = manifest_files(&repo().join("configmap"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "kustomization.yaml"))
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    roots.sort();
    roots
}

/// Every *.yaml / *.yml under `dir`, sorted.
pub fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// All objects rendered from every kustomization root, rendered once per test process.
/// Packs the hooks first (scripts/configmap) when configmap/hooks-bin/ is not there.
pub fn rendered() -> &'static [Value] {
    static ALL: OnceLock<Vec<Value>> = OnceLock::new();
    ALL.get_or_init(|| {
        let repo = repo();
        if PACKED.iter().any(|p| !repo.join(p).is_file()) {
            eprintln!("manifests: configmap/hooks-bin/ missing: running scripts/configmap");
            pack_hooks();
        }
        let mut all = Vec::new();
        for root in kustomization_roots() {
            all.extend(render(&root).unwrap_or_else(|e| panic!("{e}")));
        }
        assert!(!all.is_empty(), "kustomize rendered nothing");
        all
    })
}

pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// `Kind/name`, for messages.
pub fn label(doc: &Value) -> String {
    format!("{}/{}", kind(doc), name(doc))
}

/// The objects of one kind.
pub fn of_kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| kind(d) == k)
}

/// Standard base64 (RFC 4648, with padding), as Kubernetes' `binaryData`.
pub fn base64_decode(s: &str) -> Res<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "base64: length {} is not a multiple of 4",
            bytes.len()
        ));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return Err("base64: misplaced '='".into());
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | val(c).ok_or_else(|| format!("base64: invalid byte {c:#04x}"))?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Ok(out)
}
