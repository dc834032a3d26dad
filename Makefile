# ccgate — the two commands a fresh machine needs are `make run` and `make test`.
SWIFT ?= swift
BIN := .build/debug

.PHONY: setup build ccinfer run demo test bench fuzz format clean

setup:
	@scripts/setup

build: setup
	$(SWIFT) build

# The engine binary workers run and policies pin, built reproducibly (scripts/build-ccinfer).
ccinfer: setup
	@scripts/build-ccinfer

run: build ccinfer
	@scripts/demo

demo: run

test: setup
	@scripts/test

# The in-process figures (ccgate-bench), cold DCAP beside dcap-qvl (scripts/bench-dcap), the shared
# audit chain on PostgreSQL beside pgbench (scripts/bench-postgres), then the gateway path beside
# nginx (scripts/bench-proxy).
bench: setup
	$(SWIFT) build -c release --product ccgate-bench
	$(SWIFT) build -c release --product ccgate
	$(SWIFT) build -c release --product ccworker
	@if [ "$$CCGATE_BENCH_ONLY" != proxy ] && [ "$$CCGATE_BENCH_ONLY" != postgres ]; then .build/release/ccgate-bench; fi
	@if [ -z "$$CCGATE_BENCH_ONLY" ] || [ "$$CCGATE_BENCH_ONLY" = dcap ]; then scripts/bench-dcap; fi
	@if [ -z "$$CCGATE_BENCH_ONLY" ] || [ "$$CCGATE_BENCH_ONLY" = postgres ]; then scripts/bench-postgres; fi
	@if [ -z "$$CCGATE_BENCH_ONLY" ] || [ "$$CCGATE_BENCH_ONLY" = proxy ]; then scripts/bench-proxy; fi

# The DCAP and engine parsers under libFuzzer + AddressSanitizer; FUZZ_SECONDS=600 per target by default.
fuzz: setup
	@scripts/fuzz

format:
	swift format --in-place --recursive Sources Tests Benchmarks Fuzz Plugins Package.swift

clean:
	rm -rf .build
