"""Peak memory of `cache import` against what the file declares (#30): a normal export, and the same file
with its recorded Zarr layout forged to shards of 2^27 and 2^30 rows, and with a table declaring 2^30
rows it does not hold. Each import runs in a fresh process (peak RSS its own).

    python -m benchmarks.import_memory [--posts 100000]

Before #30 the 2^27-row layout drove a 225 KB file's import past 2 GB before a MemoryError, and 2^30
asked for 16 GiB. The floor: peak memory independent of the declared layout.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil

from benchmarks._util import in_subprocess, scratch


def _forge(src: str, dst: str, how: str) -> None:
    import h5py
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        if how.startswith("shards"):
            rows = 2 ** int(how.split("2^")[1])
            lay = json.loads(f["features/image"].attrs["zarr_layout"])
            lay.update(shards=[rows, 1024], chunks=[rows, 1024])
            f["features/image"].attrs["zarr_layout"] = json.dumps(lay)
        else:                                     # a table declaring 2^30 rows it does not hold
            attrs = dict(f["posts/likes"].attrs)
            del f["posts/likes"]
            d = f.create_dataset("posts/likes", shape=(2**30,), dtype="int64", chunks=(65536,), compression="lzf")
            for k, v in attrs.items():
                d.attrs[k] = v


def _import(path: str, out: str) -> dict:
    return in_subprocess(f"""
        import time
        from cache.exchange import import_store
        from runtime.errors import UserError
        t = time.perf_counter()
        try:
            import_store({path!r}, {out!r})
            outcome = "imported"
        except UserError as e:
            outcome = "refused: " + str(e).split(": ", 1)[-1][:60] + "…"
        result = {{"seconds": time.perf_counter() - t, "outcome": outcome}}
    """)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=100_000)
    args = ap.parse_args()
    from cache.exchange import export_store
    from cache.synthetic import planted_store
    with scratch("import-memory-") as d:
        store = os.path.join(d, "s.zarr")
        planted_store(store, influencers=max(1, args.posts // 100), posts=100, seed=0, block=16384, fast_noise=True)
        h5 = os.path.join(d, "s.h5")
        export_store(store, h5)
        rows = []
        for how in ("normal", "shards of 2^27 rows", "shards of 2^30 rows", "2^30 rows declared"):
            path = h5 if how == "normal" else os.path.join(d, "forged.h5")
            if how != "normal":
                _forge(h5, path, how.replace("shards of ", "shards").replace(" rows", ""))
            out = os.path.join(d, f"import-{len(rows)}.zarr")
            r = _import(path, out)
            rows.append((how, os.path.getsize(path), r))
            shutil.rmtree(out, ignore_errors=True)
        base = rows[0][2]["peak_rss_mib"]
        print(f"cache import of a {args.posts:,}-post export ({rows[0][1] / 1e6:,.0f} MB):")
        print("| file | size | outcome | seconds | peak RSS MiB | vs normal |")
        print("|---|---:|---|---:|---:|---:|")
        for how, size, r in rows:
            print(f"| {how} | {size / 1e6:,.1f} MB | {r['outcome']} | {r['seconds']:.2f} | {r['peak_rss_mib']:,.0f} | "
                  f"{r['peak_rss_mib'] / base:.2f}x |")


if __name__ == "__main__":
    main()
