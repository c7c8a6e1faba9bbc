# voxgate: `make run` starts the product, `make test` proves it. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

DEPS := $(CURDIR)/.deps
export ORT_DYLIB_PATH ?= $(DEPS)/lib/libonnxruntime.so
export VOXGATE_VOICES_DIR ?= $(DEPS)/voices
export VOXGATE_ENVOY ?= $(DEPS)/bin/envoy
PYTHON := $(DEPS)/venv/bin/python

WASM := target/wasm32-wasip1/wasm/voxgate_filter.wasm
SIDECAR := target/release/voxgate-sidecar

.PHONY: help setup build filter-image test run run-cluster stop token bench fuzz fuzz-ci clean

help:
	@echo "make run    build and start the sidecar and Envoy, print a working curl"
	@echo "make run-cluster  Redis, voxgate-rls and three Envoys sharing one budget (cluster-wide limits)"
	@echo "make stop   stop what make run or make run-cluster started"
	@echo "make test   unit, component and end-to-end tests"
	@echo "make filter-image  the filter as an OCI image layout in target/oci/voxgate-filter (Istio WasmPlugin)"
	@echo "make token  print a dev JWT (SUB=, EXP=, NBF=, AUD=, ISS=, SCOPE=, ALG=, PLAN=, KID=)"
	@echo "make bench  benchmarks into bench-results/ (BENCH=synthesis,throughput,... to pick; QUICK=1 to try)"
	@echo "make fuzz   every fuzz target for FUZZ_SECONDS (default 60) each; make fuzz-ci: 10 s each"

setup:
	@tools/setup.sh

build: setup
	cargo build --release -p voxgate-sidecar -p voxgate-rls
	cargo build -p voxgate-filter --target wasm32-wasip1 --profile wasm

# The filter module as an OCI image (one layer, /plugin.wasm) for Istio's WasmPlugin.
filter-image: build
	tools/filter_image.sh $(WASM) target/oci/voxgate-filter

test: build filter-image
	cargo test --release --workspace
	$(PYTHON) -m pytest -q tests

# Fuzzing needs the nightly toolchain; fuzz/run.sh installs cargo-fuzz when missing.
FUZZ_SECONDS ?= 60

fuzz: setup
	@fuzz/run.sh $(FUZZ_SECONDS)

fuzz-ci: setup
	@fuzz/run.sh 10

run: build
	@$(PYTHON) -m tools.voxgate_run start

# Cluster-wide limits on loopback: Redis, voxgate-rls and three Envoys sharing one budget.
run-cluster: build
	@$(PYTHON) -m tools.voxgate_run start-cluster

stop:
	@[ ! -x $(PYTHON) ] || $(PYTHON) -m tools.voxgate_run stop

# An option is passed only when its variable is set, so `AUD=` (set, empty) leaves the claim out.
token_option = $(if $(filter undefined,$(origin $(1))),,--$(2) '$($(1))')

token:
	@[ -x $(PYTHON) ] || tools/setup.sh >&2
	@$(PYTHON) -m tools.devtoken $(call token_option,SUB,sub) $(call token_option,EXP,exp) \
	  $(call token_option,NBF,nbf) $(call token_option,AUD,aud) $(call token_option,ISS,iss) \
	  $(call token_option,SCOPE,scope) $(call token_option,ALG,alg) $(call token_option,PLAN,plan) \
	  $(call token_option,KID,kid)

bench: build
	@bench/setup.sh
	cargo build --release -p voxgate-sidecar --example rtf_floor
	cargo build --release -p voxgate-rls --example rls_load
	cargo build --release -p voxgate-filter --features testing --example host_cost
	cargo build --release --target wasm32-wasip1 --manifest-path bench/wasm-floor/Cargo.toml --target-dir target
	$(PYTHON) -m bench $(if $(BENCH),--only '$(BENCH)') $(if $(QUICK),--quick)

clean:
	cargo clean
	rm -rf .run
