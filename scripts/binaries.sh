# shellcheck shell=bash
# Sourced by scripts/check-static, scripts/configmap and scripts/image: what is built, for
# which architectures, and how to run it on this host. Adding a binary is one word below.

# Every cargo [[bin]] target that is built static, checked by scripts/check-static and put
# into the image.
BINS=(before-stop on-role-change pgbouncer-watchdog)

# The ones shipped gzip'd in ConfigMaps by scripts/configmap: the two Patroni runs from
# /callbacks, and the watchdog beside PgBouncer (one ConfigMap per binary and architecture:
# configmap/kustomization.yaml lists them, and the init containers in configmap/ unpack them
# by `uname -m`).
HOOKS=(before-stop on-role-change pgbouncer-watchdog)

# Rust targets built by default; `--target TRIPLE` (repeatable) picks some of them.
TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

# target_arch TRIPLE: the architecture's name in Kubernetes and OCI (kubernetes.io/arch,
# GOARCH), which is also the suffix of the ConfigMaps and of the image's platforms.
target_arch() {
  case "$1" in
    x86_64-*) echo amd64 ;;
    aarch64-*) echo arm64 ;;
    *) echo "unknown target $1" >&2; return 1 ;;
  esac
}

# target_runner TRIPLE: the command prefix that runs the target's binaries on this host:
# nothing on the same CPU, else Debian's qemu-user-static, invoked explicitly (binfmt_misc
# need not be registered). Fails with a one-line hint when qemu is missing.
target_runner() {
  local cpu=${1%%-*}
  if [ "$cpu" = "$(uname -m)" ]; then return 0; fi
  if ! command -v "qemu-$cpu-static" >/dev/null 2>&1; then
    echo "qemu-$cpu-static not found: scripts/setup installs qemu-user-static" >&2
    return 1
  fi
  command -v "qemu-$cpu-static"
}

# cargo_bin_flags: --bin NAME for every name in BINS
cargo_bin_flags() {
  local b
  for b in "${BINS[@]}"; do printf -- '--bin\n%s\n' "$b"; done
}
