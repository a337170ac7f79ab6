# syntax=docker/dockerfile:1.7
# One file, three images: `docker build --target orders-api .` (or outbox-relay,
# invoices-worker). Dependencies are compiled in a layer of their own (cargo-chef),
# so a source change rebuilds only the workspace's crates.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

# The dependency graph only (Cargo.toml and Cargo.lock of every crate).
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Cached until a manifest or the lock file changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
    -p orders-api -p outbox-relay -p invoices-worker
COPY . .
# The services only, as in the step above: without devkit (the test kit), whose
# default feature would compile in the fault suite's switches that break guarantees.
RUN cargo build --release --locked -p orders-api -p outbox-relay -p invoices-worker

# glibc and libgcc only, no shell; runs as the image's non-root user (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
# The Amazon RDS CA bundle, for DATABASE_URL=…?sslmode=verify-full&sslrootcert=/etc/ssl/certs/rds-global-bundle.pem
ADD --chmod=0444 https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem /etc/ssl/certs/rds-global-bundle.pem
USER 65532:65532
ENV RUST_LOG=info HOST=0.0.0.0
STOPSIGNAL SIGTERM

FROM runtime AS orders-api
COPY --from=builder /src/target/release/orders-api /usr/local/bin/orders-api
ENV PORT=3333
EXPOSE 3333
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/orders-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/orders-api"]

FROM runtime AS outbox-relay
COPY --from=builder /src/target/release/outbox-relay /usr/local/bin/outbox-relay
ENV PORT=3335
EXPOSE 3335
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/outbox-relay", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/outbox-relay"]

FROM runtime AS invoices-worker
COPY --from=builder /src/target/release/invoices-worker /usr/local/bin/invoices-worker
ENV PORT=3334
EXPOSE 3334
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/invoices-worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/invoices-worker"]
