#!/usr/bin/env bash
# The whole pipeline on the synthetic sample; called by `make demo` with the venv on PATH.
set -euo pipefail
OUT=${1:-demo}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
rm -rf "$OUT"
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1. sample dataset in the release format"
extract sample-data "$OUT/data" --influencers 40 --posts 30 --seed 0

step "2. index it into a Zarr store"
extract index "$OUT/data" "$OUT/store.zarr" --block 512

step "3. hand labels and splits"
cache labels "$OUT/store.zarr" --influencers "$OUT/data/labels/influencers.csv" --posts "$OUT/data/labels/posts.csv"

step "4. text features, two shards (BERT-base shape, random weights: offline demo)"
extract text "$OUT/store.zarr" --shard 0/2 --model random
extract text "$OUT/store.zarr" --shard 1/2 --model random

step "5. heads: Influencer Profiler on the text features (image features need \`extract images\`)"
heads fit "$OUT/store.zarr" --out "$OUT/run-text" --modality text --epochs 60 --standardize
heads eval "$OUT/run-text" --posts 5,10,30
heads predict "$OUT/run-text" "$OUT/store.zarr" --out "$OUT/predictions"
step "report"
cat "$OUT/run-text/report.md"
step "first predictions (every influencer in $OUT/predictions/influencers.csv)"
head -5 "$OUT/predictions/influencers.csv" | cut -c1-220

step "6. baselines on the same store and splits (text inputs; Tag and Text&Social from captions)"
baselines run "$OUT/store.zarr" --out "$OUT/baselines" --inputs text --compare "$OUT/run-text"

step "store information"
cache info "$OUT/store.zarr"
step "verify"
cache verify "$OUT/store.zarr"
