#!/usr/bin/env bash
# The demo: installs what is missing, builds pgprism, starts a throwaway Postgres and Redis
# with the example schema in sql/, runs two `pgprism run` replicas under a steady order
# workload, kills the leader (kill -9) and stops the next one (SIGTERM) mid-run, and checks
# the read models in Postgres and Redis against the ground truth. Exits nonzero if a check
# fails. See crates/pgprism/examples/demo.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
echo "building pgprism (release; the first build takes a few minutes)…"
cargo build --release --quiet -p pgprism --bin pgprism --example demo
exec target/release/examples/demo
