#!/usr/bin/env bash
# Installs what pgprism's tests and demo need on a fresh Debian/Ubuntu machine: the Postgres
# server and client (initdb, pg_ctl, postgres, psql, pg_recvlogical), redis-server, and
# openssl (the TLS tests make their own throwaway CA with it).
# Idempotent and silent when everything is present; prints one line when it installs.
#
# The tests start their own throwaway servers (crates/testkit), so the services these
# packages would normally start are kept from starting (policy-rc.d): nothing listens on
# 5432 or 6379 because of this script. cargo-nextest is optional and not installed here
# (scripts/test.sh falls back to `cargo test`).
set -euo pipefail

have_postgres() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres && -x $dir/psql && -x $dir/pg_recvlogical ]]; then
            return 0
        fi
    done
    return 1
}

have_redis() {
    command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]]
}

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: missing ${missing[*]}, and this is not a Debian-like system (no apt-get); install them by hand" >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "install.sh: missing ${missing[*]}; run as root or install sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi

# Keep the packages' maintainer scripts from starting system services; only when no policy
# is in place already, and removed again on exit.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    "${sudo[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    trap '"${sudo[@]}" rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "install.sh: installing ${missing[*]} failed" >&2
    exit 1
fi
rm -f "$log"

have_postgres || { echo "install.sh: postgresql installed but no /usr/lib/postgresql/*/bin/initdb" >&2; exit 1; }
have_redis || { echo "install.sh: redis-server installed but not found" >&2; exit 1; }
echo "install.sh: installed ${missing[*]}"
