#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, checks format and
# lints, then runs every test against real Postgres and Redis servers the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh

# Property tests: a bounded pass here; raise PROPTEST_CASES for a deeper run.
export PROPTEST_CASES="${PROPTEST_CASES:-512}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
else
    cargo test --workspace --locked --no-fail-fast
fi
