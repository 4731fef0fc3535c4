#!/usr/bin/env bash
# Join latency: wall time of `POST /v1-pikube/node` (what `pikube agent` asks once per
# node: the token check, the certificate checks against the API server and the other
# nodes, the node password Secret, two new keys and certificates), for first joins of new
# names, rejoins of the same machine, and claims of a taken name (refused). Usage:
#   examples/bench_join.sh [path/to/pikube] [joins]
# Needs curl and python3. The server runs without a node agent, its DNS on a loopback
# port: nothing on the host is touched. Everything it starts is stopped and removed.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
JOINS=${2:-100}
# shellcheck source=common/server.sh
. "$(dirname "$0")/common/server.sh"
start_server "$PIKUBE" bench-join
until [ -s "$DIR/data/server/agent-token" ]; do sleep 0.05; done
TOKEN=$(cat "$DIR/data/server/agent-token")
until curl -sk -o /dev/null "https://127.0.0.1:$API_PORT/cacerts"; do sleep 0.05; done

# join NAME PASSWORD [TOKEN]: "<status> <seconds>" of one join request.
join() {
	curl -sk -o /dev/null -w '%{http_code} %{time_total}\n' -X POST \
		-H "Authorization: Bearer ${3:-$TOKEN}" -H 'Content-Type: application/json' \
		-d "{\"nodeName\":\"$1\",\"nodeIps\":[\"192.0.2.$((RANDOM % 250 + 1))\"],\"nodePassword\":\"$2\"}" \
		"https://127.0.0.1:$API_PORT/v1-pikube/node"
}

# report WHAT STATUS FILE: p50, p99 and mean in ms of the lines of FILE, all with STATUS.
report() {
	python3 - "$1" "$2" "$3" <<'EOF'
import sys
what, status, path = sys.argv[1:]
rows = [line.split() for line in open(path)]
bad = [r for r in rows if r[0] != status]
if bad:
    sys.exit(f"{what}: {len(bad)} answers were not {status}: {bad[:3]}")
ms = sorted(float(r[1]) * 1000 for r in rows)
pick = lambda q: ms[min(len(ms) - 1, int(q * len(ms)))]
print(f"| {what} | {len(ms)} | {pick(0.5):.1f} | {pick(0.99):.1f} | {sum(ms) / len(ms):.1f} |")
EOF
}

for i in $(seq "$JOINS"); do join "bench-$i" "password-$i"; done >"$DIR/first"
for i in $(seq "$JOINS"); do join "bench-$i" "password-$i"; done >"$DIR/again"
for i in $(seq "$JOINS"); do join "bench-$i" "another-machine"; done >"$DIR/claim"
for i in $(seq "$JOINS"); do join "bench-$i" "password-$i" wrong-token; done >"$DIR/baseline"

echo "| join request | n | p50 ms | p99 ms | mean ms |"
echo "|---|---:|---:|---:|---:|"
report "first join of a name" 200 "$DIR/first"
report "the same machine again" 200 "$DIR/again"
report "another machine claiming the name (409)" 409 "$DIR/claim"
report "baseline: a wrong token (401), TLS and HTTP alone" 401 "$DIR/baseline"
