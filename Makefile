# pikube — build, test and benchmark targets.
# `make test` is what CI runs (.ci/run); `make deps` installs the Debian packages.

CARGO ?= cargo
DEBIAN_PACKAGES = build-essential pkg-config protobuf-compiler containerd runc nftables \
	containernetworking-plugins iproute2 etcd-server etcd-client dnsutils busybox-static \
	jq curl ca-certificates python3 python3-pip shellcheck zstd gzip

.PHONY: all build test lint unit newcomer e2e bench bench-store bench-api bench-scheduler bench-pods bench-proxy bench-streams bench-dns bench-coldstart bench-probes images release install deps run clean

all: build

## build: debug build of the whole workspace
build:
	$(CARGO) build --workspace

## deps: install the Debian packages that building and testing need (idempotent)
deps:
	@if [ "$$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi; \
	missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi
	@python3 -c 'import kubernetes' 2>/dev/null || python3 -m pip install --quiet kubernetes \
		|| python3 -m pip install --quiet --break-system-packages kubernetes

## run: a single-node cluster in the foreground, state in ./.pikube (installs what it needs; root)
RUN_DIR ?= $(CURDIR)/.pikube
run: deps images
	$(CARGO) build --bin pikube
	mkdir -p $(RUN_DIR)/data/agent/images
	cp images/out/pause.tar images/out/busybox.tar $(RUN_DIR)/data/agent/images/
	@echo "kubeconfig: $(RUN_DIR)/kubeconfig  (export KUBECONFIG=$(RUN_DIR)/kubeconfig)"
	$(CARGO) run --bin pikube -- server --data-dir $(RUN_DIR)/data --write-kubeconfig $(RUN_DIR)/kubeconfig

## test: formatting, lints, every test of the workspace, then the README's quick start
## (one after the other, also under `make -j`: the quick start uses the default ports)
test:
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) newcomer

lint:
	shellcheck install.sh tests/newcomer.sh
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## newcomer: the README's quick start followed word for word in a clean clone (root;
## uses the default ports, so it runs after the other tests)
newcomer:
	bash tests/newcomer.sh

## e2e: the end-to-end test binary only (real processes, real kubectl)
e2e:
	$(CARGO) test --test e2e

## bench: every benchmark (not part of `make test`)
bench: bench-store bench-api bench-scheduler bench-pods bench-runtime bench-proxy bench-streams bench-dns bench-coldstart

## bench-api: API latency and throughput with 32 clients, a 5,000-pod list, watch fan-out, RSS
bench-api:
	$(CARGO) build --release --bin pikube --example bench_api
	$(CARGO) run --release --example bench_api

## bench-scheduler: 3,000 pods of 30 Deployments onto 100 simulated nodes
bench-scheduler:
	$(CARGO) build --release --bin pikube --example bench_scheduler
	$(CARGO) run --release --example bench_scheduler

## bench-scheduler-burst: the same with every pod pending before the nodes take pods
.PHONY: bench-scheduler-burst
bench-scheduler-burst:
	$(CARGO) build --release --bin pikube --example bench_scheduler
	BENCH_BURST=1 $(CARGO) run --release --example bench_scheduler

## bench-scheduler-affinity: the same with pod anti-affinity and zone spread on every pod
.PHONY: bench-scheduler-affinity
bench-scheduler-affinity:
	$(CARGO) build --release --bin pikube --example bench_scheduler
	BENCH_AFFINITY=1 $(CARGO) run --release --example bench_scheduler

## bench-pods: pod startup latency, a 30-replica Deployment and agent memory on a real containerd (root)
bench-pods:
	$(CARGO) build --release --bin pikube --example bench_pods
	$(CARGO) run --release --example bench_pods

## bench-streams: kubectl logs/exec latency and log throughput through the API server and agent
bench-streams:
	$(CARGO) build --release --bin pikube
	bash examples/bench_streams.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

## bench-probes: HTTPS and gRPC probe latency against curl, log rotation's gzip against GNU gzip
bench-probes:
	$(CARGO) run --release --example bench_probes

## bench-coldstart: time from `pikube server` to its node Ready, with an empty and an existing data dir (root)
bench-coldstart:
	$(CARGO) build --release --bin pikube
	bash examples/bench_coldstart.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

## bench-dns: cluster DNS with 1,000 services against knot (Debian: dnsperf, knot)
bench-dns:
	$(CARGO) build --release --bin pikube --example bench_dns
	$(CARGO) run --release --example bench_dns

## bench-idle: store writes, Node and Lease writes, proxy sync passes and DNS zone rebuilds
## per minute of an idle single-node cluster, in a network namespace of its own (root)
.PHONY: bench-idle
bench-idle:
	$(CARGO) build --release --bin pikube
	bash examples/bench_idle.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

## bench-satokens: TokenRequest latency and the cost of authenticating service-account tokens
bench-satokens:
	$(CARGO) build --release --bin pikube
	bash examples/bench_satokens.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

## bench-store: pikube's store against etcd 3.4 with the same load, in one run
bench-store:
	$(CARGO) run --release -p pikube-raft --example bench_store

## bench-store-disk: the store's disk use after overwrites, compaction and defragmentation
.PHONY: bench-store-disk
bench-store-disk:
	$(CARGO) run --release -p pikube-raft --example bench_store -- --only disk

## bench-proxy: 10,000 services x 5 endpoints rendered and applied in a network
## namespace of its own (needs root): full sync, one-service update, added latency
bench-proxy:
	$(CARGO) run --release -p pikube-netfilter --example bench_proxy

## release: stripped, LTO-optimised binaries (profile `dist`) in dist/ as install.sh downloads them
## (pikube-<arch> and sha256sum-<arch>.txt), with their sizes. Cross builds:
## RELEASE_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf" (rustup targets and linkers needed)
RELEASE_TARGETS ?= host
release:
	@set -e; target_dir="$${CARGO_TARGET_DIR:-target}"; mkdir -p dist; \
	for t in $(RELEASE_TARGETS); do \
		if [ "$$t" = host ]; then \
			$(CARGO) build --profile dist --bin pikube; bin="$$target_dir/dist/pikube"; \
			t=$$(rustc -vV | sed -n 's/^host: //p'); \
		else \
			$(CARGO) build --profile dist --bin pikube --target "$$t"; bin="$$target_dir/$$t/dist/pikube"; \
		fi; \
		case "$$t" in x86_64-*) arch=amd64;; aarch64-*) arch=arm64;; arm*) arch=armhf;; \
			*) echo "release: no install.sh architecture for $$t" >&2; exit 1;; esac; \
		cp "$$bin" "dist/pikube-$$arch"; \
		(cd dist && sha256sum "pikube-$$arch" > "sha256sum-$$arch.txt"); \
		stat -c '%s %n' "dist/pikube-$$arch" | awk '{ printf "%s: %d bytes (%.1f MB)\n", $$2, $$1, $$1 / 1048576 }'; \
	done

## install: build the release binary and install it with install.sh as a service (root or
## sudo; INSTALL_PIKUBE_* and PIKUBE_URL/PIKUBE_TOKEN are passed through)
install:
	$(CARGO) build --release --bin pikube
	INSTALL_PIKUBE_BIN_PATH="$${CARGO_TARGET_DIR:-target}/release/pikube" sh install.sh

clean:
	$(CARGO) clean

.PHONY: images bench-runtime

## images: offline OCI image tarballs (pause, busybox) into images/out/ (idempotent)
images:
	images/build.sh images/out

## bench-runtime: containerd start, image import (vs ctr), pod start latency (root)
bench-runtime:
	$(CARGO) run --release -p pikube-runtime --example bench_runtime

.PHONY: bench-crd

## bench-crd: custom resources against ConfigMaps (definition to first object, creates, lists)
bench-crd:
	$(CARGO) build --release --bin pikube
	bash examples/bench_crd.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

.PHONY: bench-events

## bench-events: Events created and listed through events.k8s.io/v1 against core/v1 (conversion cost)
bench-events:
	$(CARGO) build --release --bin pikube
	bash examples/bench_events.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

.PHONY: bench-join

## bench-join: latency of a node's join request (first join, rejoin, refused claim of a taken name)
bench-join:
	$(CARGO) build --release --bin pikube
	bash examples/bench_join.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"

.PHONY: bench-volumes

## bench-volumes: PersistentVolume binding of N claims to hand-made volumes, against ConfigMap creates
bench-volumes:
	$(CARGO) build --release --bin pikube
	bash examples/bench_volumes.sh "$${CARGO_TARGET_DIR:-target}/release/pikube"
