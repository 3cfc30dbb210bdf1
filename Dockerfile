# opensourcellmrouter in a container (docs/operations.md).
#   docker build -t opensourcellmrouter .
#   docker run --rm -p 8090:8090 -v $PWD/config.toml:/etc/opensourcellmrouter/config.toml:ro \
#     opensourcellmrouter
# Docker's default seccomp profile blocks io_uring: the router then runs on its epoll driver
# and says so on its startup line. For io_uring, run with a profile that allows
# io_uring_setup, io_uring_enter and io_uring_register (docs/operations.md).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p opensourcellmrouter --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/opensourcellmrouter /usr/local/bin/opensourcellmrouter
RUN useradd --system --home /var/lib/opensourcellmrouter --create-home router
USER router
WORKDIR /var/lib/opensourcellmrouter
EXPOSE 8090
# The config must listen on 0.0.0.0 inside the container: [server] host = "0.0.0.0".
# SIGTERM (docker stop) drains; give it `--stop-timeout 40` for long streams.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/opensourcellmrouter"]
CMD ["/etc/opensourcellmrouter/config.toml"]
