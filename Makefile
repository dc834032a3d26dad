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

bench: setup
	$(SWIFT) build -c release --product ccgate-bench
	.build/release/ccgate-bench

# The DCAP and engine parsers under libFuzzer + AddressSanitizer; FUZZ_SECONDS=600 per target by default.
fuzz: setup
	@scripts/fuzz

format:
	swift format --in-place --recursive Sources Tests Benchmarks Fuzz Plugins Package.swift

clean:
	rm -rf .build
