#!/usr/bin/env bash
# The steady state of an idle single-node cluster: how many store writes, Node and Lease
# writes, service proxy sync passes and cluster DNS zone rebuilds it makes per minute.
# Usage:
#   examples/bench_idle.sh [path/to/pikube] [seconds]
# Needs root, containerd, runc, CNI plugins, curl, jq and the test images (images/build.sh).
# The server (with its agent, service proxy and DNS) runs in a network namespace of its
# own, so the host's nftables, routes and `lo` are not touched. Everything it starts is
# stopped and removed at the end.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
SECS=${2:-120}
HERE=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(mktemp -d /tmp/pikube-bench-idle.XXXXXX)
NS=pkidle-$$
NODE_FLAGS=(--run-dir "$DIR/run" --cgroup-root /pikube-bench-idle --cni-bridge pkidle)
API_PORT=6443
PID=
WATCHES=()
in_ns() { ip netns exec "$NS" "$@"; }

cleanup() {
	for w in "${WATCHES[@]}"; do kill "$w" 2>/dev/null || true; done
	if [ -n "$PID" ]; then
		kill "$PID" 2>/dev/null || true
		while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
	fi
	in_ns "$PIKUBE" killall --data-dir "$DIR/data" "${NODE_FLAGS[@]}" --keep-proxy >/dev/null 2>&1 || true
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$DIR"
}
trap cleanup EXIT

# The namespace: `lo`, and the node's address on a veth pair that leads nowhere else.
ip netns add "$NS"
in_ns ip link set lo up
in_ns ip link add pkidle-n type veth peer name pkidle-p
in_ns ip addr add 198.18.77.1/24 dev pkidle-n
in_ns ip link set pkidle-n up
in_ns ip link set pkidle-p up

bash "$HERE/images/build.sh" "$DIR/images" >/dev/null
mkdir -p "$DIR/data/agent/images"
cp "$DIR/images/pause.tar" "$DIR/images/busybox.tar" "$DIR/data/agent/images/"
: >"$DIR/resolv.conf"

RUST_LOG=info,pikube::proxy=debug,pikube::dns=debug in_ns "$PIKUBE" server --config /dev/null \
	--bind-address 127.0.0.1 --https-listen-port "$API_PORT" --data-dir "$DIR/data" \
	--write-kubeconfig "$DIR/kubeconfig" --node-name idle --node-ip 198.18.77.1 \
	--cluster-cidr 10.42.197.0/24 --dns-listen-address 127.0.0.1:5353 \
	--resolv-conf "$DIR/resolv.conf" "${NODE_FLAGS[@]}" >>"$DIR/server.log" 2>&1 &
PID=$!

until [ -s "$DIR/kubeconfig" ]; do sleep 0.1; done
for f in certificate-authority client-certificate client-key; do
	sed -n "s/^ *$f-data: //p" "$DIR/kubeconfig" | base64 -d >"$DIR/$f.pem"
done
api() {
	in_ns curl -sf --cacert "$DIR/certificate-authority.pem" --cert "$DIR/client-certificate.pem" \
		--key "$DIR/client-key.pem" "$@"
}
until api "https://127.0.0.1:$API_PORT/api/v1/nodes/idle" 2>/dev/null |
	jq -e '.status.conditions[]? | select(.type == "Ready" and .status == "True")' >/dev/null; do
	if ! kill -0 "$PID" 2>/dev/null; then
		echo "pikube server exited:" >&2
		tail -5 "$DIR/server.log" >&2
		exit 1
	fi
	sleep 0.2
done
sleep 15 # start-up settles (first syncs, DNS zone, controllers' first passes)

revision() { api "https://127.0.0.1:$API_PORT/api/v1/namespaces/default/configmaps?limit=1" | jq -r .metadata.resourceVersion; }
count() { grep -c "$1" "$DIR/server.log" || true; }
rev0=$(revision)
syncs0=$(count "service proxy synced")
zones0=$(count "dns zone rebuilt")
for kind in api/v1/nodes apis/coordination.k8s.io/v1/leases; do
	api -N "https://127.0.0.1:$API_PORT/$kind?watch=1&resourceVersion=$rev0" >"$DIR/watch-${kind##*/}" 2>/dev/null &
	WATCHES+=($!)
done
sleep "$SECS"
rev1=$(revision)
syncs1=$(count "service proxy synced")
zones1=$(count "dns zone rebuilt")
per_min() { awk -v n="$1" -v s="$SECS" 'BEGIN { printf "%.1f", n * 60 / s }'; }

echo "| over ${SECS} s, idle 1-node cluster | per minute |"
echo "|---|---:|"
echo "| store writes (revisions) | $(per_min $((rev1 - rev0))) |"
echo "| Node writes (watch events) | $(per_min "$(grep -c . "$DIR/watch-nodes" || true)") |"
echo "| Lease writes (watch events) | $(per_min "$(grep -c . "$DIR/watch-leases" || true)") |"
echo "| service proxy sync passes | $(per_min $((syncs1 - syncs0))) |"
echo "| DNS zone rebuilds | $(per_min $((zones1 - zones0))) |"
printf 'binary: %s\n' "$PIKUBE"
