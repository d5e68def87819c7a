# syntax=docker/dockerfile:1.7
# One image with both binaries: vestibule-operator and vestibule-gateway.
# The Helm chart (helm/vestibule) runs each by its absolute path.
#
#   docker build -t vestibule/vestibule:0.1.0 .
#
# Not built in CI (no container engine there).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# --- build -------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
# flate2's zlib-ng backend (through Pingora) builds with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries
# are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vestibule-operator -p vestibule-gateway \
 && mkdir -p /out \
 && cp target/release/vestibule-operator target/release/vestibule-gateway /out/ \
 && strip /out/vestibule-operator /out/vestibule-gateway

# --- runtime -----------------------------------------------------------------
# distroless cc: glibc, libgcc, CA certificates, no shell, no package manager.
# The :nonroot tag runs as uid/gid 65532, which the chart also sets.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="vestibule" \
      org.opencontainers.image.description="Multi-tenant Kubernetes edge gateway: operator and Pingora gateway" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/vestibule-operator /out/vestibule-gateway /usr/local/bin/
USER 65532:65532
# Unprivileged ports: no capabilities needed.
EXPOSE 8080 8443 9090 9901
ENTRYPOINT ["/usr/local/bin/vestibule-gateway"]
CMD ["--help"]
