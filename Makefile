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
# Training runs as two single-threaded shards (`--train-only`) sharing the checkpoint cache,
# one per core: the shared stage-1 checkpoint is trained once (the other shard waits on its
# lock), then the policies' continuations split between the shards. The full run then finds
# every checkpoint cached and evaluates.
QUICKSTART := experiments/quickstart.toml
QS_OUT := runs/quickstart
QS_TRAIN = OMP_NUM_THREADS=1 $(KVCAT) bench $(QUICKSTART) --checkpoints $(QS_OUT)/checkpoints --train-only
quickstart: release assets
	$(QS_TRAIN) --out $(QS_OUT)/.train/0 --shard 0/2 & shard0=$$!; \
	  $(QS_TRAIN) --out $(QS_OUT)/.train/1 --shard 1/2; rc=$$?; \
	  wait $$shard0 && exit $$rc
	OMP_NUM_THREADS=1 $(KVCAT) bench $(QUICKSTART) --out $(QS_OUT)
	OMP_NUM_THREADS=1 $(KVCAT) report $(QS_OUT)
