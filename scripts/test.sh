#!/usr/bin/env bash
# Runs every check and test: rustfmt, clippy and rustdoc with warnings denied, then unit,
# property, doc and integration tests on every broker (Kafka: the embedded mock cluster
# in-process and tansu; NATS: nats-server with JetStream; RabbitMQ: Debian's rabbitmq-server;
# SQS: moto's server; this script installs and starts the servers on 127.0.0.1).
#
#   scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# Says how long the run has taken as each step starts, so a slow CI run shows where it went.
step() { echo "test.sh: $1 (at ${SECONDS} s)" >&2; }
step "installing what is missing"

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# The TLS tests put stunnel in front of tansu and make their certificates with openssl; the
# status page test renders the worker's page in Debian's chromium, headless.
missing=()
for tool in stunnel4:stunnel4 openssl:openssl chromium:chromium; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool##*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  as_root=""; [ "$(id -u)" -eq 0 ] || as_root=sudo
  $as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The interoperability tests use Python's clients (confluent-kafka, nats-py, pika, boto3).
scripts/python-env.sh >/dev/null

step "starting the servers"
# Each server started here is stopped on exit; one already running is left alone.
stop_on_exit=()
for server in broker nats rabbitmq sqs; do
  if ! "scripts/$server.sh" status >/dev/null 2>&1; then
    stop_on_exit+=("scripts/$server.sh stop")
  fi
  "scripts/$server.sh" start
done
if [ ${#stop_on_exit[@]} -gt 0 ]; then
  trap "$(printf '%s; ' "${stop_on_exit[@]}")" EXIT
fi
export WEIR_TEST_TANSU="127.0.0.1:${TANSU_PORT:-19092}"
export WEIR_TEST_NATS="nats://127.0.0.1:${NATS_PORT:-14222}"
export WEIR_TEST_RABBITMQ="amqp://guest:guest@127.0.0.1:${RABBITMQ_PORT:-15673}/%2f"
export WEIR_TEST_SQS="http://127.0.0.1:${SQS_PORT:-14566}"

# Lints first: they fail fast and cost little.
step "lints: rustfmt, clippy on the workspace"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
step "clippy on weir alone, with Kafka and without"
# weir alone, as a Kafka-only user builds it (the workspace turns its other brokers' features
# on), and without Kafka, as a NATS, RabbitMQ and SQS user builds it (no librdkafka): the
# library those users compile, not its unit tests, which run in the workspace's build (they
# took 165 s more to build without Kafka, for one test of their own, now run in every build).
cargo clippy -p weir --lib -- -D warnings
cargo clippy -p weir --no-default-features --features nats,rabbitmq,sqs --lib -- -D warnings
step "rustdoc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "doc tests"
cargo test --workspace --doc
step "every other test (nextest)"
# Four tests at a time on 2 cores: most of them wait on brokers. With two the run was 32
# minutes (1,044 s of tests; 726 s with three, the whole run 1,593 s, 2026-12-06); with three
# and the SQS tests, 792 s of tests and 1,859 s in all (2026-12-07).
cargo nextest run --workspace --no-fail-fast --test-threads 4 "$@"
step "done"
