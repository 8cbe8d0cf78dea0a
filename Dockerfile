# syntax=docker/dockerfile:1
#
# ezthrottle container image (docs/kubernetes.md).
#
#   docker build -t ezthrottle:0.1.0 .
#
# Two stages: a release build on the Rust image, then a small Debian runtime
# with the CA roots, running as the non-root uid/gid 65532. The runtime keeps
# /bin/sh and /etc/ssl/certs/ca-certificates.crt on purpose: the Helm chart's
# sidecar uses this same image in an init container to write "system roots +
# ezthrottle CA" into one bundle for the app's SSL_CERT_FILE.
#
# The default command runs on built-in defaults, which listen on loopback
# only. To reach it from outside the container, give it a config that
# listens on 0.0.0.0 with [proxy] allow_clients and [control] api_keys:
#
#   docker run --rm -p 4000:4000 -p 4001:4001 \
#     -v "$PWD/ezthrottle.toml:/etc/ezthrottle/ezthrottle.toml:ro" \
#     ezthrottle:0.1.0 run --config /etc/ezthrottle/ezthrottle.toml

# The compiler pgo/PROFILE records, so the committed profile applies
# (scripts/release-flags; with another rustc the build is simply not
# profile-guided, and says so).
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# cmake: native dependencies of the TLS/proxy stack build with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The patched pingora crates (Cargo.toml's [patch.crates-io]).
COPY vendor ./vendor
COPY src ./src
COPY benches ./benches
COPY conf ./conf
# The committed profile and the script that decides whether it applies:
# the image's binary is the profile-guided one the benchmarks measure.
COPY pgo ./pgo
COPY scripts/release-flags ./scripts/release-flags
# Registry, git checkouts and target/ live in BuildKit caches between builds;
# the binary is copied out of the cache in the same step. Symbols are
# stripped afterwards with strip(1) rather than the profile's `strip`
# setting, so the release profile, and with it every symbol's hash that the
# profile is looked up by, stays the one the profile was made with.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    scripts/release-flags cargo build --release --locked --bin ezthrottle \
 && install -D -m 0755 target/release/ezthrottle /out/ezthrottle \
 && strip /out/ezthrottle \
 && /out/ezthrottle --version

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="ezthrottle" \
      org.opencontainers.image.description="Forward HTTP proxy that paces, de-duplicates and retries outbound API calls" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 ezthrottle \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /var/lib/ezthrottle --shell /usr/sbin/nologin ezthrottle \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/ezthrottle \
 && install -d -m 0755 /etc/ezthrottle
COPY --from=build /out/ezthrottle /usr/local/bin/ezthrottle
COPY conf/ezthrottle.toml /usr/share/doc/ezthrottle/ezthrottle.toml
# The CA, the embedded store and learned limits (mount a volume here).
ENV EZTHROTTLE_DATA_DIR=/var/lib/ezthrottle
WORKDIR /var/lib/ezthrottle
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 4000 4001
STOPSIGNAL SIGTERM
ENTRYPOINT ["ezthrottle"]
CMD ["run"]
