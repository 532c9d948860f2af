"""Benchmark of `cache labels --from-release` at the release's size: 33,935 influencers.

    python -m benchmarks.labels [--influencers 33935] [--keep]

Writes a release-format dataset with a synthetic influencers.txt of that many influencers
(one post each: the draw reads influencers only), indexes it, then times, each in a fresh
process so peak memory is its own:
- `cache labels STORE --from-release` with the defaults (200 per category, 1,142 test),
  at full and half size (whether memory grows with the number of influencers);
- a plain reference on the same influencers.txt: csv rows into Python lists, random.sample
  per category, nothing written (what a first script would do).
The floor (#14): under 10 s and bounded memory for 33,935 influencers.
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks._util import in_subprocess, scratch

RELEASE_INFLUENCERS = 33_935


def build(root: str, store: str, influencers: int) -> float:
    from extract.index import run_index
    from extract.sample import make_sample
    t = time.perf_counter()
    make_sample(root, influencers, 1, seed=0, image_size=16, clean=True)
    run_index(root, store, workers=2, quiet=True)
    return time.perf_counter() - t


def measure_cli(store: str) -> dict:
    return in_subprocess(f"""
        import time
        from typer.testing import CliRunner
        from cache.cli import app
        t = time.perf_counter()
        r = CliRunner().invoke(app, ["labels", {store!r}, "--from-release"])
        assert r.exit_code == 0, r.output
        result = {{"seconds": time.perf_counter() - t, "output": r.output.strip().splitlines()[0]}}
    """)


def measure_reference(root: str) -> dict:
    return in_subprocess(f"""
        import csv, random, time
        t = time.perf_counter()
        by_cat = {{}}
        with open({os.path.join(root, "influencers.txt")!r}, encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f, delimiter="\\t")):
                if i < 2 or len(row) < 2:
                    continue
                by_cat.setdefault(row[1].strip().lower(), []).append(row[0])
        rng = random.Random(0)
        drawn = {{c: rng.sample(u, min(200, len(u))) for c, u in by_cat.items() if c != "other"}}
        result = {{"seconds": time.perf_counter() - t, "drawn": sum(map(len, drawn.values()))}}
    """)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--influencers", type=int, default=RELEASE_INFLUENCERS)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    with scratch("bench-labels-", args.keep) as tmp:
        rows = []
        for name, n in (("full", args.influencers), ("half", args.influencers // 2)):
            root, store = os.path.join(tmp, name), os.path.join(tmp, f"{name}.zarr")
            built = build(root, store, n)
            cli = measure_cli(store)
            ref = measure_reference(root)
            rows.append((name, n, built, cli, ref))
            print(f"{name}: {n:,} influencers; dataset + index {built:.0f} s; {cli['output']}", flush=True)
        print()
        print("| influencers | `cache labels --from-release` | peak RSS | plain reference (csv + random.sample) | "
              "peak RSS | ratio |")
        print("|---:|---:|---:|---:|---:|---:|")
        for name, n, built, cli, ref in rows:
            print(f"| {n:,} | {cli['seconds']:.2f} s | {cli['peak_rss_mib']:.0f} MiB | {ref['seconds']:.3f} s | "
                  f"{ref['peak_rss_mib']:.0f} MiB | {cli['seconds'] / max(ref['seconds'], 1e-9):.0f}x |")
        full = rows[0][3]
        print(f"\nfloor: under 10 s for {args.influencers:,} influencers: "
              f"{'met' if full['seconds'] < 10 else 'MISSED'} ({full['seconds']:.2f} s, "
              f"peak {full['peak_rss_mib']:.0f} MiB; half size {rows[1][3]['peak_rss_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
