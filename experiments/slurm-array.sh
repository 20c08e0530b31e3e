#!/usr/bin/env bash
# Run a kvcat bench manifest as a Slurm array: one training job trains every checkpoint into
# a shared cache, then an array of N tasks evaluates one shard of the grid each, and a last
# job merges the shards and writes the report.
#
#   experiments/slurm-array.sh MANIFEST OUT_DIR N [extra sbatch options…]
#   e.g. experiments/slurm-array.sh experiments/smollm2-kvcat.toml runs/smollm2-kvcat 16 --partition=gpu
#
# Layout: OUT_DIR/checkpoints (shared cache), OUT_DIR/shard-<i> (one results dir per shard),
# OUT_DIR/merged (merged results + report.md + plots). Each array task runs shard
# SLURM_ARRAY_TASK_ID/N, so re-submitting the array, or single failed tasks (e.g.
# `sbatch --array=3,7 …` with the same --wrap), resumes exactly the missing cells.
#
# Environment: KVCAT (default target/release/kvcat), GPUS_PER_TASK (default 1; 0 for CPU),
# TIME_TRAIN / TIME_SHARD (default 24:00:00 / 12:00:00).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
MANIFEST=$1
OUT=$2
N=$3
shift 3
KVCAT=${KVCAT:-target/release/kvcat}
GPUS=${GPUS_PER_TASK:-1}

[[ -x "$KVCAT" ]] || { echo "error: $KVCAT not found; run \`make release\` first" >&2; exit 1; }
[[ -f "$MANIFEST" ]] || { echo "error: manifest $MANIFEST not found" >&2; exit 1; }
[[ "$N" =~ ^[1-9][0-9]*$ ]] || { echo "error: N must be a positive integer, got '$N'" >&2; exit 1; }
command -v sbatch >/dev/null || { echo "error: sbatch not found (not on a Slurm cluster?)" >&2; exit 1; }

# Validate the manifest and show the grid before submitting anything (no estimate: login
# nodes should not measure models).
"$KVCAT" bench "$MANIFEST" --out "$OUT/shard-0" --checkpoints "$OUT/checkpoints" --dry-run --no-estimate

mkdir -p "$OUT/logs"
common=(--cpus-per-task=8 "$@")
if [[ "$GPUS" != 0 ]]; then common+=(--gres="gpu:$GPUS"); fi

train=$(sbatch --parsable "${common[@]}" --job-name=kvcat-train \
    --time="${TIME_TRAIN:-24:00:00}" --output="$OUT/logs/train-%j.out" \
    --wrap="$KVCAT bench '$MANIFEST' --out '$OUT/shard-0' --checkpoints '$OUT/checkpoints' --train-only")

array=$(sbatch --parsable "${common[@]}" --job-name=kvcat-shard \
    --dependency="afterok:$train" --array="0-$((N - 1))" \
    --time="${TIME_SHARD:-12:00:00}" --output="$OUT/logs/shard-%a-%j.out" \
    --wrap="$KVCAT bench '$MANIFEST' --out '$OUT/shard-\$SLURM_ARRAY_TASK_ID' --checkpoints '$OUT/checkpoints' --shard \$SLURM_ARRAY_TASK_ID/$N")

shards=$(for ((i = 0; i < N; i++)); do printf "'%s/shard-%d' " "$OUT" "$i"; done)
merge=$(sbatch --parsable --job-name=kvcat-merge --dependency="afterany:$array" \
    --time=01:00:00 --output="$OUT/logs/merge-%j.out" \
    --wrap="$KVCAT merge $shards --out '$OUT/merged' && $KVCAT report '$OUT/merged'")

echo "submitted: train $train, shards $array (0-$((N - 1))), merge $merge"
echo "results: $OUT/merged/report.md"
