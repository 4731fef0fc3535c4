#!/bin/sh
# Refreshes the vendored Kubernetes protobuf schemas and the JSON facts the protobuf
# decoder (src/api/protobuf.rs) needs but .proto files do not carry.
#
# usage: proto/update.sh <kubernetes/api checkout> <kubernetes/apimachinery checkout>
# Both checkouts at the same release tag (currently kubernetes-1.33.13).
#
# json.txt, derived from the Go struct tags of types.go:
#   omitzero <Message>.<field>     a non-pointer scalar with `omitempty`: Go's JSON drops
#                                  its zero value, which protobuf always carries
#   inline <Message>.<field>       an embedded struct (`json:",inline"`): its fields are
#                                  merged into the parent object
#   rename <Message>.<field> <json> the JSON name differs from the protobuf name
set -eu
api=$1
machinery=$2
out=$(cd "$(dirname "$0")" && pwd)
groups="core/v1 apps/v1 batch/v1 networking/v1 discovery/v1 coordination/v1 rbac/v1
storage/v1 policy/v1 autoscaling/v1 autoscaling/v2 authorization/v1 authentication/v1 events/v1"
rm -rf "$out/k8s.io"
for g in $groups; do
    mkdir -p "$out/k8s.io/api/$g"
    cp "$api/$g/generated.proto" "$out/k8s.io/api/$g/"
done
for p in pkg/apis/meta/v1 pkg/runtime pkg/runtime/schema pkg/util/intstr pkg/api/resource; do
    mkdir -p "$out/k8s.io/apimachinery/$p"
    cp "$machinery/$p/generated.proto" "$out/k8s.io/apimachinery/$p/"
done

# Message names of all vendored schemas: a field of such a type is not a scalar.
messages=$(cat $(find "$out/k8s.io" -name generated.proto) \
    | sed -n 's/^message \([A-Za-z0-9]*\) {.*/\1/p' | sort -u | tr '\n' ' ')

facts() { # <types.go> <protobuf package>
    awk -v pkg="$2" -v messages="$messages" '
    BEGIN { n = split(messages, m, " "); for (i = 1; i <= n; i++) msg[m[i]] = 1 }
    /^type [A-Za-z0-9]+ struct/ { type = $2; next }
    /^}/ { type = ""; next }
    type != "" && /protobuf:"/ && !/^[ \t]*\/\// {
        line = $0
        sub(/^[ \t]+/, "", line)
        split(line, parts, /[ \t]+`/)
        decl = parts[1]
        nf = split(decl, w, /[ \t]+/)
        gotype = w[nf]
        json = ""
        if (match(line, /json:"[^"]*"/)) { json = substr(line, RSTART + 6, RLENGTH - 7) }
        split(json, j, ","); jname = j[1]
        if (match(line, /protobuf:"[^"]*name=[A-Za-z0-9]+/)) {
            pbname = substr(line, RSTART, RLENGTH); sub(/.*name=/, "", pbname)
        } else if (nf == 1) {
            # An embedded struct without a name: go-to-protobuf names it after its type.
            pbname = tolower(substr(gotype, 1, 1)) substr(gotype, 2)
        } else next
        field = pkg "." type "." pbname
        if (json ~ /,inline/) { print "inline " field; next }
        if (jname != "" && jname != "-" && jname != pbname) print "rename " field " " jname
        base = gotype; sub(/^.*\./, "", base)
        if (json ~ /,omitempty/ && gotype !~ /^(\*|\[\]|map\[)/ && !(base in msg)) print "omitzero " field
    }' "$1"
}
{
    for g in $groups; do
        facts "$api/$g/types.go" "k8s.io.api.$(echo "$g" | tr / .)"
    done
    facts "$machinery/pkg/apis/meta/v1/types.go" k8s.io.apimachinery.pkg.apis.meta.v1
} | sort -u >"$out/json.txt"
