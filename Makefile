# pikube — build, test and benchmark targets.
# `make test` is what CI runs (.ci/run); `make deps` installs the Debian packages.

CARGO ?= cargo
DEBIAN_PACKAGES = build-essential pkg-config protobuf-compiler containerd runc nftables \
	containernetworking-plugins iproute2 etcd-server etcd-client dnsutils busybox-static \
	jq curl ca-certificates python3 python3-pip

.PHONY: all build test lint unit e2e bench bench-store bench-scheduler bench-dns release deps run clean

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

## run: a single-node server in the foreground, state in ./.pikube (installs what it needs)
RUN_DIR ?= $(CURDIR)/.pikube
run: deps
	$(CARGO) build --bin pikube
	@echo "kubeconfig: $(RUN_DIR)/kubeconfig  (export KUBECONFIG=$(RUN_DIR)/kubeconfig)"
	$(CARGO) run --bin pikube -- server --disable-agent --data-dir $(RUN_DIR)/data --write-kubeconfig $(RUN_DIR)/kubeconfig

## test: formatting, lints and every test of the workspace
test: lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

## e2e: the end-to-end test binary only (real processes, real kubectl)
e2e:
	$(CARGO) test --test e2e

## bench: every benchmark (not part of `make test`)
bench: bench-store bench-scheduler bench-dns

## bench-scheduler: 3,000 pods of 30 Deployments onto 100 simulated nodes
bench-scheduler:
	$(CARGO) build --release --bin pikube --example bench_scheduler
	$(CARGO) run --release --example bench_scheduler

## bench-dns: cluster DNS with 1,000 services against knot (Debian: dnsperf, knot)
bench-dns:
	$(CARGO) build --release --bin pikube --example bench_dns
	$(CARGO) run --release --example bench_dns

## bench-store: pikube's store against etcd 3.4 with the same load, in one run
bench-store:
	$(CARGO) run --release -p pikube-raft --example bench_store

## release: stripped, size-optimised binary
release:
	$(CARGO) build --release --bin pikube
	@ls -l target/release/pikube 2>/dev/null || ls -l "$${CARGO_TARGET_DIR}/release/pikube"

clean:
	$(CARGO) clean
