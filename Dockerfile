# keygate container image.
#
# NOT BUILT OR TESTED HERE: the development machine has no Docker engine. The
# Kubernetes manifests in deploy/kubernetes/ expect an image built from this
# file (no keygate image is published yet):
#
#   docker build -t registry.example.com/keygate:0.1.0 .
#
# Builder: the Rust version pinned in rust-toolchain.toml (1.95.0). keygate
# links glibc and aws-lc-rs (built by the cc crate from C sources), so the
# runtime is distroless "cc" on the same Debian release as the builder.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p keygate \
 && install -D -m 0755 target/release/keygate /out/keygate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keygate /usr/local/bin/keygate
# The image's "nonroot" user, written as its uid:gid so that Kubernetes'
# runAsNonRoot can check it (a user name cannot be checked).
USER 65532:65532
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve", "--config", "/etc/keygate/keygate.yaml"]
