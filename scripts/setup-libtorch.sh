#!/usr/bin/env bash
# Installs libtorch 2.11.0 (the version tch 0.24 expects) into .libtorch/ from the torch wheel,
# plus only the CUDA runtime libraries libtorch needs to load on a CPU-only machine.
# Idempotent: a stamp file records a finished install. Set KVCAT_FULL_CUDA=1 for the full CUDA-loadable set.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.libtorch/.kvcat-stamp
want="torch==2.11.0 full=${KVCAT_FULL_CUDA:-0}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f .libtorch/torch/lib/libtorch_cpu.so ]; then
  exit 0
fi
echo "kvcat setup: installing libtorch (torch==2.11.0) into .libtorch/ ..." >&2
start=$(date +%s)
rm -rf .libtorch
pkgs=(torch==2.11.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85)
if [ "${KVCAT_FULL_CUDA:-0}" = 1 ]; then
  pkgs+=(nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88 nvidia-cufft==12.0.0.61 nvidia-cufile==1.15.1.6
         nvidia-cusparselt-cu13==0.8.0 nvidia-nccl-cu13==2.28.9 nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3
         nvidia-cudnn-cu13==9.19.0.56 nvidia-nvshmem-cu13==3.4.5)
fi
python3 -m pip install --quiet --no-input --no-deps --disable-pip-version-check --target .libtorch "${pkgs[@]}"
test -f .libtorch/torch/lib/libtorch_cpu.so || { echo "kvcat setup: .libtorch/torch/lib/libtorch_cpu.so missing after install" >&2; exit 1; }
echo "$want" > "$stamp"
echo "kvcat setup: libtorch ready in $(( $(date +%s) - start )) s, $(du -sh .libtorch | cut -f1)" >&2
