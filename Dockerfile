# syntax=docker/dockerfile:1
# Multi-stage build: a pinned Rust toolchain builds the binary with a cached dependency layer;
# the runtime image holds only the binary, config/ and migrations/, and runs as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependency layer: build against stub sources so edits to src/ do not rebuild every crate.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src migrations \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app conveyor
WORKDIR /app
COPY --from=build /src/target/release/conveyor /usr/local/bin/conveyor
COPY config ./config
COPY migrations ./migrations
ENV CONVEYOR_ENV=production \
    CONVEYOR_CONFIG_DIR=/app/config
USER 10001
EXPOSE 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["conveyor"]
CMD ["run"]
