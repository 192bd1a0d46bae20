#!/usr/bin/env python3
"""Validate what users apply: the objects `kubectl kustomize` renders from configmap/.

* every *.yaml / *.yml file under configmap/ parses and is reachable from a kustomization.yaml;
* each kustomization root (configmap/, configmap/drill/) is rendered with real kustomize
  (`kubectl kustomize`, offline; $KUBECTL, default /opt/kubectl/bin/kubectl from scripts/setup);
* rendered built-in kinds validate against the Kubernetes OpenAPI schemas of
  `kubernetes-validate` (strict: unknown fields are errors, as the apiserver's strict field
  validation does); SGCluster and SGDbOps against the openAPIV3Schema of the StackGres CRDs
  in $STACKGRES_CRDS_DIR (default ../shared/stackgres-crds next to the repository), closed the
  same way;
* what StackGres's *code* does with an SGCluster (ongres/stackgres 1.18.6; each error names
  the source file the check relies on): custom volumes are renamed custom-<name>; env names
  StackGres already sets on the patroni container are not repeated; the Patroni REST API is
  plain HTTP on :8009; patronictl is a wrapper that needs no arguments; initialConfig holds
  only the keys StackGres lets change on an existing cluster; the primary Service is <cluster>;
* Kubernetes limits: a ConfigMap's decoded data + binaryData <= 1 MiB; an object above the
  256 KiB annotation limit of client-side `kubectl apply` must be applied server-side, and
  README.md / kustomization.yaml say so;
* cross-references (SGDbOps -> SGCluster, volumes -> ConfigMap/Secret, Service selectors).

Before that, a negative self-check feeds deliberately broken documents (and broken copies of
the rendered objects, one per StackGres fact and limit) to the same code and fails if any is
accepted or rejected for another reason, so the validator cannot silently pass.

`--unpack-to DIR` additionally does what a pod does at start: it lays the rendered ConfigMaps
out as the SGCluster's volumes in a scratch root, runs the SGCluster's init container command
there with busybox (chroot, uid 999 like StackGres's pods, empty environment), and copies what
the patroni container would see at /callbacks into DIR (tests/configmap.rs runs them).

Exit status: 0 all valid, 1 any invalid manifest (or broken validator), 2 setup problem.
The last line is "N passed, N failed".
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

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

# ----------------------------------------------------------------- what StackGres's code does
# Source: ongres/stackgres tag 1.18.6 (the same on main), paths under stackgres-k8s/src/.
SRC_VOLUME = ("common/.../StackGresVolume.java (CUSTOM(\"custom-%s\")) and operator/.../"
              "cluster/ClusterPodTemplateSpecFactory.java (renames volumes, copies mounts as written)")
SRC_ENV = ("operator/.../cluster/patroni/PatroniEnvironmentVariables.java, operator/.../cluster/"
           "PostgresEnvironmentVariables.java; customEnv appended without de-duplication by "
           "operator/.../AbstractContainerCustomEnvDecorator.java")
SRC_REST = ("operator/.../cluster/patroni/PatroniConfigMap.java (PATRONI_RESTAPI_LISTEN \"*:\" + "
            "PATRONI_PORT) and common/.../EnvoyUtil.java (PATRONI_PORT = 8009; 8008 is Envoy's)")
SRC_PATRONICTL = ("operator/src/main/resources/templates/patronictl (exec /usr/bin/patronictl "
                  "-c \"$PATRONI_CONFIG_FILE\" \"$@\")")
SRC_INITIAL = ("operator/.../validation/cluster/PatroniInitialConfigValidator.java (only "
               "before_stop, callbacks, pre_promote, pg_ctl_timeout may change on an existing "
               "cluster)")
SRC_SERVICE = ("common/.../PatroniUtil.java (readWriteName = the cluster's name; "
               "DEPRECATED_READ_WRITE_SERVICE \"-primary\")")
SRC_CONFIGMAP = ("kubernetes pkg/apis/core/validation/validation.go (ValidateConfigMap: "
                 "decoded data + binaryData <= MaxSecretSize, 1 MiB)")
SRC_ANNOTATION = ("kubernetes staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go "
                  "(TotalAnnotationSizeLimitB = 256 KiB; client-side apply copies the whole "
                  "object into kubectl.kubernetes.io/last-applied-configuration)")
# Env vars StackGres sets on the patroni container itself.
SG_PATRONI_ENV = {
    "PATRONI_NAME", "POD_IP", "POD_NAME", "CLUSTER_UID", "PATRONI_RESTAPI_CONNECT_ADDRESS",
    "PATRONI_READ_ONLY_SERVICE_NAME", "REPLICATION_SERVICE_PORT", "INITDB_AUTH_HOST",
    "REPLICATION_INITIALIZATION_FROM_BACKUP", "REPLICATION_INITIALIZATION_FROM_REPLICA",
    "REPLICATE_FROM_BACKUP", "RECOVERY_FROM_BACKUP", "RECOVERY_TARGET",
    "RECOVERY_TARGET_TIMELINE", "RECOVERY_TARGET_INCLUSIVE", "RECOVERY_TARGET_NAME",
    "RECOVERY_TARGET_XID", "RECOVERY_TARGET_LSN", "RECOVERY_TARGET_TIME",
    "PGUSER", "PGDATABASE",
}
INITIAL_CONFIG_CHANGEABLE = {"before_stop", "callbacks", "pre_promote", "pg_ctl_timeout"}
PATRONI_REST_PORT = 8009
CONFIGMAP_LIMIT = 1024 * 1024
ANNOTATION_LIMIT = 256 * 1024
SG_UID = 999   # StackGres pods: runAsUser / runAsGroup / fsGroup 999


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


# --------------------------------------------------------------------------- StackGres facts

def _label(d: dict) -> str:
    return f"{d.get('kind')}/{(d.get('metadata') or {}).get('name', '-')}"


def _env_list(pods: dict, container: str) -> list[dict]:
    return ((pods.get("customEnv") or {}).get(container)) or []


def _env_value(pods: dict, name: str) -> str | None:
    for e in _env_list(pods, "patroni"):
        if e.get("name") == name:
            return e.get("value")
    return None


def _pgbouncer_hosts(objs: list[dict]) -> list[tuple[str, str, str]]:
    """(label, host, port) of every `host=` in a pgbouncer.ini [databases] section."""
    out = []
    for d in objs:
        if d.get("kind") != "ConfigMap":
            continue
        for key, text in (d.get("data") or {}).items():
            if not key.endswith(".ini") or "[databases]" not in text:
                continue
            section = text.split("[databases]", 1)[1].split("\n[", 1)[0]
            for line in section.splitlines():
                line = line.split(";", 1)[0]
                host = re.search(r"\bhost=(\S+)", line)
                if host:
                    port = re.search(r"\bport=(\d+)", line)
                    out.append((f"{_label(d)} {key}", host.group(1), port.group(1) if port else "5432"))
    return out


def stackgres_facts(objs: list[dict]) -> list[str]:
    """What StackGres's code does with each SGCluster, as checks (the source file is named)."""
    errs: list[str] = []
    for cl in (d for d in objs if d.get("kind") == "SGCluster"):
        name = (cl.get("metadata") or {}).get("name")
        who = f"SGCluster/{name}"
        spec = cl.get("spec") or {}
        pods = spec.get("pods") or {}

        # 1. custom volumes are custom-<name>, mounts are copied as written
        declared = {f"custom-{v['name']}": v for v in pods.get("customVolumes") or []}
        mounts = []
        for section in ("customVolumeMounts", "customInitVolumeMounts"):
            for cont, ms in (pods.get(section) or {}).items():
                mounts += [(f"pods.{section}.{cont}", m) for m in ms or []]
                if cont not in SG_CONTAINERS:
                    errs.append(f"{who}: pods.{section}.{cont}: not a StackGres pod container "
                                f"({', '.join(sorted(SG_CONTAINERS))})")
        for section in ("customInitContainers", "customContainers"):
            for c in pods.get(section) or []:
                mounts += [(f"pods.{section}[{c.get('name')}]", m) for m in c.get("volumeMounts") or []]
        for where, m in mounts:
            if m.get("name") not in declared:
                errs.append(f"{where}: volume mount {m.get('name')!r} is not a custom volume of "
                            f"{who}: StackGres names custom volumes custom-<name> "
                            f"({sorted(declared)}) [volume prefix: {SRC_VOLUME}]")
        for section in ("customEnv", "customEnvFrom", "customInitEnv", "customInitEnvFrom"):
            for cont in (pods.get(section) or {}):
                if section.startswith("customEnv") and cont not in SG_CONTAINERS:
                    errs.append(f"{who}: pods.{section}.{cont}: not a StackGres pod container")

        # 2. no env name StackGres already sets on patroni, no name twice
        for cont, envs in (pods.get("customEnv") or {}).items():
            seen: set[str] = set()
            for e in envs or []:
                n = e.get("name")
                if cont == "patroni" and n in SG_PATRONI_ENV:
                    errs.append(f"{who}: customEnv.patroni sets {n}, which StackGres already sets "
                                f"on the patroni container: the duplicate makes the server-side "
                                f"apply of the StatefulSet fail [duplicate env: {SRC_ENV}]")
                elif n in seen:
                    errs.append(f"{who}: customEnv.{cont} names {n} twice: the server-side "
                                f"apply of the StatefulSet fails [duplicate env: {SRC_ENV}]")
                seen.add(n)

        # 3. Patroni REST API: plain HTTP on 127.0.0.1:8009
        url = _env_value(pods, "HOOKS_PATRONI_URL")
        if url is None:
            errs.append(f"{who}: customEnv.patroni lacks HOOKS_PATRONI_URL="
                        f"http://127.0.0.1:{PATRONI_REST_PORT}: before-stop would start "
                        f"patronictl twice on every stop [REST port: {SRC_REST}]")
        else:
            try:
                u = urlsplit(url)
                port = u.port
            except ValueError:
                u, port = None, None
            if not u or u.scheme != "http" or u.hostname not in ("127.0.0.1", "localhost") \
                    or port != PATRONI_REST_PORT:
                errs.append(f"{who}: HOOKS_PATRONI_URL={url}: Patroni's REST API in the pod is "
                            f"plain HTTP on port {PATRONI_REST_PORT} "
                            f"(http://127.0.0.1:{PATRONI_REST_PORT}) [REST port: {SRC_REST}]")

        # 4. patronictl: the wrapper finds its configuration by itself
        for n in ("HOOKS_PATRONICTL", "HOOKS_PATRONICTL_ARGS"):
            if _env_value(pods, n) is not None:
                errs.append(f"{who}: customEnv.patroni sets {n}: StackGres's patronictl is a "
                            f"wrapper that passes its own configuration; call it without "
                            f"arguments [patronictl: {SRC_PATRONICTL}]")

        # 5. initialConfig: only what may change on an existing cluster, hooks under a mount
        patroni = ((spec.get("configurations") or {}).get("patroni") or {})
        initial = patroni.get("initialConfig") or {}
        extra = [k for k in initial if k != "postgresql"] + \
            [f"postgresql.{k}" for k in (initial.get("postgresql") or {})
             if k not in INITIAL_CONFIG_CHANGEABLE]
        if extra:
            errs.append(f"{who}: initialConfig sets {', '.join(sorted(extra))}: StackGres "
                        f"refuses to change it on an existing cluster, so this manifest could "
                        f"not be applied to one [initialConfig: {SRC_INITIAL}]")
        pg = initial.get("postgresql") or {}
        patroni_mounts = [m.get("mountPath", "") for m in
                          (pods.get("customVolumeMounts") or {}).get("patroni", [])]
        commands = [pg.get("before_stop")] + list((pg.get("callbacks") or {}).values())
        for cmd in filter(None, commands):
            exe = str(cmd).split()[0]
            if not any(exe.startswith(p.rstrip("/") + "/") for p in patroni_mounts):
                errs.append(f"{who}: Patroni hook {exe} is not under a path mounted into the "
                            f"patroni container ({patroni_mounts})")

        # 6. the primary Service is <cluster> on 5432 ("<cluster>-primary" is deprecated)
        upstream = _env_value(pods, "HOOKS_UPSTREAM_URLS")
        targets = [(f"{who} HOOKS_UPSTREAM_URLS", urlsplit(u).hostname, str(urlsplit(u).port or 5432))
                   for u in (upstream or "").split(",") if u.strip()]
        for where, host, port in targets + _pgbouncer_hosts(objs):
            short = (host or "").split(".")[0]
            if short != name or port != "5432":
                errs.append(f"{where}: {host}:{port} is not the primary Service of {who} "
                            f"({name}:5432) [primary Service: {SRC_SERVICE}]")
        for c in pods.get("customInitContainers") or []:
            uid = (c.get("securityContext") or {}).get("runAsUser")
            if uid not in (None, SG_UID):
                errs.append(f"{who}: init container {c.get('name')} runs as uid {uid}: the "
                            f"files it writes must be usable by the patroni container's uid "
                            f"{SG_UID}")
    return errs


def decoded_size(cm: dict) -> int:
    """A ConfigMap's size as the apiserver counts it: data bytes + decoded binaryData."""
    n = sum(len(k) + len(v.encode()) for k, v in (cm.get("data") or {}).items())
    for k, v in (cm.get("binaryData") or {}).items():
        n += len(k) + len(base64.b64decode(v))
    return n


def last_applied_size(obj: dict) -> int:
    """Bytes of the annotation client-side `kubectl apply` would write (the object as JSON)."""
    return len(json.dumps(obj, separators=(",", ":")).encode())


APPLY_K = re.compile(r"kubectl\s+apply\b[^\n`]*-k\s+configmap/?(?=[\s`]|$)", re.M)


def limit_checks(objs: list[dict], texts: dict[str, str]) -> list[str]:
    """ConfigMap size; objects too big for client-side apply; the docs apply server-side."""
    errs = []
    big = []
    for d in objs:
        if d.get("kind") == "ConfigMap" and decoded_size(d) > CONFIGMAP_LIMIT:
            errs.append(f"{_label(d)}: {decoded_size(d)} bytes of data + binaryData (decoded), "
                        f"over the {CONFIGMAP_LIMIT} of a ConfigMap [ConfigMap size: "
                        f"{SRC_CONFIGMAP}]")
        if last_applied_size(d) > ANNOTATION_LIMIT:
            big.append(_label(d))
    if big:
        for doc, text in texts.items():
            plain = [m.group(0) for m in APPLY_K.finditer(text) if "--server-side" not in m.group(0)]
            if plain:
                errs.append(f"{doc}: says `{plain[0].strip()}`, but {', '.join(big)} exceed the "
                            f"{ANNOTATION_LIMIT}-byte annotation limit of client-side apply: "
                            f"use `kubectl apply --server-side -k configmap/` [annotation "
                            f"limit: {SRC_ANNOTATION}]")
            elif "--server-side" not in text:
                errs.append(f"{doc}: does not say to apply with --server-side, but "
                            f"{', '.join(big)} exceed the {ANNOTATION_LIMIT}-byte annotation "
                            f"limit of client-side apply [annotation limit: {SRC_ANNOTATION}]")
    return errs


# --------------------------------------------------------------------------- cross-references

def _containers(pod_spec: dict) -> Iterable[dict]:
    for key in ("initContainers", "containers"):
        yield from pod_spec.get(key) or []


def cross_check(objs: list[dict]) -> list[str]:
    errs: list[str] = []
    by_kind: dict[str, dict[str, dict]] = {}
    for d in objs:
        if isinstance(d, dict) and d.get("kind") and (d.get("metadata") or {}).get("name"):
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    for name, cl in by_kind.get("SGCluster", {}).items():
        pods = (cl.get("spec") or {}).get("pods") or {}
        env_secrets = [((e.get("valueFrom") or {}).get("secretKeyRef") or {}).get("name")
                       for envs in (pods.get("customEnv") or {}).values() for e in envs]
        refs = [("Secret", s) for s in env_secrets if s]
        for v in pods.get("customVolumes") or []:
            if (v.get("secret") or {}).get("secretName"):
                refs.append(("Secret", v["secret"]["secretName"]))
            if (v.get("configMap") or {}).get("name"):
                refs.append(("ConfigMap", v["configMap"]["name"]))
            for src in (v.get("projected") or {}).get("sources") or []:
                for kind, key in (("configMap", "name"), ("secret", "name")):
                    if (src.get(kind) or {}).get(key):
                        refs.append((kind[0].upper() + kind[1:], src[kind][key]))
        for kind, ref in refs:
            if ref not in by_kind.get(kind, {}):
                errs.append(f"SGCluster/{name}: references {kind} {ref}, not in the rendered "
                            "objects")

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


def kustomization_roots(root: Path) -> list[Path]:
    return sorted(p.parent for p in manifest_files(root)
                  if p.name in ("kustomization.yaml", "kustomization.yml"))


def check_kustomizations(root: Path, files: list[Path]) -> list[str]:
    errs = []
    referenced: set[Path] = set()
    kustomizations = [f for f in files if f.name in ("kustomization.yaml", "kustomization.yml")]
    if not kustomizations:
        errs.append(f"{root}: no kustomization.yaml")
    for k in kustomizations:
        doc = yaml.safe_load(k.read_text()) or {}
        referenced.add(k)
        for r in (doc.get("resources") or []) + (doc.get("configurations") or []):
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


def kubectl() -> str:
    exe = os.environ.get("KUBECTL") or "/opt/kubectl/bin/kubectl"
    if not (Path(exe).is_file() or shutil.which(exe)):
        raise Problem(f"kubectl not found at {exe} (scripts/setup installs it; or set KUBECTL)")
    return exe


def render(kdir: Path) -> list[dict]:
    """`kubectl kustomize DIR`: exactly the objects `kubectl apply -k DIR` would send."""
    p = subprocess.run([kubectl(), "kustomize", str(kdir)], capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        msg = " ".join(p.stderr.split())[:400]
        hint = " (run scripts/configmap first: it builds the hooks the generator reads)" \
            if "hooks-bin" in msg else ""
        raise Problem(f"kubectl kustomize {kdir.name}/ failed: {msg}{hint}")
    return [d for d in yaml.safe_load_all(p.stdout) if d is not None]


def apply_docs(root: Path) -> dict[str, str]:
    """The texts that tell users how to apply the top kustomization."""
    texts = {name: (REPO / name).read_text() for name in ("README.md", "docs/stackgres.md")}
    for k in sorted(root.glob("kustomization.y*ml")):
        texts[str(k.relative_to(REPO) if k.is_relative_to(REPO) else k)] = k.read_text()
    return texts


def validate_tree(root: Path, crds: dict, k8s_version: str, verbose: bool = True
                  ) -> tuple[int, int, list[dict]]:
    passed = failed = 0
    files = manifest_files(root)
    if not files:
        print(f"FAIL {root}: no manifests found")
        return 0, 1, []
    for f in files:
        try:
            load_file(f)
        except Problem as e:
            print(f"FAIL {f.relative_to(root)}: {e}")
            failed += 1
    for e in check_kustomizations(root, files):
        failed += 1
        print(f"FAIL {e}")
    rendered: list[dict] = []
    for kdir in kustomization_roots(root):
        rel = kdir.relative_to(root.parent)
        try:
            objs = render(kdir)
        except Problem as e:
            print(f"FAIL {rel}/: {e}")
            failed += 1
            continue
        for doc in objs:
            errs = validate_doc(doc, crds, k8s_version)
            label = _label(doc) if isinstance(doc, dict) else "document"
            if errs:
                failed += 1
                print(f"FAIL kubectl kustomize {rel}/: {label}")
                for e in errs[:20]:
                    print(f"       {e}")
            else:
                passed += 1
                if verbose:
                    print(f"ok   kubectl kustomize {rel}/: {label}")
        rendered += [d for d in objs if isinstance(d, dict)]
    texts = apply_docs(root)
    for e in cross_check(rendered) + stackgres_facts(rendered) + limit_checks(rendered, texts):
        failed += 1
        print(f"FAIL {e}")
    for d in rendered:
        if d.get("kind") == "ConfigMap" and verbose:
            print(f"ok   {_label(d)}: {decoded_size(d)} of {CONFIGMAP_LIMIT} bytes; "
                  f"as client-side apply annotation {last_applied_size(d)} bytes")
    return passed, failed, rendered


# --------------------------------------------------------------------------- the pod at start

def _volume_files(vol: dict, by_name: dict) -> dict[str, tuple[bytes, int]] | None:
    """path in the volume -> (bytes, mode) for configMap / projected configMap volumes;
    None for an emptyDir."""
    if "emptyDir" in vol:
        return None
    sources = []
    if "configMap" in vol:
        sources = [vol["configMap"]]
        mode = vol["configMap"].get("defaultMode", 0o644)
    elif "projected" in vol:
        sources = [s["configMap"] for s in vol["projected"].get("sources") or []
                   if "configMap" in s]
        mode = vol["projected"].get("defaultMode", 0o644)
    else:
        raise Problem(f"volume {vol['name']}: only emptyDir, configMap and projected "
                      "configMap volumes are laid out here")
    files = {}
    for src in sources:
        cm = by_name.get(src["name"])
        if cm is None:
            raise Problem(f"volume {vol['name']}: ConfigMap {src['name']} not rendered")
        content = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        content.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        items = src.get("items") or [{"key": k, "path": k} for k in content]
        for it in items:
            files[it["path"]] = (content[it["key"]], it.get("mode", mode))
    return files


def unpack_like_the_pod(objs: list[dict], dest: Path) -> list[str]:
    """Run the SGCluster's init containers as the pod would (same volumes, same command,
    busybox, uid 999, empty environment) and copy what the patroni container sees at
    /callbacks into dest. Returns the names copied."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        raise Problem("busybox not found (scripts/setup installs busybox-static)")
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    if os.geteuid() != 0:
        raise Problem("unpacking like the pod needs root (chroot, uid 999)")
    cl = next((d for d in objs if d.get("kind") == "SGCluster"), None)
    if cl is None:
        raise Problem("no SGCluster rendered")
    pods = cl["spec"]["pods"]
    by_name = {d["metadata"]["name"]: d for d in objs if d.get("kind") == "ConfigMap"}
    vols = {f"custom-{v['name']}": v for v in pods.get("customVolumes") or []}
    with tempfile.TemporaryDirectory(prefix="pod-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)              # mkdtemp's 0700 would lock uid 999 out
        (root / "bin").mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True).stdout.split()
        for a in applets:
            if a != "busybox":
                (root / "bin" / a).symlink_to("busybox")
        host_dir: dict[str, Path] = {}   # volume name -> directory standing for it

        def lay_out(name: str, mount_path: str) -> None:
            if name in host_dir:       # the same volume mounted again: same directory
                target = root / mount_path.lstrip("/")
                if target != host_dir[name]:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.symlink_to(host_dir[name])
                return
            if name not in vols:
                raise Problem(f"mount {name}: no such custom volume ({sorted(vols)})")
            d = root / mount_path.lstrip("/")
            d.mkdir(parents=True, exist_ok=True)
            files = _volume_files(vols[name], by_name)
            if files is None:
                d.chmod(0o777)              # an emptyDir is world-writable
            else:
                for rel, (data, mode) in files.items():
                    (d / rel).write_bytes(data)
                    (d / rel).chmod(mode)
            host_dir[name] = d

        inits = pods.get("customInitContainers") or []
        if not inits:
            raise Problem("the SGCluster has no init container to unpack the hooks")
        for c in inits:
            for m in c.get("volumeMounts") or []:
                lay_out(m["name"], m["mountPath"])
            cmd = (c.get("command") or []) + (c.get("args") or [])
            p = subprocess.run([chroot, f"--userspec={SG_UID}:{SG_UID}", str(root)] + cmd,
                               env={"PATH": "/bin"}, capture_output=True, text=True, timeout=60)
            if p.returncode != 0:
                raise Problem(f"init container {c['name']} failed ({p.returncode}): "
                              f"{' '.join((p.stdout + p.stderr).split())[:400]}")
        mount = next((m for m in (pods.get("customVolumeMounts") or {}).get("patroni", [])
                      if m["mountPath"].rstrip("/") == "/callbacks"), None)
        if mount is None or mount["name"] not in host_dir:
            raise Problem("the patroni container does not mount an unpacked volume at /callbacks")
        dest.mkdir(parents=True, exist_ok=True)
        names = []
        for f in sorted(host_dir[mount["name"]].iterdir()):
            shutil.copy2(f, dest / f.name)
            names.append(f.name)
        return names


# --------------------------------------------------------------------------- self-check

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




def _patroni_env(objs: list[dict]) -> list[dict]:
    cl = next(d for d in objs if d.get("kind") == "SGCluster")
    return cl["spec"]["pods"].setdefault("customEnv", {}).setdefault("patroni", [])


def _set_env(objs: list[dict], name: str, value: str | None) -> None:
    env = _patroni_env(objs)
    env[:] = [e for e in env if e.get("name") != name]
    if value is not None:
        env.append({"name": name, "value": value})


def _sgcluster(objs: list[dict]) -> dict:
    return next(d for d in objs if d.get("kind") == "SGCluster")


def _mutations() -> dict[str, tuple[Any, str]]:
    """name -> (mutate(objs, texts), the tag its error must carry)."""
    def prefix(o, t):
        for m in _sgcluster(o)["spec"]["pods"]["customVolumeMounts"]["patroni"]:
            m["name"] = "c-" + m["name"].removeprefix("custom-")

    def init_prefix(o, t):
        for c in _sgcluster(o)["spec"]["pods"]["customInitContainers"]:
            for m in c.get("volumeMounts") or []:
                m["name"] = "c-" + m["name"].removeprefix("custom-")

    def patroni_name(o, t):
        _patroni_env(o).append({"name": "PATRONI_NAME",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})

    def twice(o, t):
        _patroni_env(o).append(dict(_patroni_env(o)[0]))

    def initial(o, t):
        _sgcluster(o)["spec"]["configurations"]["patroni"]["initialConfig"]["postgresql"][
            "parameters"] = {"max_connections": "200"}

    def oversize(o, t):
        cm = next(d for d in o if d.get("kind") == "ConfigMap" and d.get("binaryData"))
        cm["binaryData"]["padding"] = base64.b64encode(b"\0" * CONFIGMAP_LIMIT).decode()

    def client_side(o, t):
        t["README.md"] += "\n```sh\nkubectl apply -k configmap/ -n db\n```\n"

    def no_server_side(o, t):
        for k in t:
            t[k] = t[k].replace("--server-side", "")

    return {
        "patroni mount c-callbacks": (prefix, "[volume prefix:"),
        "init container mount c-callbacks": (init_prefix, "[volume prefix:"),
        "customEnv PGUSER": (lambda o, t: _set_env(o, "PGUSER", "postgres"), "[duplicate env:"),
        "customEnv PATRONI_NAME": (patroni_name, "[duplicate env:"),
        "customEnv name twice": (twice, "[duplicate env:"),
        "REST API on 8008": (lambda o, t: _set_env(o, "HOOKS_PATRONI_URL", "http://127.0.0.1:8008"),
                             "[REST port:"),
        "REST API over https": (lambda o, t: _set_env(o, "HOOKS_PATRONI_URL", "https://127.0.0.1:8009"),
                                "[REST port:"),
        "no HOOKS_PATRONI_URL": (lambda o, t: _set_env(o, "HOOKS_PATRONI_URL", None), "[REST port:"),
        "patronictl with a config file": (
            lambda o, t: _set_env(o, "HOOKS_PATRONICTL_ARGS", "--config-file=/etc/patroni.yml"),
            "[patronictl:"),
        "initialConfig parameters": (initial, "[initialConfig:"),
        "upstream pg-primary": (
            lambda o, t: _set_env(o, "HOOKS_UPSTREAM_URLS", "postgresql://pgbouncer_auth@pg-primary:5432/postgres"),
            "[primary Service:"),
        "ConfigMap over 1 MiB": (oversize, "[ConfigMap size:"),
        "client-side kubectl apply -k": (client_side, "[annotation limit:"),
        "no --server-side anywhere": (no_server_side, "[annotation limit:"),
    }


def fact_self_check(rendered: list[dict], texts: dict[str, str], verbose: bool) -> bool:
    """Each StackGres fact / limit check must reject a broken copy of the rendered objects."""
    ok = True
    for name, (mutate, tag) in _mutations().items():
        objs, t = copy.deepcopy(rendered), dict(texts)
        mutate(objs, t)
        errs = stackgres_facts(objs) + limit_checks(objs, t)
        hit = next((e for e in errs if tag in e), None)
        if hit is None:
            print(f"SELF-CHECK FAIL: broken copy '{name}' was not rejected with {tag!r}: {errs}")
            ok = False
        elif verbose:
            print(f"ok   broken copy '{name}' rejected: {hit[:160]}...")
    return ok


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
    bad_ref = [{"apiVersion": "stackgres.io/v1", "kind": "SGDbOps",
                "metadata": {"name": "x"}, "spec": {"sgCluster": "nope", "op": "restart"}}]
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
    ap.add_argument("--unpack-to", metavar="DIR",
                    help="also unpack the hooks from the rendered ConfigMaps the way the pod "
                         "does, into DIR")
    ap.add_argument("-q", "--quiet", action="store_true", help="print failures only")
    args = ap.parse_args()

    crd_dir = Path(args.crds) if args.crds else REPO.parent / "shared" / "stackgres-crds"
    if not crd_dir.is_absolute():
        crd_dir = (REPO / crd_dir).resolve()
    try:
        crds = load_crds(crd_dir)
        kubectl()
    except Problem as e:
        print(f"validate_manifests: {e}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    print(f"StackGres CRDs: {crd_dir} ({', '.join(sorted(k for _, k in crds))}); "
          f"Kubernetes schemas {args.kubernetes_version} (strict); {kubectl()}")

    if not self_check(crds, args.kubernetes_version):
        print("validate_manifests: the validator accepts broken manifests; refusing to report")
        print("0 passed, 1 failed")
        return 1
    print(f"self-check: {len(BROKEN)} broken documents rejected")

    root = Path(args.root).resolve()
    passed, failed, rendered = validate_tree(root, crds, args.kubernetes_version,
                                             verbose=not args.quiet)
    if any(d.get("kind") == "SGCluster" for d in rendered):
        if not fact_self_check(rendered, apply_docs(root), not args.quiet):
            print("validate_manifests: a StackGres fact check accepts a broken copy")
            failed += 1
        else:
            print(f"self-check: {len(_mutations())} broken copies of the rendered objects "
                  "rejected, each for its fact")
    if args.unpack_to and not failed:
        try:
            names = unpack_like_the_pod(rendered, Path(args.unpack_to))
            passed += 1
            print(f"ok   unpacked like the pod into {args.unpack_to}: {', '.join(names)}")
        except (Problem, OSError, subprocess.SubprocessError) as e:
            failed += 1
            print(f"FAIL unpacking like the pod: {e}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
