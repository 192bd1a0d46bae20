//! The full schema check against StackGres's own CRDs, when they are at hand (they are
//! StackGres's files, AGPL-3.0, not copied into this project): `$STACKGRES_CRDS_DIR`, else
//! `../shared/stackgres-crds` beside the repository (CI lays it there).
//!
//! Validates a document against a CRD's `openAPIV3Schema` the way the API server's strict
//! field validation does for what this project uses: `type`, `properties` (closed unless
//! `x-kubernetes-preserve-unknown-fields` or `additionalProperties`), `required`, `items`,
//! `enum`, `nullable`, `x-kubernetes-int-or-string`, `anyOf` / `oneOf` / `allOf`. Not
//! checked: `pattern`, `format`, `minimum` and the other value constraints, CEL rules.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the upstream CRDs are looked for, and whether they must be there.
#[derive(Debug, Clone)]
pub enum CrdsDir {
    /// `STACKGRES_CRDS_DIR` is set: it must hold the CRDs.
    Required(PathBuf),
    /// The default beside the repository: used when present, else the check is skipped.
    IfPresent(PathBuf),
}

pub fn crds_dir(repo: &Path) -> CrdsDir {
    match std::env::var_os("STACKGRES_CRDS_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            CrdsDir::Required(if p.is_absolute() { p } else { repo.join(p) })
        }
        _ => CrdsDir::IfPresent(repo.join("../shared/stackgres-crds")),
    }
}

/// (apiVersion, kind) -> openAPIV3Schema, for every served version.
pub struct Crds {
    pub dir: PathBuf,
    schemas: BTreeMap<(String, String), Value>,
}

impl Crds {
    /// `Ok(None)` when the CRDs are optional and absent.
    pub fn load(where_: &CrdsDir) -> Result<Option<Crds>, String> {
        let (dir, required) = match where_ {
            CrdsDir::Required(d) => (d, true),
            CrdsDir::IfPresent(d) => (d, false),
        };
        if !dir.is_dir() {
            return if required {
                Err(format!(
                    "STACKGRES_CRDS_DIR={}: not a directory (it should hold SGCluster.yaml and SGDbOps.yaml)",
                    dir.display()
                ))
            } else {
                Ok(None)
            };
        }
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect();
        files.sort();
        let mut schemas = BTreeMap::new();
        for f in files {
            let text = fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
            for doc in super::parse_docs(&text).map_err(|e| format!("{}: {e}", f.display()))? {
                if doc["kind"] != "CustomResourceDefinition" {
                    continue;
                }
                let spec = &doc["spec"];
                let group = spec["group"].as_str().unwrap_or_default();
                let kind = spec["names"]["kind"].as_str().unwrap_or_default();
                for v in spec["versions"].as_array().into_iter().flatten() {
                    if v["served"] == Value::Bool(false) {
                        continue;
                    }
                    let schema = &v["schema"]["openAPIV3Schema"];
                    if schema.is_object() {
                        let api = format!("{group}/{}", v["name"].as_str().unwrap_or_default());
                        schemas.insert((api, kind.to_string()), schema.clone());
                    }
                }
            }
        }
        for kind in ["SGCluster", "SGDbOps"] {
            if !schemas.keys().any(|(_, k)| k == kind) {
                return Err(format!("{}: no CRD for {kind}", dir.display()));
            }
        }
        Ok(Some(Crds {
            dir: dir.clone(),
            schemas,
        }))
    }

    pub fn kinds(&self) -> Vec<String> {
        self.schemas
            .keys()
            .map(|(a, k)| format!("{a} {k}"))
            .collect()
    }

    /// The schema errors of one document, each `path: message`.
    pub fn validate(&self, doc: &Value) -> Vec<String> {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        let Some(schema) = self.schemas.get(&(api.to_string(), kind.to_string())) else {
            return vec![format!(
                "no CRD schema for {api} {kind} in {}",
                self.dir.display()
            )];
        };
        let mut errs = Vec::new();
        // apiVersion and kind chose the schema; metadata is the API server's ObjectMeta,
        // which the CRD's schema does not describe (stackgres.rs checks it).
        let mut body = doc.clone();
        if let Some(o) = body.as_object_mut() {
            o.remove("apiVersion");
            o.remove("kind");
        }
        let mut schema = schema.clone();
        if let Some(p) = schema.get_mut("properties").and_then(Value::as_object_mut) {
            p.remove("apiVersion");
            p.remove("kind");
            p.insert("metadata".into(), serde_json::json!({"type": "object"}));
        }
        validate(&schema, &body, "", &mut errs);
        errs
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// One node of an OpenAPI v3 structural schema against one value.
pub fn validate(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let at = if path.is_empty() { "(root)" } else { path };
    if v.is_null() {
        if schema["nullable"] != Value::Bool(true) {
            errs.push(format!("{at}: null is not allowed here"));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == Value::Bool(true) {
        if !matches!(type_name(v), "integer" | "string") {
            errs.push(format!(
                "{at}: {} where an integer or string is expected",
                type_name(v)
            ));
        }
        return;
    }
    for (key, all) in [("anyOf", false), ("oneOf", false), ("allOf", true)] {
        if let Some(branches) = schema[key].as_array() {
            let results: Vec<Vec<String>> = branches
                .iter()
                .map(|b| {
                    let mut e = Vec::new();
                    validate(b, v, path, &mut e);
                    e
                })
                .collect();
            let ok = if all {
                results.iter().all(Vec::is_empty)
            } else {
                results.iter().any(Vec::is_empty)
            };
            if !ok {
                errs.push(format!("{at}: does not match {key} of the schema"));
            }
        }
    }
    if let Some(t) = schema["type"].as_str() {
        let got = type_name(v);
        let fits = got == t || (t == "number" && got == "integer");
        if !fits {
            errs.push(format!("{at}: {got} where {t} is expected"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(v) {
            errs.push(format!(
                "{at}: {v} is not one of {}",
                Value::from(allowed.clone())
            ));
        }
    }
    match v {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str() {
                    if !map.contains_key(r) {
                        errs.push(format!("{at}: missing required field {r}"));
                    }
                }
            }
            let open = schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
            for (k, child) in map {
                let p = format!("{path}/{k}");
                if let Some(s) = props.and_then(|p| p.get(k)) {
                    validate(s, child, &p, errs);
                } else if let Some(extra) = schema.get("additionalProperties") {
                    match extra {
                        Value::Bool(true) => {}
                        Value::Bool(false) => errs.push(format!("{p}: unknown field")),
                        s => validate(s, child, &p, errs),
                    }
                } else if props.is_some() && !open {
                    errs.push(format!("{p}: unknown field"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(s, item, &format!("{path}/{i}"), errs);
                }
            }
        }
        _ => {}
    }
}
