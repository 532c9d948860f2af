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

step "5. image encoder: Inception-v3, top two blocks + 1024-d ReLU layer trained on the labelled posts"
echo "(random starting weights and 139 px input: offline and quick; real runs use --weights imagenet and 299 px)"
extract finetune-images "$OUT/store.zarr" --out "$OUT/image-encoder.pt" --weights random --image-size 139 --epochs 8

step "6. image features, two shards (the sample's planted bad images are listed and get status 3)"
extract images "$OUT/store.zarr" --shard 0/2 --encoder "$OUT/image-encoder.pt"
extract images "$OUT/store.zarr" --shard 1/2 --encoder "$OUT/image-encoder.pt"

step "7. heads: Influencer Profiler on image and text features"
heads fit "$OUT/store.zarr" --out "$OUT/run" --modality both
heads eval "$OUT/run" --posts 5,10,30
heads predict "$OUT/run" "$OUT/store.zarr" --out "$OUT/predictions"
step "report"
cat "$OUT/run/report.md"
step "first predictions (every influencer in $OUT/predictions/influencers.csv)"
head -5 "$OUT/predictions/influencers.csv" | cut -c1-220

step "8. baselines on the same store and splits"
baselines run "$OUT/store.zarr" --out "$OUT/baselines" --inputs text,image,both --compare "$OUT/run"

step "9. the HTML report (run, Tables 1-2 beside the baselines and the paper, figures, explorer, cards)"
heads report "$OUT/run" "$OUT/store.zarr" --out "$OUT/report" --baselines "$OUT/baselines" \
    --predictions "$OUT/predictions" --cards 3

step "10. your own crawl: a sample as instaloader writes it, indexed, its image features, then --update"
extract sample-data "$OUT/crawl" --format instaloader --influencers 12 --posts 10 --seed 1 --image-size 128
extract index "$OUT/crawl" "$OUT/crawl.zarr" --block 64
extract images "$OUT/crawl.zarr" --shard 0/1 --encoder "$OUT/image-encoder.pt"
gone=$(ls "$OUT/crawl" | grep -v labels | head -1)
echo "(the crawl changes: $gone's folder is deleted; every other post keeps its features)"
rm -rf "$OUT/crawl/$gone"
extract index "$OUT/crawl" "$OUT/crawl.zarr" --update
extract images "$OUT/crawl.zarr" --shard 0/1 --encoder "$OUT/image-encoder.pt"
cache info "$OUT/crawl.zarr"

step "store information"
cache info "$OUT/store.zarr"
step "verify"
cache verify "$OUT/store.zarr"
echo
echo "report: open $OUT/report/index.html in a browser"
