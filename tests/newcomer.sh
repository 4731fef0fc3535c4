#!/usr/bin/env bash
# The newcomer test: follows the README's quick start word for word in a clean clone of
# the repository and fails if any step does.
#
# The quick start is two commands (`make run`, `make test`) and the kubectl session the
# README shows "in another terminal". This script reads them from README.md itself, so
# the README cannot drift from what works:
#   1. `make run` (the first command) in the clone, in the background, as a second
#      terminal would see it; the cluster must come up with its node Ready;
#   2. the README's kubectl block, run as it is written, in the clone; the Deployment it
#      applies must roll out and its pods must run;
#   3. the README's clean-up line (`pikube killall …`) once `make run` is stopped.
# The second command, `make test`, is what runs this script: CI runs it in a fresh clone
# through `.ci/run`, so it is checked that `.ci/run` calls exactly that command.
#
# Needs root (the node runs containers), like `make run`. Uses the default ports (6443,
# 10250) and cluster DNS address, so it runs after the other tests, never beside them.
# A build directory given in CARGO_TARGET_DIR is shared with the clone (else the outer
# `target/`), so the clone does not build everything again.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$repo/README.md" ] || [ ! -f "$repo/.ci/run" ] || [ ! -f "$repo/tests/newcomer.sh" ]; then
  echo "newcomer: $repo is not a pikube source tree; run tests/newcomer.sh from inside one" >&2
  exit 2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
work=$(mktemp -d /tmp/pikube-newcomer.XXXXXX)
clone="$work/pikube"
run_pid=
started=

say() { printf 'newcomer: %s\n' "$*" >&2; }
fail() {
  say "FAILED: $*"
  if [ -f "$work/run.log" ]; then
    say "last lines of make run:"
    tail -n 40 "$work/run.log" >&2 || true
  fi
  exit 1
}

# The fenced ```sh blocks of the README's "## Quick start" section, separated by NUL.
quickstart_blocks() {
  awk '
    /^## / { in_section = ($0 ~ /^## Quick start/) }
    in_section && /^```sh$/ { in_block = 1; next }
    in_section && in_block && /^```$/ { in_block = 0; printf "%c", 0; next }
    in_section && in_block { print }
  ' "$1"
}

stop_cluster() {
  if [ -n "$run_pid" ] && kill -0 "$run_pid" 2>/dev/null; then
    # Ctrl-C in the terminal of `make run`: the whole process group gets SIGINT.
    kill -INT -- "-$run_pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$run_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$run_pid" 2>/dev/null || true
    wait "$run_pid" 2>/dev/null || true
  fi
  run_pid=
}

# The node's service proxy sets these host sysctls (as kube-proxy does) and leaves them
# set; the test puts back what the machine had.
SYSCTLS="net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet"
saved_sysctls=
for key in $SYSCTLS; do
  value=$(cat "/proc/sys/${key//.//}" 2>/dev/null) && saved_sysctls="$saved_sysctls $key=$value"
done

cleanup() {
  status=$?
  stop_cluster
  # Only a node this script started is cleaned up (see the checks before step 1).
  if [ -n "$started" ] && [ -x "$CARGO_TARGET_DIR/debug/pikube" ] && [ -d "$clone/.pikube/data" ]; then
    "$CARGO_TARGET_DIR/debug/pikube" killall --data-dir "$clone/.pikube/data" >/dev/null 2>&1 || true
  fi
  # Nothing may stay mounted under the clone before it is removed.
  if grep -q " $work" /proc/self/mounts; then
    grep " $work" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l || true
  fi
  rm -rf "$work"
  for kv in $saved_sysctls; do
    printf '%s' "${kv#*=}" >"/proc/sys/$(printf '%s' "${kv%%=*}" | tr . /)" 2>/dev/null || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" -eq 0 ] || fail "needs root, as make run does"
command -v kubectl >/dev/null || fail "kubectl is not installed (the README's kubectl session needs it)"

# `make run` uses the defaults of an installed pikube (ports 6443 and 10250, the run dir
# /run/pikube, the pod cgroups under /kubepods), and the clean-up line stops whatever runs
# there: refuse to start next to another pikube instead of breaking it.
busy() {
  ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}
# Processes in the pod cgroups (any depth below /kubepods).
pod_processes() {
  [ -d /sys/fs/cgroup/kubepods ] || return 0
  find /sys/fs/cgroup/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null
}
for port in 6443 10250; do
  busy "$port" && fail "port $port is in use (another pikube or Kubernetes runs here); stop it first"
done
if [ -S /run/pikube/containerd/containerd.sock ] || pgrep -f -- "-address /run/pikube/" >/dev/null; then
  fail "a pikube node runs on this machine (/run/pikube); stop it first"
fi
if [ -n "$(pod_processes)" ]; then
  fail "processes run in the pod cgroups (/sys/fs/cgroup/kubepods); stop that node first"
fi

if git -C "$repo" rev-parse --verify --quiet HEAD >/dev/null; then
  say "cloning $repo (HEAD) into $clone"
  git clone --quiet "$repo" "$clone"
else
  # A source tree without git history (an unpacked archive): a copy without build output.
  say "copying $repo into $clone"
  mkdir -p "$clone"
  tar -C "$repo" --exclude=./target --exclude=./.pikube --exclude=./images/out -cf - . | tar -C "$clone" -xf -
fi

blocks=()
while IFS= read -r -d '' block; do
  blocks+=("$block")
done < <(quickstart_blocks "$clone/README.md")
[ "${#blocks[@]}" -ge 2 ] || fail "README quick start: expected the commands block and the kubectl block, found ${#blocks[@]} block(s)"

# Block 1: the two commands, each followed by its comment.
mapfile -t commands < <(printf '%s\n' "${blocks[0]}" | sed -e 's/[[:space:]]*#.*$//' -e '/^[[:space:]]*$/d')
[ "${#commands[@]}" -eq 2 ] || fail "README quick start: expected two commands, found: ${commands[*]}"
start_cmd=${commands[0]}
test_cmd=${commands[1]}
grep -qx "$test_cmd" "$clone/.ci/run" || fail "README's test command '$test_cmd' is not what .ci/run runs"

# Step 1: the cluster, as a second terminal would run it.
say "step 1: $start_cmd (in the background)"
cd "$clone"
setsid bash -c "$start_cmd" >"$work/run.log" 2>&1 &
run_pid=$!
started=1
kubeconfig="$clone/.pikube/kubeconfig"
ready=
for _ in $(seq 1 1800); do
  kill -0 "$run_pid" 2>/dev/null || fail "'$start_cmd' exited before the node was Ready"
  if [ -s "$kubeconfig" ] &&
    KUBECONFIG="$kubeconfig" kubectl get nodes --no-headers --request-timeout=10s 2>/dev/null | awk '$2 == "Ready"' | grep -q .; then
    ready=1
    break
  fi
  sleep 1
done
[ -n "$ready" ] || fail "the node did not become Ready within 30 minutes of '$start_cmd'"
say "node Ready"

# Step 2: the README's kubectl session, word for word.
say "step 2: the README's kubectl block"
bash -euo pipefail -c "${blocks[1]}" || fail "the README's kubectl block failed"
# It applies a Deployment: it must roll out with its pods running.
deployment=$(printf '%s\n' "${blocks[1]}" | awk '/^kind: Deployment/ { d = 1 } d && /^metadata:/ { if (match($0, /name: *[a-z0-9-]+/)) { print substr($0, RSTART + 6, RLENGTH - 6); exit } }' | tr -d ' ')
[ -n "$deployment" ] || fail "no Deployment found in the README's kubectl block"
KUBECONFIG="$kubeconfig" kubectl rollout status "deployment/$deployment" --timeout=180s ||
  fail "deployment/$deployment from the README did not roll out"
running=$(KUBECONFIG="$kubeconfig" kubectl get pods --no-headers | awk '$3 == "Running"' | wc -l)
[ "$running" -ge 1 ] || fail "no pod of the README's Deployment is Running"
say "deployment/$deployment rolled out ($running pod(s) Running)"

# Step 3: stop the cluster, then the README's clean-up line.
say "step 3: stop make run and clean up as the README says"
stop_cluster
killall_line=$(grep -o 'pikube killall --data-dir [^`]*' "$clone/README.md" | head -n 1)
[ -n "$killall_line" ] || fail "the README no longer says how to stop the pods a node left"
# `pikube` is the binary `make run` built.
PATH="$CARGO_TARGET_DIR/debug:$PATH" bash -c "$killall_line" || fail "'$killall_line' failed"
if pgrep -f -- "containerd-shim.*-address /run/pikube/" >/dev/null; then
  fail "container shims still run after '$killall_line'"
fi
if [ -n "$(pod_processes)" ]; then
  fail "processes still run in the pod cgroups after '$killall_line'"
fi
say "passed"
