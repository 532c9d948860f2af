"""The prepared GPU check (`make bench-gpu`) runs end to end on the CPU with --dry-run, so it cannot rot
before a GPU machine runs it."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_bench_dry_run(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OUT=str(tmp_path)))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.load(open(tmp_path / "gpu-bench.json"))
    assert r["dry_run"] is True
    for step in ("sample", "text_plain", "text_job", "text_host", "text_job_workers", "finetune", "images_plain", "images_pil",
                 "images_nvjpeg", "decode", "model_only", "text_model", "agreement", "agreement_nvjpeg", "host_syncs", "heads"):
        assert r[step]["ok"], (step, r[step].get("error"))
    assert r["agreement"]["text_min_cosine"] >= 0.999 and r["agreement"]["image_min_cosine"] >= 0.99
    assert r["text_job"]["rows"] == r["text_job_workers"]["rows"] == r["images_pil"]["rows"] == r["sample"]["posts"]
    assert r["text_host"]["rows"] == r["sample"]["posts"] and r["text_host"]["tokenise_us"] > 0 and r["text_host"]["workers_per_s"] > 0
    assert r["host_syncs"]["text_batches"] >= 1 and r["host_syncs"]["image_batches"] >= 1
    # two blocks at least: one to warm up, one counted
    assert r["host_syncs"]["image_pil_syncs"] is not None and r["host_syncs"]["image_nvjpeg_syncs"] is not None
    assert r["host_syncs"]["image_nvjpeg_decode_calls"] >= 1      # the decode's waits can be told apart
    assert r["text_job"]["blocks"] > 1                  # so that the rate after the first block exists
    table = open(tmp_path / "gpu-bench.md").read()
    assert "| text_job |" in table and "10.2 M posts per GPU" in table and "text host stages alone" in table
    assert "host waits for the GPU" in table
