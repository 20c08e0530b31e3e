# kvcat: two commands do all set-up on a fresh machine.
#   make quickstart   trains, compresses, evaluates, writes CSV + report + plots (CPU)
#   make test         the whole test suite
SHELL := /bin/bash
CARGO ?= cargo
KVCAT := target/release/kvcat

.PHONY: setup assets test release quickstart clean-setup

setup:
	@bash scripts/setup-libtorch.sh

assets:
	@bash scripts/fetch-assets.sh all

test: setup assets
	$(CARGO) test --workspace --all-targets

release: setup
	$(CARGO) build --release -p kvcat-bench --bin kvcat

# One libtorch thread: faster for this tiny model on 2 cores, and it fixes the float reduction
# order that the quickstart's from-scratch training depends on (experiments/quickstart.toml).
quickstart: release assets
	OMP_NUM_THREADS=1 $(KVCAT) bench experiments/quickstart.toml --out runs/quickstart
	OMP_NUM_THREADS=1 $(KVCAT) report runs/quickstart
