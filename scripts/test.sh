#!/usr/bin/env bash
# The project's test command (what the README shows and CI runs):
#
#   1. `cargo test --workspace`: every test, against Quorate;
#   2. if a real etcd is installed (/usr/bin/etcd, or $ETCD_BIN), the
#      single-server compatibility suites (kv_*, watch, lease and the
#      quoratectl suites) again against etcd, as a reference check that the
#      tests encode etcd's actual behaviour.
#
# Extra arguments go to both cargo test runs after `--` (test-binary flags,
# e.g. `scripts/test.sh --nocapture`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==================== %s ====================\n' "$*"; }

section "cargo test --workspace (against ${QUORATE_TEST_TARGET:-quorate})"
cargo test --workspace -- "$@"

etcd_bin=${ETCD_BIN:-/usr/bin/etcd}
if [[ ! -x $etcd_bin ]]; then
    section "reference check against etcd: skipped ($etcd_bin not found; install Debian package etcd-server)"
    exit 0
fi

names=()
tests=()
for f in crates/quorate/tests/kv_*.rs crates/quorate/tests/quoratectl_cli.rs \
    crates/quorate/tests/quoratectl_bench.rs crates/quorate/tests/quoratectl_watch_lease.rs \
    crates/quorate/tests/watch.rs crates/quorate/tests/lease.rs; do
    [[ -f $f ]] || continue
    name=$(basename "$f" .rs)
    names+=("$name")
    tests+=(--test "$name")
done
if ((${#tests[@]} == 0)); then
    section "reference check against etcd: skipped (no kv_* or quoratectl_cli test files)"
    exit 0
fi

etcd_version=$("$etcd_bin" --version | awk 'NR == 1 { print $NF }')
section "reference check against etcd $etcd_version: ${names[*]}"
QUORATE_TEST_TARGET=etcd ETCD_BIN=$etcd_bin cargo test -p quorate "${tests[@]}" -- "$@"
