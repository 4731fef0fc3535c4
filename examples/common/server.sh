# Sourced by the benchmark scripts: a `pikube server --disable-agent` in a temp dir, on
# free loopback ports, stopped and removed when the script exits.
#   start_server PIKUBE NAME   → sets DIR (the temp dir), API_PORT, PID; DIR/kubeconfig
#   wait_ready                 → returns once the API server answers /readyz
#   k ARGS…                    → kubectl against it
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

cleanup() {
	if [ -n "${PID:-}" ]; then
		kill "$PID" 2>/dev/null || true
		while kill -0 "$PID" 2>/dev/null; do sleep 0.05; done
	fi
	rm -rf "$DIR"
}

start_server() {
	DIR=$(mktemp -d "/tmp/pikube-$2.XXXXXX")
	API_PORT=$(free_port)
	PID=
	trap cleanup EXIT
	: >"$DIR/resolv.conf"
	"$1" server --config /dev/null --disable-agent --bind-address 127.0.0.1 \
		--https-listen-port "$API_PORT" --data-dir "$DIR/data" --write-kubeconfig "$DIR/kubeconfig" \
		--dns-listen-address "127.0.0.1:$(free_port)" --resolv-conf "$DIR/resolv.conf" \
		>"$DIR/server.log" 2>&1 &
	PID=$!
}

k() { kubectl --kubeconfig "$DIR/kubeconfig" --cache-dir "$DIR/cache" "$@"; }

wait_ready() {
	until k get --raw /readyz >/dev/null 2>&1; do sleep 0.05; done
}
