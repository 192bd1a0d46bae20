# syntax=docker/dockerfile:1
#
# Image for the Patroni hooks `before-stop` and `on-role-change`: the alternative to the
# ConfigMaps of configmap/ for clusters that only run images from their own registry
# (docs/stackgres.md, "Delivering the hooks").
#
# Used as an init container of the Patroni pods: it copies the two static binaries into the
# emptyDir that the patroni container mounts at /callbacks (StackGres: customVolumes name
# "callbacks", mounted as "custom-callbacks"), e.g.
#
#   command: ["cp", "/hooks/before-stop", "/hooks/on-role-change", "/callbacks/"]
#
# Build:
#
#   docker build -t registry.example.com/patroni-pgbouncer-hooks:0.1.0 .
#
# scripts/image builds the same image without Docker or a registry (buildah from scratch ->
# OCI archive, Debian's busybox-static instead of the busybox image) and runs it unpacked; CI
# does that on every run. The binaries are fully static (musl, no PT_INTERP, no DT_NEEDED), so
# they run in any patroni image whatever its libc. scripts/check-static builds exactly the same
# binaries outside Docker and checks that.

ARG RUST_VERSION=1.95
ARG RUNTIME_IMAGE=busybox:stable-musl

############################ build ############################
FROM rust:${RUST_VERSION}-bookworm AS build
ARG TARGET=x86_64-unknown-linux-musl
RUN rustup target add "${TARGET}"
WORKDIR /src

# Dependencies first, so that a source-only change reuses the cached layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src bin \
 && echo '' > src/lib.rs \
 && echo 'fn main() {}' > bin/before-stop.rs \
 && echo 'fn main() {}' > bin/on-role-change.rs \
 && cargo build --locked --release --target "${TARGET}" \
 && rm -rf src bin

COPY src ./src
COPY bin ./bin
# touch: make cargo rebuild the crate itself, not trust the stub's fingerprint.
# Then refuse to ship anything that is not static (no program interpreter, no shared
# libraries) or that does not run with an empty environment.
RUN touch src/lib.rs bin/*.rs \
 && cargo build --locked --release --target "${TARGET}" \
 && mkdir -p /out \
 && cp "target/${TARGET}/release/before-stop" "target/${TARGET}/release/on-role-change" /out/ \
 && for b in /out/before-stop /out/on-role-change; do \
      if readelf -lW "$b" | grep -q 'INTERP'; then echo "$b has PT_INTERP" >&2; exit 1; fi; \
      if readelf -dW "$b" | grep -q '(NEEDED)'; then echo "$b needs shared libraries" >&2; exit 1; fi; \
    done \
 && env -i /out/before-stop --version \
 && env -i /out/on-role-change --version

############################ runtime ############################
# busybox (musl flavour) is there only for `cp`, `chmod` and `sh` in the init container:
# a `FROM scratch` image has no cp, and the hooks themselves cannot copy.
# For production, pin RUNTIME_IMAGE by digest (busybox:stable-musl@sha256:...).
FROM ${RUNTIME_IMAGE}
COPY --from=build /out/before-stop /out/on-role-change /hooks/
COPY LICENSE /licenses/patroni-pgbouncer-hooks/LICENSE
LABEL org.opencontainers.image.title="patroni-pgbouncer-hooks" \
      org.opencontainers.image.description="Patroni before_stop / on_role_change hooks that PAUSE and RESUME an external PgBouncer" \
      org.opencontainers.image.licenses="MIT"
# Any non-root user works: the pod's securityContext usually overrides it anyway.
USER 65534:65534
# Default action of the init container: copy the hooks into the volume mounted at /callbacks.
CMD ["sh", "-c", "cp /hooks/before-stop /hooks/on-role-change /callbacks/ && chmod 0755 /callbacks/before-stop /callbacks/on-role-change && ls -l /callbacks/"]
