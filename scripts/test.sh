#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, checks format and
# lints, then runs every test against real Postgres and Redis servers the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh

# cargo-nextest applies .config/nextest.toml (per-test threads, timeouts); a machine
# without it gets the pinned version from crates.io.
NEXTEST_VERSION=0.9.143
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest $NEXTEST_VERSION"
    cargo install --locked --quiet cargo-nextest --version "$NEXTEST_VERSION"
fi

# Property tests: a bounded pass here; raise PROPTEST_CASES for a deeper run.
export PROPTEST_CASES="${PROPTEST_CASES:-512}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> fuzz target (check build; fuzzing itself: cargo +nightly fuzz run decode)"
cargo check --quiet --locked --manifest-path crates/decoder/fuzz/Cargo.toml
echo "==> tests"
cargo nextest run --workspace --locked --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
