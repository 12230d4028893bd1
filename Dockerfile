# Herald's container image: `docker build -t herald:0.1.0 .`
# (the Helm chart's default image is herald:<appVersion>).
#
# Stage 1 builds the release binary; stage 2 is distroless (glibc and libgcc,
# no shell, no package manager) running it as an unprivileged user.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p herald-api --bin herald \
    && install -D -m 0755 target/release/herald /out/herald \
    && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/herald /usr/local/bin/herald
# The data directory (embedded log and store); mount a volume here.
COPY --from=build --chown=10001:10001 /out/data /var/lib/herald
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_DATA_DIR=/var/lib/herald
USER 10001:10001
EXPOSE 8080
VOLUME ["/var/lib/herald"]
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
