# syntax=docker/dockerfile:1
#
# The pgprism image: the `pgprism` binary on Debian bookworm-slim, running as an
# unprivileged user, with the example configuration at /etc/pgprism/pgprism.toml.
#
#   docker build -t pgprism .
#   docker run --rm -p 9187:9187 \
#       -e PGPRISM_SOURCE_DSN=postgres://pgprism:SECRET@db:5432/shop \
#       -e PGPRISM_SINKS_PG_DSN=postgres://pgprism:SECRET@db:5432/shop \
#       -e PGPRISM_SINKS_CACHE_URL=redis://cache:6379 \
#       pgprism
#
# Every configuration key can be overridden by an environment variable named after its
# key path (PGPRISM_SOURCE_DSN sets source.dsn); mount your own file over
# /etc/pgprism/pgprism.toml (or point PGPRISM_CONFIG elsewhere) for your projections.
# docker-compose.yml at the repository root runs the whole stack.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The cargo registry and target/ live in BuildKit cache mounts, so a rebuild after a
# source change recompiles pgprism's crates only, not every dependency. That is sturdier
# than a layer of stub manifests: it needs no update when a crate, bin or bench is added.
# A cache mount is not part of the image, hence the copy out of target/ in the same step.
# The build is the workspace's own (`--locked`: exactly Cargo.lock). The release profile
# keeps line tables (debug = 1) for profiling; the copy in the image drops them
# (49 MB -> 9 MB) and keeps the symbols, so a backtrace still names functions.
# KEEP_DEBUG=1 keeps them: docker build --build-arg KEEP_DEBUG=1 .
ARG KEEP_DEBUG=0
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p pgprism --bin pgprism \
    && install -D -m 0755 target/release/pgprism /out/pgprism \
    && if [ "$KEEP_DEBUG" != 1 ]; then strip --strip-debug /out/pgprism; fi \
    && /out/pgprism --version

FROM ${RUNTIME_IMAGE}
# ca-certificates: for TLS to managed Postgres when built with `--features tls`, and
# nothing else. No tini: pgprism is the only process, handles SIGTERM and SIGINT itself
# (graceful stop within shutdown.deadline, 10s by default; a second signal exits at
# once) and starts no children. Give orchestrators a stop grace period longer than
# shutdown.deadline (compose: stop_grace_period: 15s; Kubernetes:
# terminationGracePeriodSeconds: 15). `docker run --init` works too if you want one.
# Unpinned on purpose: certificates should be the newest the base release has.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgprism \
    && useradd --system --uid 10001 --gid pgprism --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgprism

COPY --from=builder /out/pgprism /usr/local/bin/pgprism
COPY pgprism.example.toml /etc/pgprism/pgprism.toml

ENV PGPRISM_CONFIG=/etc/pgprism/pgprism.toml \
    PGPRISM_HTTP_BIND=0.0.0.0:9187 \
    PGPRISM_LOG=info

USER 10001:10001
EXPOSE 9187

# /healthz answers while the process is up. The image has no curl or wget, and adds
# none: bash (part of every Debian base) speaks the one HTTP/1.0 request over
# /dev/tcp, on the port of PGPRISM_HTTP_BIND. /readyz is for load balancers and
# Kubernetes readiness, not for restarts: it is 503 while the source is unreachable.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PGPRISM_HTTP_BIND##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["pgprism"]
CMD ["run"]
