# syntax=docker/dockerfile:1
#
# One image holding all four binaries: billing-api, billing-relay, billing-consumer and
# provider-sim. docker-compose.yml picks the binary per service with `command:`.
#
#   docker build -t billing-outbox .
#   docker run --rm billing-outbox billing-api --help
#
# cargo-chef splits the build so that the dependency layer (about 400 crates plus
# librdkafka's C build) is cached and only rebuilt when a Cargo.toml or Cargo.lock changes.

ARG CHEF_IMAGE=lukemathwalker/cargo-chef:latest-rust-1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---- chef: toolchain + the C toolchain librdkafka needs --------------------------------------
FROM ${CHEF_IMAGE} AS chef
# rdkafka-sys (default features) builds librdkafka from source with its own ./configure and make,
# and links zlib (libz-sys finds the system copy through pkg-config). python3 runs librdkafka's
# linker-script generator. No cmake, OpenSSL or SASL: the default features do not use them.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential pkg-config zlib1g-dev perl python3 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# ---- planner: the dependency recipe (changes only when manifests or the lockfile do) ---------
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# ---- builder: cook dependencies (cached layer), then build the workspace binaries ------------
FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# Queries are checked at run time (sqlx::query), so no database is needed to build.
ENV SQLX_OFFLINE=true
RUN cargo build --release --locked \
        -p billing-api -p billing-relay -p billing-consumer -p provider-sim \
    && mkdir -p /out \
    && cp target/release/billing-api target/release/billing-relay \
          target/release/billing-consumer target/release/provider-sim /out/

# ---- runtime: glibc + zlib (both in bookworm-slim), CA roots, curl for healthchecks ----------
FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 billing \
    && useradd --system --uid 10001 --gid billing --no-create-home --shell /usr/sbin/nologin billing
COPY --from=builder /out/ /usr/local/bin/
USER billing:billing
# Containers must listen on all interfaces; the binaries default to 127.0.0.1.
ENV API_ADDR=0.0.0.0:8080 \
    RELAY_ADMIN_ADDR=0.0.0.0:9101 \
    CONSUMER_ADMIN_ADDR=0.0.0.0:9102 \
    PROVIDER_SIM_ADDR=0.0.0.0:9090 \
    LOG_FORMAT=json
EXPOSE 8080 9090 9101 9102
CMD ["billing-api"]
