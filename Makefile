# netctl — every routine task.  `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(PY) -m pytest
NETCTL  := $(VENV)/bin/netctl
EXAMPLE ?= policies/web-server.yaml

.PHONY: help setup install uninstall test test-unit test-bpf test-netns test-fleet test-kernels demo lint fuzz fuzz-atheris bench bench-quick bench-fleet budget soak clean require-root

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup:  ## install everything on a fresh Debian 12 machine (root; quick when done before)
	@bash scripts/setup.sh

install: require-root  ## on a host: netctl in a venv at /opt/netctl, netctl.service (applies /etc/netctl/netctl.yaml at boot), examples if absent
	@bash scripts/install.sh

uninstall: require-root  ## undo make install (the unit, the venv, the link); /etc/netctl and /etc/default/netctl stay
	@bash scripts/install.sh uninstall

# Each tier is its own pytest run: pytest exits 5 when it collects nothing, and make
# stops on any non-zero status, so an empty tier can never pass as green.
test: require-root lint test-unit test-bpf test-netns test-fleet  ## lint (ruff, mypy), then every tier: unit, bpf, netns, fleet (root)

test-unit:  ## pure logic: loader, compiler, reference model, property tests (no root)
	$(PYTEST) tests/unit -q -p no:cacheprovider

test-bpf: require-root  ## real BPF loads and BPF_PROG_TEST_RUN (root)
	$(PYTEST) tests/bpf -q -p no:cacheprovider

test-netns: require-root  ## veth pairs in network namespaces with real traffic (root)
	$(PYTEST) tests/netns -q -p no:cacheprovider

test-fleet: require-root  ## a real etcd and agents in namespaces: rollouts, canaries, failures, 50 dry-run agents (root, ~1 min)
	$(PYTEST) tests/fleet -q -p no:cacheprovider

# KERNELS: entries of the kernel list (kernels/fetch.py holds the default one), e.g.
# make test-kernels KERNELS="linux-image-amd64 linux-image-6.12.95+deb12-amd64"
test-kernels: require-root  ## bpf tests, tracers and a netns smoke test on Debian's stock kernels in VMs (~20 min)
	$(PY) -m kernels.run $(if $(KERNELS),--kernels "$(KERNELS)")

require-root:
	@if [ "$$(id -u)" -ne 0 ]; then \
	  echo "the bpf and netns tiers need root (real BPF loads, namespaces); run as root," \
	       "or 'make test-unit' for the pure-logic tier" >&2; exit 1; fi

demo: require-root  ## a namespace lab: apply an example policy, send its test packets, show counters
	$(NETCTL) validate $(EXAMPLE)
	$(NETCTL) lab run $(EXAMPLE)

bench: require-root  ## throughput (two rule mixes, two floods), per-packet cost and apply cost against nftables, iptables, xdp-filter (~45 min)
	$(PY) -m bench.run

bench-quick: require-root  ## the same at N = 1, 1,000, 10,000 with short windows (~4 min)
	$(PY) -m bench.run --quick

bench-fleet: require-root  ## netctl push to every node applied: 3 real agents, 50 --dry-run agents, one real etcd (~1 min)
	$(PY) -m bench.fleet

budget: require-root  ## per-packet work (map operations, helper calls, program sizes) against bench/budget.json (~30 s)
	$(PY) -m bench.budget

soak: require-root  ## 10 minutes of traffic, tracers and an apply every few seconds: nothing may grow
	$(PY) -m bench.soak 600

lint:  ## ruff over the package and tests; mypy over the package (strict on netctl/policy and netctl/abi)
	$(PY) -m ruff check netctl tests bench kernels
	$(PY) -m mypy netctl

fuzz:  ## long loader fuzzing run (100,000 inputs, fresh random examples)
	NETCTL_HYPOTHESIS=explore NETCTL_FUZZ_EXAMPLES=100000 $(PYTEST) tests/unit/test_load_fuzz.py -q -p no:cacheprovider

fuzz-atheris:  ## coverage-guided loader fuzzing with atheris (100,000 inputs from policies/)
	rm -rf build/atheris-corpus && mkdir -p build/atheris-corpus && cp policies/*.yaml build/atheris-corpus/
	$(PY) tests/fuzz/atheris_loader.py -runs=100000 -max_len=4096 build/atheris-corpus

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
