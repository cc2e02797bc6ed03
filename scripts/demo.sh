#!/usr/bin/env bash
# The demo: installs what is missing, builds pgprism, starts a throwaway Postgres with the
# example schema in sql/, streams a live order workload through `pgprism tail`, crashes
# Postgres mid-run, and checks that every committed change arrived exactly once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "building pgprism (release; the first build takes a few minutes)…"
cargo build --release --quiet -p pgprism --bin pgprism --example demo
exec target/release/examples/demo
