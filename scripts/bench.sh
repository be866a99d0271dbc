#!/usr/bin/env bash
# Benchmarks Quorate against etcd with `quoratectl benchmark` (etcd's
# benchmark tool's workloads) and writes the results to BENCHMARKS.md.
#
#   scripts/bench.sh            3-member Quorate cluster vs 3-member etcd cluster
#   scripts/bench.sh --single   1 Quorate member vs 1 etcd member
#
# Everything runs on 127.0.0.1 with free ports and fresh data directories in
# a temporary directory: first Quorate (release build), then etcd
# ($ETCD_BIN, default /usr/bin/etcd; skipped with a note if missing), never
# both at once, each driven by the same release-built quoratectl with the
# same flags. Every server the script starts is stopped when it exits,
# however it exits. Each benchmark is bounded by --total and by
# `benchmark --timeout` ($BENCH_RUN_TIMEOUT, default 60s).
#
# BENCHMARKS.md keeps one section per mode; a run replaces only its own.
#
# Options:
#   --single         one member each instead of three
#   --output FILE    where to write (default: BENCHMARKS.md at the repo root)
#   -h, --help       this text
# Environment:
#   ETCD_BIN         etcd binary (default /usr/bin/etcd)
#   BENCH_DIR        parent of the temporary data directories (default $TMPDIR or /tmp)
#   BENCH_RUN_TIMEOUT  bound of each benchmark run (Go duration, default 60s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

mode=cluster
output=$repo/BENCHMARKS.md
while (($#)); do
    case $1 in
    --single) mode=single ;;
    --output)
        [[ $# -ge 2 ]] || { echo "--output needs a file name" >&2; exit 2; }
        output=$2
        shift
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "unknown argument: $1 (try --help)" >&2
        exit 2
        ;;
    esac
    shift
done
if [[ $mode == single ]]; then members=1; else members=3; fi
command_line="scripts/bench.sh"
[[ $mode == cluster ]] || command_line+=" --single"

etcd_bin=${ETCD_BIN:-/usr/bin/etcd}
run_timeout=${BENCH_RUN_TIMEOUT:-60s}
value_size=256

# The workloads: name, then quoratectl arguments after `benchmark`.
# Sequential keys over a key space larger than any total: every put writes
# a new key (etcd's default key space of 1 would rewrite one key).
put_keys=(--key-size 8 --val-size "$value_size" --key-space-size 1000000 --sequential-keys)
workload_names=(
    "put, 1 client"
    "put, 100 clients"
    "range (linearizable), 100 clients"
)
workload_args=(
    "--clients 1 put --total 2000 ${put_keys[*]}"
    "--clients 100 put --total 20000 ${put_keys[*]}"
    "--clients 100 range bench-range-key --total 20000"
)

section() { printf '\n==> %s\n' "$*" >&2; }
die() {
    echo "bench.sh: $*" >&2
    exit 1
}

# ---------------------------------------------------------------- cleanup
tmp=""
pids=()
client_pid=""
stop_servers() {
    local pid i
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Up to 10 s for a clean exit, then SIGKILL.
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
cleanup() {
    local rc=$?
    if [[ -n $client_pid ]]; then
        kill -TERM "$client_pid" 2>/dev/null || true
        wait "$client_pid" 2>/dev/null || true
    fi
    stop_servers
    if [[ -n $tmp && -d $tmp ]]; then
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- build
section "building quorate and quoratectl (release)"
cargo build --release -p quorate --bin quorate --bin quoratectl
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
quorate=$target_dir/release/quorate
ctl=$target_dir/release/quoratectl
[[ -x $quorate && -x $ctl ]] || die "release binaries not found in $target_dir/release"

have_etcd=0
etcd_version="not installed ($etcd_bin not found)"
if [[ -x $etcd_bin ]]; then
    have_etcd=1
    etcd_version=$("$etcd_bin" --version | awk 'NR == 1 { print $NF }')
else
    section "etcd: $etcd_bin not found; the etcd column is skipped (Debian: apt-get install etcd-server)"
fi

tmp=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/quorate-bench.XXXXXX")

# Other work on the machine skews everything: note the load when we start.
read -r load_1m _ </proc/loadavg
if awk -v l="$load_1m" -v n="$(nproc)" 'BEGIN { exit !(l > n / 2) }'; then
    section "warning: load average $load_1m on $(nproc) cores; the figures will be noisy"
fi

# ---------------------------------------------------------------- ports
# Free ports below the kernel's ephemeral range (so no outgoing connection
# takes one meanwhile), not bound by anything now, not handed out before.
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range
port_low=10000
port_high=$((ephemeral_low > port_low + 1000 ? ephemeral_low : 32768))
taken_ports=" "
used_ports() {
    local hex
    awk 'FNR > 1 && $2 ~ /:/ { split($2, a, ":"); print a[2] }' /proc/net/tcp /proc/net/tcp6 2>/dev/null |
        sort -u | while read -r hex; do printf '%d ' "$((16#$hex))"; done
}
free_port() {
    local used try port
    used=" $(used_ports) "
    for ((try = 0; try < 500; try++)); do
        port=$((port_low + (RANDOM * 32768 + RANDOM) % (port_high - port_low)))
        if [[ $used != *" $port "* && $taken_ports != *" $port "* ]]; then
            taken_ports+="$port "
            echo "$port"
            return 0
        fi
    done
    die "no free port found in [$port_low, $port_high)"
}

# ---------------------------------------------------------------- servers
# start_members KIND BIN: starts $members members of KIND (quorate|etcd)
# on fresh ports; sets $endpoints (comma-separated client URLs).
endpoints=""
start_members() {
    local kind=$1 bin=$2 i name
    local -a names clients peers
    local initial=""
    for ((i = 1; i <= members; i++)); do
        names+=("$kind$i")
        clients+=("http://127.0.0.1:$(free_port)")
        peers+=("http://127.0.0.1:$(free_port)")
        initial+="${initial:+,}$kind$i=${peers[i - 1]}"
    done
    endpoints=$(IFS=,; echo "${clients[*]}")
    for ((i = 0; i < members; i++)); do
        name=${names[i]}
        local -a flags=(
            --name "$name"
            --data-dir "$tmp/$name.data"
            --listen-client-urls "${clients[i]}"
            --advertise-client-urls "${clients[i]}"
        )
        # A single Quorate member needs nothing more; etcd always gets its
        # peer flags (its defaults would take port 2380).
        if [[ $kind == etcd || $members -gt 1 ]]; then
            flags+=(
                --listen-peer-urls "${peers[i]}"
                --initial-advertise-peer-urls "${peers[i]}"
                --initial-cluster "$initial"
                --initial-cluster-token "bench-$kind"
                --initial-cluster-state new
            )
        fi
        echo "$bin ${flags[*]}" >"$tmp/$name.cmd"
        "$bin" "${flags[@]}" </dev/null >"$tmp/$name.log" 2>&1 &
        pids+=($!)
    done
    wait_ready "$kind"
}

# Waits (at most 60 s) until every member answers `endpoint health`.
wait_ready() {
    local kind=$1 try pid i
    for ((try = 0; try < 240; try++)); do
        for i in "${!pids[@]}"; do
            pid=${pids[i]}
            if ! kill -0 "$pid" 2>/dev/null; then
                echo "bench.sh: $kind$((i + 1)) exited during start-up: $(cat "$tmp/$kind$((i + 1)).cmd")" >&2
                tail -n 20 "$tmp/$kind$((i + 1)).log" >&2 || true
                if [[ $kind == quorate && $members -gt 1 ]]; then
                    echo "bench.sh: (does this quorate build support clustering? 'scripts/bench.sh --single' runs one member)" >&2
                fi
                exit 1
            fi
        done
        if "$ctl" --endpoints "$endpoints" --dial-timeout 1s --command-timeout 2s \
            endpoint health >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.25
    done
    for i in "${!pids[@]}"; do
        echo "--- $kind$((i + 1)) log (last lines):" >&2
        tail -n 20 "$tmp/$kind$((i + 1)).log" >&2 || true
    done
    die "$kind did not become healthy within 60 s"
}

# ---------------------------------------------------------------- benchmarks
# A field of quoratectl's one-line JSON report.
json_field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" <<<"$1"; }

# results[KIND.N.field]
declare -A results
run_workloads() {
    local kind=$1 n args json rc rps p50 p99 requests errors stopped
    "$ctl" --endpoints "$endpoints" put bench-range-key \
        "$(head -c "$value_size" /dev/zero | tr '\0' v)" >/dev/null
    for n in "${!workload_names[@]}"; do
        read -r -a args <<<"${workload_args[n]}"
        rc=0
        # In the background, so that a signal to this script is handled at
        # once (bash runs traps only between foreground commands).
        "$ctl" --endpoints "$endpoints" -w json benchmark --timeout "$run_timeout" \
            "${args[@]}" >"$tmp/bench.json" 2>"$tmp/bench.err" </dev/null &
        client_pid=$!
        wait "$client_pid" || rc=$?
        client_pid=""
        json=$(cat "$tmp/bench.json")
        if [[ $json != \{* ]]; then
            echo "bench.sh: $kind, ${workload_names[n]}: quoratectl failed (exit $rc): $(cat "$tmp/bench.err")" >&2
            results[$kind.$n.note]="failed: $(head -n 1 "$tmp/bench.err")"
            continue
        fi
        rps=$(json_field "$json" requests_per_sec)
        p50=$(json_field "$json" p50)
        p99=$(json_field "$json" p99)
        requests=$(json_field "$json" requests)
        errors=$(json_field "$json" errors)
        stopped=$(json_field "$json" stopped_by_timeout)
        results[$kind.$n.rps]=$(printf '%.0f' "$rps")
        results[$kind.$n.p50]=$([[ $p50 == null ]] && echo - || printf '%.2f' "$p50")
        results[$kind.$n.p99]=$([[ $p99 == null ]] && echo - || printf '%.2f' "$p99")
        local note=""
        ((errors == 0)) || note+="$errors of $requests requests failed: $(sed -n 's/.*"error_distribution":\({[^}]*}\).*/\1/p' <<<"$json"). "
        [[ $stopped != true ]] || note+="stopped by --timeout $run_timeout after $requests requests. "
        results[$kind.$n.note]=$note
        printf '  %-36s %8s req/s   p50 %8s ms   p99 %8s ms   %s\n' "${workload_names[n]}" \
            "${results[$kind.$n.rps]}" "${results[$kind.$n.p50]}" "${results[$kind.$n.p99]}" "$note" >&2
    done
}

label=$([[ $mode == single ]] && echo "1 member" || echo "3-member cluster")
section "Quorate, $label"
start_members quorate "$quorate"
run_workloads quorate
stop_servers

if ((have_etcd)); then
    section "etcd $etcd_version, $label"
    start_members etcd "$etcd_bin"
    run_workloads etcd
    stop_servers
fi

# ---------------------------------------------------------------- report
cell() {
    local v=${results[$1.$2.$3]:-}
    if [[ -n $v ]]; then echo "$v"; elif [[ $1 == etcd && $have_etcd == 0 ]]; then echo "n/a"; else echo "-"; fi
}
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem_total=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
data_fs=$(df -PT "$tmp" | awk 'NR == 2 { print $2 }')
commit=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo "unknown (not a git checkout)")
if [[ $mode == single ]]; then
    title="## Single member: 1 Quorate member vs 1 etcd member"
else
    title="## 3-member clusters: Quorate vs etcd"
fi

new_section=$(
    echo "<!-- bench:$mode:begin -->"
    echo "$title"
    echo
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') by \`$command_line\`; all members on 127.0.0.1."
    echo "Requests/s counts successful requests; latencies in milliseconds."
    echo
    echo "| workload | Quorate req/s | Quorate p50 | Quorate p99 | etcd req/s | etcd p50 | etcd p99 |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for n in "${!workload_names[@]}"; do
        echo "| ${workload_names[n]} | $(cell quorate "$n" rps) | $(cell quorate "$n" p50) | $(cell quorate "$n" p99) | $(cell etcd "$n" rps) | $(cell etcd "$n" p50) | $(cell etcd "$n" p99) |"
    done
    echo
    notes=""
    for kind in quorate etcd; do
        for n in "${!workload_names[@]}"; do
            v=${results[$kind.$n.note]:-}
            [[ -z $v ]] || notes+="- $kind, ${workload_names[n]}: $v"$'\n'
        done
    done
    if [[ -n $notes ]]; then
        echo "Problems during the run:"
        echo
        printf '%s\n' "$notes"
    fi
    echo "Workloads (\`quoratectl --endpoints <all members> -w json benchmark --timeout $run_timeout ...\`;"
    echo "one gRPC connection per client, connections spread over the members' endpoints):"
    echo
    for n in "${!workload_names[@]}"; do
        echo "- ${workload_names[n]}: \`${workload_args[n]}\`"
    done
    echo
    echo "Machine:"
    echo
    echo "- CPU: $(nproc) cores ($cpu_model)"
    echo "- memory: $mem_total"
    echo "- kernel: $(uname -sr)"
    echo "- data directories on: $data_fs (every write is fsynced by both servers)"
    echo "- 1-minute load average when the run started: $load_1m"
    echo "- $(rustc --version)"
    echo "- etcd: $etcd_version"
    echo "- Quorate: commit $commit, release build"
    echo
    echo "Reproduce: \`$command_line\`"
    echo "<!-- bench:$mode:end -->"
)

placeholder() {
    echo "<!-- bench:$1:begin -->"
    if [[ $1 == cluster ]]; then
        echo "## 3-member clusters: Quorate vs etcd"
        echo
        echo "Not measured yet: run \`scripts/bench.sh\` to fill this section."
    else
        echo "## Single member: 1 Quorate member vs 1 etcd member"
        echo
        echo "Not measured yet: run \`scripts/bench.sh --single\` to fill this section."
    fi
    echo "<!-- bench:$1:end -->"
}

# The other mode's section, from the existing file if it has one.
other=$([[ $mode == single ]] && echo cluster || echo single)
other_section=""
if [[ -f $output ]]; then
    other_section=$(awk -v b="<!-- bench:$other:begin -->" -v e="<!-- bench:$other:end -->" \
        '$0 == b { on = 1 } on { print } $0 == e { on = 0 }' "$output")
fi
[[ -n $other_section ]] || other_section=$(placeholder "$other")
if [[ $mode == cluster ]]; then
    first=$new_section second=$other_section
else
    first=$other_section second=$new_section
fi

{
    echo "# Benchmarks"
    echo
    echo "Quorate against etcd, measured with \`quoratectl benchmark\` (the workloads and report"
    echo "of etcd's \`tools/benchmark\`) by \`scripts/bench.sh\`, which starts both servers on"
    echo "127.0.0.1 the same way, one after the other, and writes this file. Each section is"
    echo "replaced only by a run of its own mode."
    echo
    echo "$first"
    echo
    echo "$second"
} >"$output.tmp"
mv "$output.tmp" "$output"
section "wrote $output"
