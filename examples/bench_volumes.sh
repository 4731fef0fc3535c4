#!/usr/bin/env bash
# PersistentVolume binding against plain object creation on the same server: N hand-made
# hostPath volumes and N claims (class "manual", bound at once) created with one
# `kubectl create -f` each, then the time until the binder has bound every claim
# (volume claimRef, claim volumeName, both phases Bound), next to the time the same
# number of ConfigMaps takes to create. Usage:
#   examples/bench_volumes.sh [path/to/pikube] [claims]
# Needs kubectl and python3. The server runs without a node agent, its DNS on a loopback
# port: nothing on the host is touched (the volumes' paths are never mounted). Everything
# it starts is stopped and removed.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
N=${2:-300}
# shellcheck source=common/server.sh
. "$(dirname "$0")/common/server.sh"
start_server "$PIKUBE" bench-volumes
wait_ready

python3 - "$N" "$DIR" <<'PY'
import json, sys
n, d = int(sys.argv[1]), sys.argv[2]
def lst(items): return {"apiVersion": "v1", "kind": "List", "items": items}
json.dump(lst([{"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"v{i}"},
    "spec": {"capacity": {"storage": f"{i + 1}Mi"}, "accessModes": ["ReadWriteOnce"],
        "storageClassName": "manual", "hostPath": {"path": f"{d}/v{i}"}}} for i in range(n)]),
    open(f"{d}/volumes.json", "w"))
json.dump(lst([{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": f"c{i}"},
    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
        "resources": {"requests": {"storage": f"{i + 1}Mi"}}}} for i in range(n)]),
    open(f"{d}/claims.json", "w"))
json.dump(lst([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"m{i}"},
    "data": {"size": f"{i + 1}Mi"}} for i in range(n)]), open(f"{d}/configmaps.json", "w"))
PY

now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.0f}')"; }
bound() {
	k get pvc -o json | python3 -c "import json,sys; print(sum(c.get('status', {}).get('phase') == 'Bound' for c in json.load(sys.stdin)['items']))"
}

t0=$(now)
k create -f "$DIR/configmaps.json" >/dev/null
t1=$(now)
echo "| create $N ConfigMaps | $(ms "$t0" "$t1") ms |"
k create -f "$DIR/volumes.json" >/dev/null
t2=$(now)
echo "| create $N PersistentVolumes | $(ms "$t1" "$t2") ms |"
k create -f "$DIR/claims.json" >/dev/null
t3=$(now)
echo "| create $N PersistentVolumeClaims | $(ms "$t2" "$t3") ms |"
while [ "$(bound)" -lt "$N" ]; do sleep 0.1; done
t4=$(now)
echo "| claims created → all $N Bound | $(ms "$t2" "$t4") ms (after the last create: $(ms "$t3" "$t4") ms) |"
echo "| ratio (claims created → all Bound) / (create $N ConfigMaps) | $(python3 -c "print(f'{($t4 - $t2) / ($t1 - $t0):.2f}')")× |"
wrong=$(k get pvc -o json | python3 -c "
import json, sys
print(sum(c['spec'].get('volumeName') != 'v' + c['metadata']['name'][1:] for c in json.load(sys.stdin)['items']))")
echo "| claims not on their exactly-sized volume | $wrong |"
echo "| RSS after | $(ps -o rss= -p "$PID") kB |"
