# registrar: build the release binary, then run it on a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/registrar /usr/local/bin/registrar
EXPOSE 5060/udp 5060/tcp
ENTRYPOINT ["registrar"]
CMD ["serve"]
