#!/usr/bin/env bash
# Latency of `kubectl exec`, `kubectl logs` and throughput of `kubectl logs` through the
# API server and the node agent, with a real containerd. Usage:
#   examples/bench_streams.sh [path/to/pikube]
# Needs root, containerd, runc, CNI plugins, kubectl 1.27/1.33 and the test images
# (built by images/build.sh). Everything it starts is stopped and removed at the end.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/pikube-bench-streams.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
API_PORT=$(free_port)
AGENT_PORT=$(free_port)
NODE_FLAGS=(--run-dir "$DIR/run" --cgroup-root /pikube-bench-streams --cni-bridge pkbench)
PID=

cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && while kill -0 "$PID" 2>/dev/null; do sleep 0.2; done
	"$PIKUBE" killall --data-dir "$DIR/data" "${NODE_FLAGS[@]}" >/dev/null 2>&1 || true
	rm -rf "$DIR"
}
trap cleanup EXIT

mkdir -p "$DIR/data/agent/images"
bash "$HERE/images/build.sh" "$DIR/images" >/dev/null
cp "$DIR/images/pause.tar" "$DIR/images/busybox.tar" "$DIR/data/agent/images/"
"$PIKUBE" server --config /dev/null --bind-address 127.0.0.1 --https-listen-port "$API_PORT" \
	--data-dir "$DIR/data" --write-kubeconfig "$DIR/kubeconfig" --node-name bench \
	--node-ip 127.0.0.1 --cluster-cidr 10.42.199.0/24 --agent-port "$AGENT_PORT" \
	"${NODE_FLAGS[@]}" >"$DIR/server.log" 2>&1 &
PID=$!

kubectl_v() { local v=$1; shift; "/usr/lib/google-cloud-sdk/bin/kubectl.$v" --kubeconfig "$DIR/kubeconfig" --cache-dir "$DIR/cache-$v" "$@"; }
for _ in $(seq 1 100); do [ -f "$DIR/kubeconfig" ] && kubectl_v 1.33 get --raw /readyz >/dev/null 2>&1 && break; sleep 0.2; done
for _ in $(seq 1 300); do kubectl_v 1.33 get node bench >/dev/null 2>&1 && break; sleep 0.3; done
kubectl_v 1.33 wait --for=condition=Ready node/bench --timeout=90s >/dev/null
kubectl_v 1.33 run shell --image=localhost/busybox:1.35 -- sleep 3600 >/dev/null
# About 8.6 MB of text (16.5 MB of CRI log file).
kubectl_v 1.33 run big --image=localhost/busybox:1.35 -- sh -c \
	'i=0; while [ $i -lt 200 ]; do seq 1 1000 | sed "s/^/line of a benchmark log with some text /"; i=$((i+1)); done; exec sleep 3600' >/dev/null
kubectl_v 1.33 wait --for=condition=Ready pod/shell pod/big --timeout=90s >/dev/null
until [ "$(kubectl_v 1.33 logs big --tail=1)" = "line of a benchmark log with some text 1000" ]; do sleep 0.5; done

# Median, min and max wall time of 15 runs of a command, in ms.
bench() {
	local label=$1; shift
	local t=()
	for _ in $(seq 1 15); do
		local s e
		s=$(date +%s%N); "$@" >/dev/null 2>&1 </dev/null; e=$(date +%s%N)
		t+=($(((e - s) / 1000000)))
	done
	printf '%s\n' "${t[@]}" | sort -n | awk -v l="$label" '{a[NR]=$1} END {printf "| %s | %d | %d | %d |\n", l, a[int((NR+1)/2)], a[1], a[NR]}'
}

echo "| command | median ms | min ms | max ms |"
echo "|---|---:|---:|---:|"
for v in 1.27 1.33; do
	bench "kubectl $v get pod (baseline)" kubectl_v "$v" get pod shell
	bench "kubectl $v exec -- true" kubectl_v "$v" exec shell -- true
	bench "kubectl $v exec -i -- true" kubectl_v "$v" exec -i shell -- true
	bench "kubectl $v logs --tail=10" kubectl_v "$v" logs shell --tail=10
	bench "kubectl $v logs (8.6 MB)" kubectl_v "$v" logs big
	bench "kubectl $v logs --tail=5 (of 8.6 MB)" kubectl_v "$v" logs big --tail=5
done
echo "server RSS: $(ps -o rss= -p "$PID") kB"
