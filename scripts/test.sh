#!/usr/bin/env bash
# Runs every check and test: rustfmt, clippy and rustdoc with warnings denied, then unit,
# property, doc and integration tests on both brokers (the embedded mock cluster in-process,
# and tansu, which this script installs and starts on 127.0.0.1).
#
#   scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

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
# The interoperability tests produce with the Python confluent-kafka client.
scripts/python-env.sh >/dev/null

started_here=false
if ! scripts/broker.sh status >/dev/null 2>&1; then
  started_here=true
fi
scripts/broker.sh start
if $started_here; then
  trap 'scripts/broker.sh stop' EXIT
fi
export WEIR_TEST_TANSU="127.0.0.1:${TANSU_PORT:-19092}"

# Lints first: they fail fast and cost little.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

cargo test --workspace --doc
cargo nextest run --workspace --no-fail-fast "$@"
