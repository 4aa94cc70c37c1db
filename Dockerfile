# Builds every OrderFlow binary; docker-compose.yml runs each from this image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/orderflow-api /src/target/release/orderflow-worker \
     /src/target/release/orderflow-paysim /src/target/release/orderflow /usr/local/bin/
USER 10001
