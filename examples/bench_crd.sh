#!/usr/bin/env bash
# Custom resources against built-in objects on the same server: time from applying a
# CustomResourceDefinition to its first object stored, then N creates (one `kubectl
# create -f` of a List: N POSTs, one after the other) of custom resources (schema
# pruning, defaults, value checks, managed fields) and of ConfigMaps, and lists of each
# (JSON and Table). Usage:
#   examples/bench_crd.sh [path/to/pikube] [objects]
# Needs kubectl and python3. The server runs without a node agent, its DNS on a loopback
# port: nothing on the host is touched. Everything it starts is stopped and removed.
set -euo pipefail

PIKUBE=${1:-${CARGO_TARGET_DIR:-target}/release/pikube}
N=${2:-1000}
# shellcheck source=common/server.sh
. "$(dirname "$0")/common/server.sh"
start_server "$PIKUBE" bench-crd
wait_ready

cat >"$DIR/crd.yaml" <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: string, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: string, enum: [small, large]}
              replicas: {type: integer, minimum: 0, default: 1}
              labels: {type: object, additionalProperties: {type: string}}
              ports:
                type: array
                items:
                  type: object
                  properties: {name: {type: string}, port: {type: integer}}
YAML
python3 - "$N" "$DIR" <<'PY'
import json, sys
n, d = int(sys.argv[1]), sys.argv[2]
def lst(items): return {"apiVersion": "v1", "kind": "List", "items": items}
spec = lambda i: {"size": "small", "labels": {"a": str(i)}, "ports": [{"name": "http", "port": 80}]}
json.dump(lst([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": f"w{i}"}, "spec": spec(i)} for i in range(n)]), open(f"{d}/widgets.json", "w"))
json.dump(lst([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}, "data": {"spec": json.dumps(spec(i))}} for i in range(n)]), open(f"{d}/configmaps.json", "w"))
json.dump({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "first"}, "spec": {"size": "large"}}, open(f"{d}/first.json", "w"))
PY

now() { date +%s.%N; }
ms() { python3 -c "print(f'{($2 - $1) * 1000:.0f}')"; }

t0=$(now)
k apply -f "$DIR/crd.yaml" >/dev/null
until k create -f "$DIR/first.json" >/dev/null 2>&1; do :; done
t1=$(now)
echo "| definition applied → first custom resource stored | $(ms "$t0" "$t1") ms |"

for what in configmaps widgets; do
	t0=$(now)
	k create -f "$DIR/$what.json" >/dev/null
	t1=$(now)
	k get "$what" -o json >"$DIR/$what.list"
	t2=$(now)
	k get "$what" >/dev/null
	t3=$(now)
	count=$(python3 -c "import json,sys; print(len(json.load(open(sys.argv[1]))['items']))" "$DIR/$what.list")
	echo "| $what | create $N: $(ms "$t0" "$t1") ms ($(python3 -c "print(f'{$N / ($t1 - $t0):.0f}')")/s) | list $count as JSON: $(ms "$t1" "$t2") ms | as Table: $(ms "$t2" "$t3") ms |"
done
echo "| RSS after $N of each | $(ps -o rss= -p "$PID") kB |"
