# MlsDisk top-level targets. See README.md.
#   make demo   toolchain + kernel + module + guest: fio table, mlsdisk vs dm-crypt
#   make test   toolchain + kernel + cargo-test + fuzz-smoke + module + guest-test + host-test + crash-replay
#   make bench  toolchain + kernel + module + the full guest benchmark (~20 min under TCG)
#   make fuzz   cargo-fuzz + every fuzz target for FUZZ_SECONDS each (fuzz/README.md)
#   make crash-replay  guest workload over dm-log-writes, then the host replay of crash states
#   make test-debug  the guest suite on the debug kernel (lockdep, KASAN, ...); not in make test
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

GUEST_ARGS ?=
# make fuzz: seconds per target, and which targets (default: all).
FUZZ_SECONDS ?= 30
FUZZ_TARGETS ?=
export FUZZ_SECONDS FUZZ_TARGETS

.PHONY: help toolchain kernel module initramfs cargo-test guest-test guest-test-kmemleak host-test crash-replay guest-demo guest-bench test demo bench fuzz fuzz-install fuzz-smoke kernel-debug module-debug test-debug rust-analyzer

help:
	@echo "make demo        install toolchain, build kernel + module, run the fio demo in the guest"
	@echo "make test        install toolchain, build kernel, cargo tests, module, guest e2e tests"
	@echo "make bench       the full fio benchmark in the guest: tables + build/bench/{results.md,chart.svg}"
	@echo "make fuzz        every fuzz target for FUZZ_SECONDS (default 30) each; FUZZ_TARGETS=\"a b\" for some"
	@echo "make fuzz-smoke  every fuzz target for FUZZ_RUNS (default 4000) inputs from a fixed seed (part of make test)"
	@echo "make crash-replay  dm-log-writes log of a guest ext4 workload, its crash states replayed on the host (~3.5 min; REPLAY_STATES=N, REPLAY_SEED=S)"
	@echo "make test-debug  the guest suite on the debug kernel (lockdep, KASAN, SLUB debug, ODEBUG; linux/README.md), zero splats; not in make test"
	@echo "make toolchain | kernel | module | initramfs | cargo-test | guest-test | guest-test-kmemleak | host-test | crash-replay | kernel-debug | module-debug"

toolchain:
	scripts/install-toolchain.sh

kernel:
	scripts/build-kernel.sh

module:
	@if [[ ! -x scripts/build-module.sh ]]; then \
		echo "make module: scripts/build-module.sh does not exist yet (the kernel module build is not in this tree)" >&2; \
		exit 1; \
	fi
	scripts/build-module.sh

initramfs:
	qemu/build-initramfs.sh >/dev/null

cargo-test:
	cargo test --workspace
	cargo clippy --workspace --all-targets -- -D warnings
	cargo fmt --all --check
	scripts/check-module-cycles.py --self-test
	scripts/check-module-cycles.py core/src linux

guest-test:
	tests/harness/judge-log-test.sh
	qemu/run-guest.sh --mode test --kmemleak on $(GUEST_ARGS)

# The guest tests boot with kmemleak=on (mlsdisk-unload-leaks scans after
# rmmod); guest-test-kmemleak runs only that test, in its own boot.
guest-test-kmemleak:
	qemu/run-guest.sh --mode test --kmemleak on --tests mlsdisk-unload-leaks --run-dir build/guest-test-kmemleak $(GUEST_ARGS)

# The debug kernel (qemu/kernel-debug.config on top of qemu/kernel.config,
# its own cache key) and the module built for it in build/module-debug;
# test-debug runs the guest suite there, timeouts scaled (run-guest.sh).
# Not part of `make test`: too slow under TCG (linux/README.md).
kernel-debug:
	MLSDISK_KERNEL_VARIANT=debug scripts/build-kernel.sh

module-debug:
	MLSDISK_KERNEL_VARIANT=debug scripts/build-module.sh

test-debug:
	$(MAKE) toolchain
	$(MAKE) kernel-debug
	$(MAKE) module-debug
	tests/harness/judge-log-test.sh
	MLSDISK_KERNEL_VARIANT=debug qemu/run-guest.sh --mode test --kmemleak on --run-dir build/guest-test-debug $(GUEST_ARGS)

# Power cuts and between-boots tampering: one image over several boots.
host-test:
	tests/host/anchor-tool.sh
	tests/host/powercut.sh

# Crash states of a real device log (tests/host/crash-replay.sh):
# REPLAY_STATES=N for a long run, REPLAY_SEED=S to replay one.
crash-replay:
	tests/host/crash-replay.sh

# The benchmark (scripts/guest-bench.sh): the demo is its short version.
guest-demo:
	scripts/guest-bench.sh --quick $(GUEST_ARGS)

guest-bench:
	scripts/guest-bench.sh $(GUEST_ARGS)

# linux/rust-project.json for rust-analyzer: the kernel's crates, the
# module and the engine (needs `make kernel`).
rust-analyzer:
	scripts/rust-analyzer.sh

# Sequential on purpose: each step needs the previous one.
test:
	$(MAKE) toolchain
	$(MAKE) kernel
	$(MAKE) cargo-test
	$(MAKE) fuzz-smoke
	$(MAKE) module
	$(MAKE) guest-test
	$(MAKE) host-test
	$(MAKE) crash-replay

demo:
	$(MAKE) toolchain
	$(MAKE) kernel
	$(MAKE) module
	$(MAKE) guest-demo

bench:
	$(MAKE) toolchain
	$(MAKE) kernel
	$(MAKE) module
	$(MAKE) guest-bench

# Coverage-guided fuzzing of the decoders (fuzz/README.md); its own
# installer, not part of `make toolchain`.
fuzz-install:
	scripts/install-fuzz.sh

fuzz: fuzz-install
	scripts/fuzz.sh

# The short, deterministic fuzz run of make test: FUZZ_RUNS inputs per target
# from a fixed seed over the committed corpus.
fuzz-smoke: fuzz-install
	FUZZ_RUNS=$${FUZZ_RUNS:-4000} FUZZ_TARGETS= scripts/fuzz.sh
