#!/usr/bin/env bash
# Events through the two APIs that serve them: N creates (one `kubectl create -f` of a
# List: N POSTs, one after the other) of core/v1 Events and of events.k8s.io/v1 Events
# (converted to the stored core form, with the stricter validation), then lists of all
# 2N through each API (JSON: every object converted for events.k8s.io/v1; and Table),
# best of five. The peer is core/v1 on the same server, in the same run. Usage:
#   examples/bench_events.sh [path/to/pikube] [events per API]
# Needs kubectl and python3. The server runs without a node agent, its DNS on a loopback
# port: nothing on the host is touched. Everything it starts is stopped and removed.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
N=${2:-1000}
# shellcheck source=common/server.sh
. "$(dirname "$0")/common/server.sh"
start_server "$PIKUBE" bench-events
wait_ready

python3 - "$N" "$DIR" <<'PY'
import json, sys
n, d = int(sys.argv[1]), sys.argv[2]
def lst(items): return {"apiVersion": "v1", "kind": "List", "items": items}
about = lambda i: {"apiVersion": "v1", "kind": "ConfigMap", "namespace": "default", "name": f"c{i}"}
json.dump(lst([{"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"core{i}"},
    "involvedObject": about(i), "reason": "Synced", "message": f"event {i}", "type": "Normal",
    "count": 1, "firstTimestamp": "2026-01-02T03:04:05Z", "lastTimestamp": "2026-01-02T03:04:05Z",
    "source": {"component": "bench", "host": "h"}} for i in range(n)]), open(f"{d}/core.json", "w"))
json.dump(lst([{"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": f"new{i}"},
    "regarding": about(i), "reason": "Synced", "note": f"event {i}", "type": "Normal", "action": "Sync",
    "eventTime": "2026-01-02T03:04:05.000000Z", "reportingController": "example.com/bench",
    "reportingInstance": "bench-0"} for i in range(n)]), open(f"{d}/v1.json", "w"))
PY

now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.0f}')"; }
# Best of five runs of "$@", in ms.
best() {
	local b=""
	for _ in 1 2 3 4 5; do
		local t0 t1
		t0=$(now)
		"$@" >/dev/null
		t1=$(now)
		b=$(python3 -c "b='$b'; x=($t1 - $t0) * 1000; print(f'{min(float(b), x) if b else x:.0f}')")
	done
	echo "$b"
}

declare -A create json table
for api in core v1; do
	t0=$(now)
	k create -f "$DIR/$api.json" >/dev/null
	t1=$(now)
	create[$api]=$(ms "$t0" "$t1")
done
for api in core v1; do
	case $api in
	core) res=events.v1. path=/api/v1/namespaces/default/events ;;
	v1) res=events.v1.events.k8s.io path=/apis/events.k8s.io/v1/namespaces/default/events ;;
	esac
	json[$api]=$(best k get --raw "$path")
	table[$api]=$(best k get "$res")
done
count=$(k get --raw /apis/events.k8s.io/v1/namespaces/default/events | python3 -c "import json,sys; print(len(json.load(sys.stdin)['items']))")
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
echo "| | core/v1 | events.k8s.io/v1 | ratio v1/core |"
echo "|---|---:|---:|---:|"
echo "| create $N (one after the other) | ${create[core]} ms | ${create[v1]} ms | $(ratio "${create[v1]}" "${create[core]}")× |"
echo "| list $count as JSON (best of 5) | ${json[core]} ms | ${json[v1]} ms | $(ratio "${json[v1]}" "${json[core]}")× |"
echo "| list $count as Table (best of 5) | ${table[core]} ms | ${table[v1]} ms | $(ratio "${table[v1]}" "${table[core]}")× |"
echo "| RSS after $count events | $(ps -o rss= -p "$PID") kB | | |"
