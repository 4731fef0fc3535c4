#!/usr/bin/env bash
# Cold start: wall time from starting `pikube server` (with its node agent, a pikube-managed
# containerd and the air-gap images) until its Node is Ready, with an empty data dir and
# again with the existing one. Usage:
#   examples/bench_coldstart.sh [path/to/pikube] [runs]
# Needs root, containerd, runc, CNI plugins, curl, jq and the test images (images/build.sh).
# The service proxy is off and the DNS answers on a loopback port, so the host's nftables
# and `lo` are not touched. Everything it starts is stopped and removed at the end.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
RUNS=${2:-5}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/pikube-bench-coldstart.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
NODE_FLAGS=(--run-dir "$DIR/run" --cgroup-root /pikube-bench-coldstart --cni-bridge pkcold)
PID=

stop() {
	if [ -n "$PID" ]; then
		kill "$PID" 2>/dev/null || true
		while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
		PID=
	fi
}
cleanup() {
	stop
	"$PIKUBE" killall --data-dir "$DIR/data" "${NODE_FLAGS[@]}" --keep-proxy >/dev/null 2>&1 || true
	rm -rf "$DIR"
}
trap cleanup EXIT

bash "$HERE/images/build.sh" "$DIR/images" >/dev/null
: >"$DIR/resolv.conf"

start() {
	"$PIKUBE" server --config /dev/null --bind-address 127.0.0.1 --https-listen-port "$API_PORT" \
		--data-dir "$DIR/data" --write-kubeconfig "$DIR/kubeconfig" --node-name bench \
		--node-ip 127.0.0.1 --cluster-cidr 10.42.198.0/24 --agent-port "$(free_port)" \
		--disable proxy --dns-listen-address "127.0.0.1:$(free_port)" \
		--resolv-conf "$DIR/resolv.conf" "${NODE_FLAGS[@]}" >>"$DIR/server.log" 2>&1 &
	PID=$!
}

# Milliseconds from start until the Node reports Ready with a heartbeat of this start
# (a restarted server's Node is still Ready from before), polled over HTTPS every ~10 ms.
time_to_ready() {
	local s e since
	sleep 1.1 # no heartbeat of the previous start falls into this start's second
	s=$(date +%s%N)
	since=$((s / 1000000000))
	start
	until [ -s "$DIR/kubeconfig" ]; do sleep 0.01; done
	for f in certificate-authority client-certificate client-key; do
		sed -n "s/^ *$f-data: //p" "$DIR/kubeconfig" | base64 -d >"$DIR/$f.pem"
	done
	until curl -sf --cacert "$DIR/certificate-authority.pem" --cert "$DIR/client-certificate.pem" \
		--key "$DIR/client-key.pem" "https://127.0.0.1:$API_PORT/api/v1/nodes/bench" 2>/dev/null |
		jq -e --argjson since "$since" '.status.conditions[]?
			| select(.type == "Ready" and .status == "True" and (.lastHeartbeatTime | fromdateiso8601) >= $since)' >/dev/null; do
		if ! kill -0 "$PID" 2>/dev/null; then
			echo "pikube server exited:" >&2
			tail -5 "$DIR/server.log" >&2
			exit 1
		fi
		sleep 0.01
	done
	e=$(date +%s%N)
	echo $(((e - s) / 1000000))
}

row() {
	sort -n | awk -v l="$1" '{a[NR]=$1} END {printf "| %s | %d | %d | %d |\n", l, a[int((NR+1)/2)], a[1], a[NR]}'
}

echo "| start | median ms | min ms | max ms |"
echo "|---|---:|---:|---:|"
for _ in $(seq 1 "$RUNS"); do
	stop
	"$PIKUBE" killall --data-dir "$DIR/data" "${NODE_FLAGS[@]}" --keep-proxy >/dev/null 2>&1 || true
	rm -rf "$DIR/data" "$DIR/run" "$DIR/kubeconfig"
	mkdir -p "$DIR/data/agent/images"
	cp "$DIR/images/pause.tar" "$DIR/images/busybox.tar" "$DIR/data/agent/images/"
	time_to_ready >>"$DIR/empty"
done
for _ in $(seq 1 "$RUNS"); do
	stop
	time_to_ready >>"$DIR/existing"
done
# The peer in the same run: a restart that has forgotten what it imported, so every
# air-gap tarball is imported again (what every restart did before the import state).
for _ in $(seq 1 "$RUNS"); do
	stop
	rm -f "$DIR/data/agent/image-import.json"
	time_to_ready >>"$DIR/forgotten"
done
row "empty data dir → node Ready" <"$DIR/empty"
row "existing data dir → node Ready" <"$DIR/existing"
row "existing data dir, import state removed → node Ready" <"$DIR/forgotten"
printf 'binary: %s, %d bytes\n' "$PIKUBE" "$(stat -c %s "$PIKUBE")"
