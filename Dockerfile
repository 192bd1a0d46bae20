# The hooks image: the alternative to the ConfigMaps of configmap/ for clusters that only run
# images from their own registry (docs/stackgres.md, "The image"). An init container of the
# Patroni pods runs it: its CMD copies the two hooks into the emptyDir mounted at /callbacks
# (StackGres: customVolumes "callbacks", mounted as "custom-callbacks"). The watchdog beside
# PgBouncer can run from it too: /hooks/pgbouncer-watchdog.
#
# It packs the binaries that scripts/check-static builds and checks (static musl, no
# PT_INTERP, no DT_NEEDED, run with an empty environment); it does not compile. TARGET names
# the Rust target whose binaries it copies, so build them first, for each architecture:
#
#   scripts/check-static          # both targets: target/{x86_64,aarch64}-unknown-linux-musl/release/
#   # amd64 only (the default TARGET):
#   docker build --build-arg VERSION=0.1.0 -t registry.example.com/patroni-pgbouncer-hooks:0.1.0 .
#   # amd64 and arm64 under one tag: one build per platform, each with its TARGET (--platform
#   # picks the base image's architecture; there is no RUN, so nothing is emulated), then an index:
#   docker buildx build --platform linux/amd64 --build-arg TARGET=x86_64-unknown-linux-musl \
#     --build-arg VERSION=0.1.0 -t registry.example.com/patroni-pgbouncer-hooks:0.1.0-amd64 --push .
#   docker buildx build --platform linux/arm64 --build-arg TARGET=aarch64-unknown-linux-musl \
#     --build-arg VERSION=0.1.0 -t registry.example.com/patroni-pgbouncer-hooks:0.1.0-arm64 --push .
#   docker buildx imagetools create -t registry.example.com/patroni-pgbouncer-hooks:0.1.0 \
#     registry.example.com/patroni-pgbouncer-hooks:0.1.0-amd64 registry.example.com/patroni-pgbouncer-hooks:0.1.0-arm64
#
# scripts/image builds this same Dockerfile offline with buildah (CI does, on every run), once
# per target of scripts/binaries.sh (`buildah bud --platform linux/<arch> --build-arg
# TARGET=...`, BASE_IMAGE a local image of Debian's busybox-static of that architecture
# instead of pulling busybox), puts both images into one OCI image index, and runs each
# unpacked (arm64 under qemu-aarch64-static).

ARG BASE_IMAGE=busybox:1.37.0-musl
FROM ${BASE_IMAGE}
ARG TARGET=x86_64-unknown-linux-musl
ARG VERSION=unknown
COPY target/${TARGET}/release/before-stop target/${TARGET}/release/on-role-change target/${TARGET}/release/pgbouncer-watchdog /hooks/
COPY LICENSE /licenses/patroni-pgbouncer-hooks/LICENSE
LABEL org.opencontainers.image.title="patroni-pgbouncer-hooks" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.description="Patroni before_stop / on_role_change hooks that PAUSE and RESUME an external PgBouncer" \
      org.opencontainers.image.licenses="MIT"
# Any non-root user works: the pod's securityContext usually overrides it anyway.
USER 65534:65534
ENV PATH=/bin
# busybox is there only for sh, cp, chmod and ls: the hooks themselves cannot copy.
CMD ["sh", "-c", "cp /hooks/before-stop /hooks/on-role-change /callbacks/ && chmod 0755 /callbacks/before-stop /callbacks/on-role-change && ls -l /callbacks/"]
