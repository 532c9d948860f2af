"""What every step of the GPU check shares: its floors, the GPU sampler, `step` and `save`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import traceback


RELEASE_POSTS = 10_180_500
FLOORS = {"text": 20_000, "images": 5_000}        # per second on one H100 (issue #17)
# An image path keeps the features when, on every row against the fp32 PIL job, at most TAIL_SHARE of
# the rows fall under a cosine of 0.99 and none under TAIL_FLOOR, and its first 256 posts are at 0.99 or
# above against the CPU's fp32 reference (issue #17's floor); benchmarks/precision.py shows what such
# rows do to a classifier's labels.
TAIL_SHARE, TAIL_FLOOR = 0.005, 0.95


class GpuSampler:
    """nvidia-smi's utilisation and memory every 0.2 s while a step runs (n/a without a GPU)."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                util, mem = out.stdout.strip().splitlines()[0].split(",")
                self.samples.append((float(util), float(mem)))
            except Exception:
                pass
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def busy(self):
        return sum(u for u, _ in self.samples) / len(self.samples) if self.samples else None

    def memory_mib(self):
        return max(m for _, m in self.samples) if self.samples else None


SKIP: set[str] = set()


def step(results: dict, name: str, fn, *args, **kw):
    """Run one measured step; record its figures, or its failure, under `name`, and write everything
    so far to $OUT/gpu-bench.json (a run killed by its time limit still returns what it measured)."""
    if name in SKIP:
        print(f"{name}: skipped (--skip)", flush=True)
        return {}
    t = time.perf_counter()
    with GpuSampler() as g:
        try:
            out = fn(*args, **kw) or {}
            out["ok"] = True
        except Exception as e:       # a broken path is a result too: record it and go on
            out = {"ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                   "traceback": traceback.format_exc()[-2000:]}
    out.update(wall_s=round(time.perf_counter() - t, 2), gpu_busy_pct=g.busy(), gpu_memory_mib=g.memory_mib())
    results[name] = out
    save(results)
    state = "ok" if out["ok"] else f"FAILED ({out['error']})"
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {state} in {out['wall_s']} s", flush=True)
    return out


def save(results: dict) -> None:
    out = results.get("_out")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu-bench.json"), "w") as f:
            json.dump({k: v for k, v in results.items() if k != "_out"}, f, indent=2, default=str)
        if isinstance(results.get("sample"), dict):
            from benchmarks.gpu.table import table
            with open(os.path.join(out, "gpu-bench.md"), "w") as f:
                f.write(table(results, results["device"]) + "\n")
