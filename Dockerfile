# syntax=docker/dockerfile:1
# The ferry controller image: `ferry` (entry point) and the `kubectl-ferry` plugin binary.
#   docker build -t ghcr.io/ferry-dev/ferry:0.1.0 .
#   docker build --build-arg FEATURES=otel ...    # with OpenTelemetry trace export (README)
# The binary links libvirt's client library (virt crate), so the build stage needs libvirt-dev and
# the runtime needs libvirt0 from the same Debian release. openssh-client serves qemu+ssh:// URIs.

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
ARG FEATURES=""
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --features "${FEATURES}" --bin ferry --bin kubectl-ferry \
 && install -m 0755 target/release/ferry target/release/kubectl-ferry /usr/local/bin/

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/ferry /usr/local/bin/kubectl-ferry /usr/local/bin/
# A numeric non-root user (the chart's runAsUser); HOME is the writable emptyDir the chart mounts.
USER 65532:65532
ENV HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["controller", "--http-addr", "0.0.0.0:8080", "--log-format", "json"]
