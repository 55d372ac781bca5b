# syntax=docker/dockerfile:1
# The ferry controller image: `ferry` (entry point) and the `kubectl-ferry` plugin binary.
#   docker build -t ghcr.io/ferry-dev/ferry:0.1.0 --build-arg FERRY_GIT_COMMIT=$(git rev-parse HEAD) .
#   docker build --build-arg FEATURES=otel ...    # with OpenTelemetry trace export (docs/observability.md)
# scripts/image.sh builds the same image without a container engine; a test builds exactly this
# file's context (.dockerignore) with cargo, so the two cannot drift apart.
# The binary links libvirt's client library (virt crate), so the build stage needs libvirt-dev and
# the runtime needs libvirt0 from the same Debian release. openssh-client serves qemu+ssh:// URIs.

ARG RUST_VERSION=1.89
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
ARG FEATURES=""
# The context has no .git: `ferry --version` shows this commit (build.rs), or "unknown".
ARG FERRY_GIT_COMMIT=""
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    FERRY_GIT_COMMIT="${FERRY_GIT_COMMIT}" \
    cargo build --release --locked --features "${FEATURES}" --bin ferry --bin kubectl-ferry \
 && install -m 0755 target/release/ferry target/release/kubectl-ferry /usr/local/bin/

FROM debian:${DEBIAN_RELEASE}-slim
# The user the chart runs as, with a name and a home: ssh (qemu+ssh://) refuses a uid without one.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libvirt0 openssh-client ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && echo "ferry:x:65532:65532:ferry:/tmp:/usr/sbin/nologin" >>/etc/passwd \
 && echo "ferry:x:65532:" >>/etc/group
COPY --from=build /usr/local/bin/ferry /usr/local/bin/kubectl-ferry /usr/local/bin/
ARG FERRY_GIT_COMMIT=""
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Kubernetes operator that runs KVM virtual machines on libvirt hosts" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${FERRY_GIT_COMMIT}"
# A numeric non-root user (the chart's runAsUser); HOME is the writable emptyDir the chart mounts.
USER 65532:65532
ENV HOME=/tmp
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["controller", "--http-addr", "0.0.0.0:8080", "--log-format", "json"]
