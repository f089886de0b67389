# Sigil — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export SOFTHSM2_CONF := $(CURDIR)/hsm/softhsm2.conf
CARGO ?= cargo
DEBIAN_PACKAGES := softhsm2 opensc protobuf-compiler libusb-1.0-0-dev pkg-config openssl ca-certificates build-essential postgresql postgresql-client python3 fonts-dejavu-core
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Throwaway PostgreSQL clusters (scripts/pg-cluster.sh): for `make test`, `make pg` and `make bench`
PG_CLUSTER := bash scripts/pg-cluster.sh
PG_TEST_DIR := $(CURDIR)/target/pg
PG_DEV_DIR := $(CURDIR)/target/pg-dev
PG_BENCH_DIR := $(CURDIR)/target/pg-bench

.PHONY: help deps certs hsm build run test lint fuzz pg pg-stop bench soak clean-dev demo e2e

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## Install missing Debian packages (SoftHSM2, protoc, libusb, PostgreSQL, ...)
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }

certs: deps ## Development CA, server certificate and one client certificate per role (certs/out/)
	@bash certs/gen.sh certs/out

build: deps ## Build everything
	$(CARGO) build --workspace --bins --examples

hsm: deps build ## SoftHSM token and keys under hsm/tokens/ (PINs in hsm/pin, hsm/so-pin)
	@mkdir -p hsm/tokens
	@sed "s|@TOKENDIR@|$(CURDIR)/hsm/tokens|" hsm/softhsm2.conf.in > hsm/softhsm2.conf
	@umask 077; [ -s hsm/pin ] || openssl rand -hex 12 > hsm/pin; [ -s hsm/so-pin ] || openssl rand -hex 12 > hsm/so-pin
	@./target/debug/sigil hsm init

run: certs hsm ## Start sigild on 127.0.0.1:50051 (sled in data/, SoftHSM)
	@mkdir -p data
	./target/debug/sigild --config sigil.dev.toml

# The cluster is stopped and removed when the recipe's shell exits, whether
# the tests pass or fail; the recipe's status is the tests'.
test: certs hsm ## The whole test suite (with a throwaway PostgreSQL cluster in target/pg)
	@set -euo pipefail; \
	trap '$(PG_CLUSTER) stop "$(PG_TEST_DIR)"' EXIT; \
	$(PG_CLUSTER) start "$(PG_TEST_DIR)" >/dev/null; \
	export SIGIL_TEST_PG_DSN="$$(cat "$(PG_TEST_DIR)/dsn")" SIGIL_REQUIRE_PG=1; \
	echo "PostgreSQL for the tests: $$SIGIL_TEST_PG_DSN"; \
	$(CARGO) test --workspace --all-targets; \
	$(CARGO) test --workspace --doc

# Formatting, clippy with warnings as errors (also with the bench feature)
# and cargo-deny; .ci/run runs it before `make test`. The RustSec advisory
# database is fetched from the network: where that fails, the advisory check
# is skipped with a message, never failed.
lint: deps ## rustfmt check, clippy -D warnings, cargo-deny (licenses, bans, sources; advisories when reachable)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets --features sigil/bench -- -D warnings
	$(CARGO) clippy --workspace --all-targets --features sigil/soak -- -D warnings
	$(CARGO) clippy --workspace --all-targets --features sigil/loadgen -- -D warnings
	@command -v cargo-deny >/dev/null || $(CARGO) install cargo-deny --locked
	$(CARGO) deny check bans licenses sources
	@if why=$$(timeout 120 $(CARGO) deny fetch db 2>&1); then \
	  $(CARGO) deny check advisories; \
	else \
	  echo "cargo deny: advisories SKIPPED: the RustSec advisory database could not be fetched:"; \
	  echo "$$why" | grep -m2 -iE 'fatal|error' || echo "  (fetch timed out or failed: $$why)"; \
	fi

# Every fuzz target (fuzz/README.md) for FUZZ_SECONDS each, from fuzz/seeds
# plus whatever fuzz/corpus (git-ignored) has grown. Not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz: ## Run each fuzz target for FUZZ_SECONDS (default 60); needs the nightly toolchain
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@set -euo pipefail; for t in $$(cd fuzz && $(CARGO) +nightly fuzz list); do \
	  mkdir -p fuzz/corpus/$$t; cp fuzz/seeds/$$t/* fuzz/corpus/$$t/; \
	  echo "== $$t ($(FUZZ_SECONDS) s)"; \
	  (cd fuzz && $(CARGO) +nightly fuzz run $$t corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1); \
	done

pg: deps ## Start a PostgreSQL cluster for development (target/pg-dev) and print its DSN
	@dsn=$$($(PG_CLUSTER) start "$(PG_DEV_DIR)"); \
	echo "SIGIL_TEST_PG_DSN='$$dsn'"; \
	echo "stop it with: make pg-stop"

pg-stop: ## Stop the development PostgreSQL cluster and remove target/pg-dev
	@$(PG_CLUSTER) stop "$(PG_DEV_DIR)"

# The bench's PostgreSQL rows run on a throwaway cluster in target/pg-bench,
# stopped and removed when the recipe's shell exits, whatever the outcome.
# First the load from outside (examples/loadgen.rs: a separate process
# against a release sigild with its own token, store and certificates;
# LOADGEN_* knobs, see its header), then the in-process diagnostics.
bench: certs hsm ## Benchmarks: external load on a release sigild, then in-process diagnostics (sled, PostgreSQL); recorded in BENCHMARKS.md
	$(CARGO) build --release --features loadgen --bins --example loadgen
	./target/release/examples/loadgen
	$(CARGO) bench --workspace --bench verify --bench totp -- --warm-up-time 1 --measurement-time 3
	@set -euo pipefail; \
	trap '$(PG_CLUSTER) stop "$(PG_BENCH_DIR)"' EXIT; \
	$(PG_CLUSTER) start "$(PG_BENCH_DIR)" >/dev/null; \
	export SIGIL_BENCH_PG_DSN="$$(cat "$(PG_BENCH_DIR)/dsn")"; \
	echo "PostgreSQL for the bench: $$SIGIL_BENCH_PG_DSN"; \
	$(CARGO) run --release --features bench --example bench; \
	$(CARGO) run --release --features bench --example bench_protect

# The demo exchange page (examples/demo) in front of a sigild with
# sigil.dev.toml: the one already answering on 127.0.0.1:50051, else one
# started here and stopped when the demo stops.
DEMO_LISTEN ?= 127.0.0.1:8080
demo: certs hsm ## Demo exchange page on http://localhost:8080 (starts sigild with sigil.dev.toml if none runs)
	@set -euo pipefail; mkdir -p data; \
	if (exec 3<>/dev/tcp/127.0.0.1/50051) 2>/dev/null; then \
	  echo "using the sigild already on 127.0.0.1:50051"; \
	else \
	  ./target/debug/sigild --config sigil.dev.toml >/dev/null & pid=$$!; \
	  trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	fi; \
	./target/debug/examples/demo --listen $(DEMO_LISTEN)

# Headless Debian Chromium driven by playwright-core (e2e/package-lock.json)
# with a CDP WebAuthn virtual authenticator; its own sigild, token and
# store. Screenshots in target/e2e-artifacts/.
e2e: certs build ## End-to-end test of the demo page in headless Chromium (screenshots in target/e2e-artifacts)
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }
	@command -v npm >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; }
	@cd e2e && npm ci --no-audit --no-fund --loglevel=error
	@start=$$(date +%s); rc=0; node e2e/run.mjs || rc=$$?; echo "make e2e: $$(( $$(date +%s) - start )) s"; exit $$rc

# Not part of `make test`: a bounded run (SOAK_SECONDS, default 120) of
# mixed load at SOAK_LOAD (0.8) of the capacity it measures first, against
# a release sigild with its own token, store and certificates in a temp dir.
soak: deps ## Soak: mixed load at 80% of capacity against a release sigild, failing on errors or RSS, fd, HSM-session growth
	$(CARGO) build --release --features soak --bins --example soak
	$(CARGO) run --release --features soak --example soak

clean-dev: ## Remove generated certificates, the development token and data (irreversible)
	rm -rf certs/out hsm/tokens hsm/pin hsm/so-pin hsm/softhsm2.conf data
