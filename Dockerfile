#
# vsm container image (CONTRACT §10).
#   docker build -t vsm .
#   docker run --rm -p 4000:4000 -e DATABASE_URL=postgres://... vsm            # vsm serve
#   docker run --rm -e DATABASE_URL=postgres://... vsm migrate
#
# The binary links no C libraries (pure-Rust PostgreSQL client, no libpq, no OpenSSL), so the
# runtime stage needs only CA certificates, plus curl for the health check.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

############################ builder ############################
FROM ${RUST_IMAGE} AS builder
WORKDIR /build

# 1. Dependency layer: build every dependency against stub sources, so that a change to the
#    project's own code does not recompile the dependency graph. Rebuilt only when
#    Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

# 2. The project itself. The stub's build records must not be reused: COPY keeps the files'
#    original modification times, which may be older than the stub build, so remove the
#    project's own artifacts (dependencies stay) and touch the crate roots.
COPY src ./src
COPY migrations ./migrations
RUN rm -rf target/release/.fingerprint/vsm-* target/release/deps/vsm-* \
           target/release/deps/libvsm-* target/release/libvsm.* target/release/vsm \
           target/release/vsm.d \
 && touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/vsm /out/vsm

############################ runtime ############################
FROM ${RUNTIME_IMAGE} AS runtime

RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 vsm \
 && useradd --system --uid 10001 --gid vsm --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin vsm

WORKDIR /app
# The binary reads config/default.toml (and config/$VSM_ENV.toml) relative to /app.
COPY --chown=root:root config/ ./config/
COPY --from=builder --chown=root:root /out/vsm /usr/local/bin/vsm
# (No COPY --chmod: it needs BuildKit, and the classic builder of docker-compose v1 must work too.)
COPY compose/scripts/entrypoint.sh compose/scripts/healthcheck.sh compose/scripts/wait-for-it.sh \
     /usr/local/bin/
RUN chmod 0755 /usr/local/bin/entrypoint.sh /usr/local/bin/healthcheck.sh \
               /usr/local/bin/wait-for-it.sh

USER vsm:vsm

# 4000: vsm serve (HTTP API, /live /health /ready /metrics, /v1/events SSE)
# 4001: vsm work  (/live /health /ready /metrics)
EXPOSE 4000 4001

# Probes /health on 127.0.0.1:${HEALTHCHECK_PORT:-4000}; workers run `healthcheck.sh 4001`.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/healthcheck.sh"]

# vsm stops gracefully within 25 s of SIGTERM; give it 30 s (compose: stop_grace_period: 30s).
STOPSIGNAL SIGTERM

ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["serve"]
