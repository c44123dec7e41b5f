# syntax=docker/dockerfile:1
# conveyor's container image (see README "Running in production").
#
# Build: a pinned Rust toolchain; cargo-chef caches the dependency build in its own layer, so a
# change under src/ rebuilds only conveyor itself. Runtime: distroless/cc (glibc, CA
# certificates, no shell, no package manager) as its non-root user, holding only the binary,
# config/ and migrations/. Expected size: about 45 MB (≈ 24 MB base + the 19.6 MB binary).

ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the benchmark programs as example targets; cargo reads them to plan.
COPY scripts/benchmark/helper.rs scripts/benchmark/engine.rs ./scripts/benchmark/
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin conveyor
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY scripts/benchmark/helper.rs scripts/benchmark/engine.rs ./scripts/benchmark/
# sqlx embeds migrations/ into the binary at compile time.
COPY migrations ./migrations
RUN cargo build --release --locked --bin conveyor

FROM ${RUNTIME_IMAGE} AS runtime
WORKDIR /app
COPY --from=build /src/target/release/conveyor /usr/local/bin/conveyor
COPY config ./config
COPY migrations ./migrations
ENV CONVEYOR_ENV=production \
    CONVEYOR_CONFIG_DIR=/app/config
# distroless's "nonroot" user.
USER 65532:65532
# The ops listener: /healthz, /readyz, /metrics (ops.listen_addr in config/production.toml).
EXPOSE 9090
# `conveyor health` asks the running daemon's /healthz: no curl needed in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/conveyor", "health"]
# conveyor drains on SIGTERM within shutdown.grace_secs (25 s): give it longer than that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/conveyor"]
CMD ["run"]
