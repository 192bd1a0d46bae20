#!/usr/bin/env python3
"""Validate the Kubernetes manifests under configmap/ offline.

* every *.yaml / *.yml file parses (all documents);
* every file is reachable from a kustomization.yaml, and every kustomization resource exists;
* built-in kinds validate against the Kubernetes OpenAPI schemas shipped by
  `kubernetes-validate` (strict: unknown fields are errors, as `kubectl apply` does);
* SGCluster and SGDbOps validate against the openAPIV3Schema of the StackGres CRDs read from
  $STACKGRES_CRDS_DIR (default: ../shared/stackgres-crds next to the repository), closed the
  way the apiserver's strict field validation closes them (unknown fields are errors);
* a few cross-references: SGCluster custom volume names ("c-" prefix), hook paths mounted in
  the patroni container, SGDbOps -> SGCluster, Deployment volumes -> ConfigMap/Secret,
  Service selectors -> pod labels.

Before that, a negative self-check feeds deliberately broken documents to the same code and
fails if any of them is accepted, so the validator cannot silently pass.

Exit status: 0 all valid, 1 any invalid manifest (or broken validator), 2 setup problem.
The last line is "N passed, N failed".
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - the bash wrapper installs these
    print(f"validate_manifests: missing module {e.name}; run scripts/validate-manifests "
          "(it creates the venv)", file=sys.stderr)
    sys.exit(2)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_K8S_VERSION = "1.33.0"
CRD_KINDS = {"SGCluster", "SGDbOps"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
# Containers of a StackGres cluster pod that customVolumeMounts / customEnv may target.
SG_CONTAINERS = {"patroni", "envoy", "pgbouncer", "prometheus-postgres-exporter",
                 "postgres-util", "fluent-bit", "fluentd", "cluster-controller",
                 "dbops.set-dbops-running", "setup-arbitrary-user", "setup-scripts"}


class Problem(Exception):
    pass


# --------------------------------------------------------------------------- CRD schemas

def _close_schema(node: Any, path: str = "") -> Any:
    """Make a CRD structural schema behave like strict field validation:
    objects with `properties` reject unknown fields unless they preserve unknown fields;
    `nullable: true` allows null; int-or-string allows both."""
    if isinstance(node, list):
        return [_close_schema(n, path) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _close_schema(v, f"{path}/{k}") for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.get("nullable") and "type" in out:
        t = out["type"]
        out["type"] = list(t) + ["null"] if isinstance(t, list) else [t, "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
            and not path.endswith("/properties/metadata")):
        out["additionalProperties"] = False
    return out


def load_crds(crd_dir: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> closed openAPIV3Schema, for every served version."""
    if not crd_dir.is_dir():
        raise Problem(
            f"StackGres CRDs not found: {crd_dir} is not a directory. Set STACKGRES_CRDS_DIR to "
            "the folder holding SGCluster.yaml and SGDbOps.yaml (CI: ../shared/stackgres-crds).")
    schemas: dict[tuple[str, str], dict] = {}
    for f in sorted(crd_dir.glob("*.y*ml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for v in spec.get("versions", []):
                if not v.get("served", True):
                    continue
                schema = (v.get("schema") or {}).get("openAPIV3Schema")
                if schema:
                    api = f"{spec['group']}/{v['name']}"
                    kind = spec["names"]["kind"]
                    closed = _close_schema(schema)
                    # apiVersion and kind are implicit in every CRD schema
                    closed.setdefault("properties", {}).update(
                        apiVersion={"type": "string", "enum": [api]},
                        kind={"type": "string", "enum": [kind]})
                    schemas[(api, kind)] = closed
    missing = {k for k in CRD_KINDS if not any(kind == k for _, kind in schemas)}
    if missing:
        raise Problem(f"StackGres CRDs in {crd_dir} lack {', '.join(sorted(missing))}")
    return schemas


# --------------------------------------------------------------------------- validation

def _fmt_path(err: jsonschema.ValidationError) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(root)"


def validate_doc(doc: Any, crds: dict, k8s_version: str) -> list[str]:
    """Schema errors of one document (empty list: valid)."""
    if not isinstance(doc, dict):
        return [f"document is a {type(doc).__name__}, not a mapping"]
    errors = []
    for key in ("apiVersion", "kind"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            errors.append(f"missing {key}")
    if errors:
        return errors
    kind, api = doc["kind"], doc["apiVersion"]
    if kind in KUSTOMIZE_KINDS:
        if not api.startswith("kustomize.config.k8s.io/"):
            errors.append(f"{kind} with unexpected apiVersion {api}")
        if not isinstance(doc.get("resources", []), list):
            errors.append("resources must be a list")
        return errors
    name = (doc.get("metadata") or {}).get("name")
    if not name:
        errors.append("missing metadata.name")
    if kind in CRD_KINDS or api.startswith("stackgres.io/"):
        schema = crds.get((api, kind))
        if schema is None:
            return errors + [f"no StackGres CRD schema for {api} {kind}"]
        validator = jsonschema.Draft4Validator(schema)
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            errors.append(f"{_fmt_path(err)}: {err.message[:300]}")
        return errors
    try:
        kubernetes_validate.validate(doc, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        # kubernetes-validate reports the first error only; it copies jsonschema's fields
        errors.append(f"{_fmt_path(e)}: {str(getattr(e, 'message', e))[:300]}")
    except kubernetes_validate.utils.VersionNotSupportedError:
        errors.append(f"kubernetes-validate has no schemas for Kubernetes {k8s_version}")
    except kubernetes_validate.SchemaNotFoundError:
        errors.append(f"no Kubernetes {k8s_version} schema for {api} {kind}")
    except kubernetes_validate.InvalidSchemaError as e:
        errors.append(f"invalid schema: {e}")
    return errors


# --------------------------------------------------------------------------- cross-references

def _containers(pod_spec: dict) -> Iterable[dict]:
    for key in ("initContainers", "containers"):
        yield from pod_spec.get(key) or []


def cross_check(docs: list[tuple[Path, dict]]) -> list[str]:
    errs: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for _, d in docs:
        if isinstance(d, dict) and d.get("kind") and (d.get("metadata") or {}).get("name"):
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    for name, cl in by_kind.get("SGCluster", {}).items():
        pods = (cl.get("spec") or {}).get("pods") or {}
        declared = {f"c-{v['name']}" for v in pods.get("customVolumes") or []}
        for c in pods.get("customInitContainers", []) + pods.get("customContainers", []):
            for m in c.get("volumeMounts") or []:
                if m["name"].startswith("c-") and m["name"] not in declared:
                    errs.append(f"SGCluster/{name}: container {c['name']} mounts {m['name']}, "
                                f"not one of the customVolumes {sorted(declared)}")
        for section in ("customVolumeMounts", "customEnv", "customEnvFrom"):
            for cont in (pods.get(section) or {}):
                if cont not in SG_CONTAINERS:
                    errs.append(f"SGCluster/{name}: pods.{section}.{cont}: not a StackGres "
                                f"pod container ({', '.join(sorted(SG_CONTAINERS))})")
        for cont, mounts in (pods.get("customVolumeMounts") or {}).items():
            for m in mounts:
                if m["name"] not in declared:
                    errs.append(f"SGCluster/{name}: customVolumeMounts.{cont} mounts {m['name']}; "
                                f"custom volumes are referenced as c-<name>: {sorted(declared)}")
        patroni_mounts = [m["mountPath"] for m in
                          (pods.get("customVolumeMounts") or {}).get("patroni", [])]
        pg = (((cl.get("spec") or {}).get("configurations") or {}).get("patroni") or {}) \
            .get("initialConfig", {}).get("postgresql", {})
        commands = [pg.get("before_stop")] + list((pg.get("callbacks") or {}).values())
        for cmd in filter(None, commands):
            exe = str(cmd).split()[0]
            if not any(exe.startswith(p.rstrip("/") + "/") for p in patroni_mounts):
                errs.append(f"SGCluster/{name}: Patroni hook {exe} is not under a path mounted "
                            f"into the patroni container ({patroni_mounts})")
        env_secrets = [((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
                       for envs in (pods.get("customEnv") or {}).values() for e in envs]
        vol_secrets = [(v.get("secret") or {}).get("secretName")
                       for v in pods.get("customVolumes") or []]
        for s in filter(None, env_secrets + vol_secrets):
            if s not in by_kind.get("Secret", {}):
                errs.append(f"SGCluster/{name}: references Secret {s}, not in the manifests")

    clusters = set(by_kind.get("SGCluster", {}))
    for name, op in by_kind.get("SGDbOps", {}).items():
        target = (op.get("spec") or {}).get("sgCluster")
        if target not in clusters:
            errs.append(f"SGDbOps/{name}: sgCluster {target!r} is not an SGCluster in the "
                        f"manifests ({sorted(clusters)})")

    pod_labels = []
    for kind in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
        for name, w in by_kind.get(kind, {}).items():
            tpl = (w.get("spec") or {}).get("template") or {}
            pod_labels.append((tpl.get("metadata") or {}).get("labels") or {})
            spec = tpl.get("spec") or {}
            for v in spec.get("volumes") or []:
                for vkind, ref_key, obj_kind in (("configMap", "name", "ConfigMap"),
                                                 ("secret", "secretName", "Secret")):
                    ref = (v.get(vkind) or {}).get(ref_key)
                    if ref and ref not in by_kind.get(obj_kind, {}):
                        errs.append(f"{kind}/{name}: volume {v['name']} uses {obj_kind} {ref}, "
                                    "not in the manifests")
            for c in _containers(spec):
                for e in c.get("env") or []:
                    ref = ((e.get("valueFrom") or {}).get("secretKeyRef") or {})
                    sec = by_kind.get("Secret", {}).get(ref.get("name"))
                    if ref and sec is None:
                        errs.append(f"{kind}/{name}: env {e['name']} uses Secret "
                                    f"{ref.get('name')}, not in the manifests")
                    elif ref and ref.get("key") not in {**(sec.get("data") or {}),
                                                        **(sec.get("stringData") or {})}:
                        errs.append(f"{kind}/{name}: env {e['name']} uses key {ref.get('key')} "
                                    f"absent from Secret {ref.get('name')}")
    for name, svc in by_kind.get("Service", {}).items():
        sel = (svc.get("spec") or {}).get("selector") or {}
        if sel and not any(all(l.get(k) == v for k, v in sel.items()) for l in pod_labels):
            errs.append(f"Service/{name}: selector {sel} matches no pod template in the manifests")
    return errs


# --------------------------------------------------------------------------- files

def manifest_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_file(path: Path) -> list[Any]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        raise Problem(f"YAML does not parse: {e}".replace("\n", " ")) from None
    if not docs:
        raise Problem("no YAML document in file")
    return docs


def check_kustomizations(root: Path, files: list[Path]) -> list[str]:
    errs = []
    referenced: set[Path] = set()
    kustomizations = [f for f in files if f.name in ("kustomization.yaml", "kustomization.yml")]
    if not kustomizations:
        errs.append(f"{root}: no kustomization.yaml")
    for k in kustomizations:
        doc = yaml.safe_load(k.read_text()) or {}
        referenced.add(k)
        for r in doc.get("resources") or []:
            target = (k.parent / r).resolve()
            if target.is_dir():
                referenced.update(p for p in manifest_files(target)
                                  if p.name.startswith("kustomization."))
            elif not target.is_file():
                errs.append(f"{k.relative_to(root)}: resource {r} does not exist")
            else:
                referenced.add(target)
    for f in files:
        if f.resolve() not in referenced:
            errs.append(f"{f.relative_to(root)}: not listed in any kustomization.yaml")
    return errs


def validate_tree(root: Path, crds: dict, k8s_version: str, verbose: bool = True) -> tuple[int, int]:
    passed = failed = 0
    files = manifest_files(root)
    if not files:
        print(f"FAIL {root}: no manifests found")
        return 0, 1
    loaded: list[tuple[Path, dict]] = []
    for f in files:
        rel = f.relative_to(root)
        try:
            docs = load_file(f)
        except Problem as e:
            print(f"FAIL {rel}: {e}")
            failed += 1
            continue
        for i, doc in enumerate(docs):
            errs = validate_doc(doc, crds, k8s_version)
            label = (f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '-')}"
                     if isinstance(doc, dict) else f"document {i}")
            if errs:
                failed += 1
                print(f"FAIL {rel}: {label}")
                for e in errs[:20]:
                    print(f"       {e}")
            else:
                passed += 1
                if verbose:
                    print(f"ok   {rel}: {label}")
            if isinstance(doc, dict):
                loaded.append((f, doc))
    for e in check_kustomizations(root, files) + cross_check(loaded):
        failed += 1
        print(f"FAIL {e}")
    return passed, failed


# --------------------------------------------------------------------------- self-check

# name -> (document, a piece of the error it must produce)
BROKEN = {
    "yaml-syntax.yaml": ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x\n", "does not parse"),
    "deployment-bad-type.yaml": ("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad}
spec:
  replicas: two
  selector: {matchLabels: {a: b}}
  template:
    metadata: {labels: {a: b}}
    spec: {containers: [{name: c, image: busybox}]}
""", "spec/replicas"),
    "service-unknown-field.yaml": ("""
apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  clusterIPs: [None]
  portz: [{port: 1}]
""", "portz"),
    "sgcluster-unknown-field.yaml": ("""
apiVersion: stackgres.io/v1
kind: SGCluster
metadata: {name: bad}
spec:
  instances: 1
  postgres: {version: "17"}
  pods:
    persistentVolume: {size: 1Gi}
    customEnvs: {patroni: [{name: X, value: y}]}
""", "customEnvs"),
    "sgcluster-missing-required.yaml": ("""
apiVersion: stackgres.io/v1
kind: SGCluster
metadata: {name: bad}
spec:
  instances: 1
  postgres: {version: "17"}
  pods: {}
""", "persistentVolume"),
    "sgdbops-bad-type.yaml": ("""
apiVersion: stackgres.io/v1
kind: SGDbOps
metadata: {name: bad}
spec: {sgCluster: pg, op: restart, maxRetries: "zero", restart: {onlyPendingRestart: maybe}}
""", "spec/maxRetries"),
    "sgdbops-wrong-apiversion.yaml": ("""
apiVersion: stackgres.io/v1beta1
kind: SGDbOps
metadata: {name: bad}
spec: {sgCluster: pg, op: restart}
""", "no StackGres CRD schema"),
}

GOOD_SGCLUSTER = {
    "apiVersion": "stackgres.io/v1", "kind": "SGCluster", "metadata": {"name": "good"},
    "spec": {"instances": 1, "postgres": {"version": "17"},
             "pods": {"persistentVolume": {"size": "1Gi"}}},
}


def self_check(crds: dict, k8s_version: str) -> bool:
    """Every deliberately broken document must be rejected; a good one must pass."""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for name, (text, expected) in BROKEN.items():
            p = Path(tmp) / name
            p.write_text(text)
            try:
                errs = [e for d in load_file(p) for e in validate_doc(d, crds, k8s_version)]
            except Problem as e:
                errs = [str(e)]
            if not errs:
                print(f"SELF-CHECK FAIL: broken document {name} was accepted")
                ok = False
            elif not any(expected in e for e in errs):
                print(f"SELF-CHECK FAIL: {name} was rejected for the wrong reason "
                      f"(expected {expected!r}): {errs}")
                ok = False
    good = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "good"},
            "data": {"a": "b"}}
    for doc in (good, GOOD_SGCLUSTER):
        errs = validate_doc(doc, crds, k8s_version)
        if errs:
            print(f"SELF-CHECK FAIL: a valid {doc['kind']} was rejected: {errs}")
            ok = False
    bad_ref = [(Path("x"), {"apiVersion": "stackgres.io/v1", "kind": "SGDbOps",
                            "metadata": {"name": "x"}, "spec": {"sgCluster": "nope", "op": "restart"}})]
    if not cross_check(bad_ref):
        print("SELF-CHECK FAIL: an SGDbOps pointing at a missing SGCluster was accepted")
        ok = False
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", nargs="?", default=str(REPO / "configmap"))
    ap.add_argument("--crds", default=os.environ.get("STACKGRES_CRDS_DIR"),
                    help="StackGres CRD directory (env STACKGRES_CRDS_DIR; "
                         "default ../shared/stackgres-crds relative to the repository)")
    ap.add_argument("--kubernetes-version",
                    default=os.environ.get("KUBERNETES_VERSION", DEFAULT_K8S_VERSION))
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    args = ap.parse_args()

    crd_dir = Path(args.crds) if args.crds else REPO.parent / "shared" / "stackgres-crds"
    if not crd_dir.is_absolute():
        crd_dir = (REPO / crd_dir).resolve()
    try:
        crds = load_crds(crd_dir)
    except Problem as e:
        print(f"validate_manifests: {e}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    print(f"StackGres CRDs: {crd_dir} ({', '.join(sorted(k for _, k in crds))}); "
          f"Kubernetes schemas {args.kubernetes_version} (strict)")

    if not self_check(crds, args.kubernetes_version):
        print("validate_manifests: the validator accepts broken manifests; refusing to report")
        print("0 passed, 1 failed")
        return 1
    print(f"self-check: {len(BROKEN)} broken documents rejected")

    passed, failed = validate_tree(Path(args.root).resolve(), crds, args.kubernetes_version,
                                   verbose=not args.quiet)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
