#!/usr/bin/env bash
# Starts a 3-member Quorate cluster on this machine, like etcd's Procfile:
# clients on 127.0.0.1:2379, :22379, :32379; peers on :2380, :22380, :32380;
# data in ./local-cluster/. Stops all three on Ctrl-C.
#
#   scripts/local-cluster.sh            # build (release) and run
#   etcdctl --endpoints 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 member list -w table
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --bin quorate
bin=target/release/quorate
dir=${QUORATE_LOCAL_CLUSTER_DIR:-local-cluster}
mkdir -p "$dir"
cluster="infra1=http://127.0.0.1:2380,infra2=http://127.0.0.1:22380,infra3=http://127.0.0.1:32380"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for i in 1 2 3; do
    case $i in 1) c=2379 p=2380 ;; 2) c=22379 p=22380 ;; 3) c=32379 p=32380 ;; esac
    "$bin" --name "infra$i" --data-dir "$dir/infra$i" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$cluster" --initial-cluster-token local-cluster-1 \
        --initial-cluster-state new 2>"$dir/infra$i.log" &
    pids+=($!)
done
echo "3 members starting; logs in $dir/infra{1,2,3}.log; Ctrl-C stops them"
wait
