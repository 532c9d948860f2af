"""The prepared GPU check (`make bench-gpu`) runs end to end on the CPU with --dry-run, so it cannot rot
before a GPU machine runs it."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_bench_dry_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out",
                          str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, OUT=str(tmp_path)))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.load(open(tmp_path / "gpu-bench.json"))
    assert r["dry_run"] is True
    for step in ("sample", "text_plain", "text_job", "text_host", "text_job_workers", "finetune", "images_plain", "images_pil",
                 "images_nvjpeg", "decode", "model_only", "text_model", "agreement", "agreement_nvjpeg", "jobs_agree", "host_syncs", "oom_recovery", "heads"):
        assert r[step]["ok"], (step, r[step].get("error"))
    assert r["agreement"]["text_min_cosine"] >= 0.999 and r["agreement"]["image_min_cosine"] >= 0.99
    # every row of the two job pairs compared: text by workers and in one process store the same
    a = r["jobs_agree"]
    assert a["text_rows"] > 0 and a["text_nan_rows"] == 0 and a["text_min_cosine"] > 0.9999, a
    assert a["image_rows"] == r["sample"]["job_rows"] and a["image_nan_rows"] == 0, a
    assert 0 <= a["image_posts_under_0.99_in_every_copy"] <= a["image_posts_under_0.99"] <= r["sample"]["posts"]
    # the decoder's pixels on those rows: on the CPU the same libjpeg-turbo, so no difference at all
    px = r["decoded_pixels"]
    assert px["ok"] and px["lowest_rows"] == a["image_lowest_rows"][:16] and len(px["other_rows"]) > 0, px
    assert set(px["lowest_max_diff"]) == {0} and set(px["other_max_diff"]) == {0}, px
    # the jobs run on the sample repeated (so that they reach a steady state), every row of it
    assert r["sample"]["job_rows"] == r["sample"]["repeat"] * r["sample"]["posts"] and r["sample"]["repeat"] > 1
    assert r["text_job"]["rows"] == r["text_job_workers"]["rows"] == r["images_pil"]["rows"] == r["sample"]["job_rows"]
    assert r["text_host"]["rows"] == r["sample"]["job_rows"] and r["text_host"]["tokenise_us"] > 0 and r["text_host"]["workers_per_s"] > 0
    assert r["text_host"]["tokenizer_threads"] >= 1
    assert r["host_syncs"]["text_batches"] >= 1 and r["host_syncs"]["image_batches"] >= 1
    # out of memory (emulated on the CPU): both jobs halve their batches, finish, store what the others store
    o = r["oom_recovery"]
    assert o["ok"] and o["emulated"] and o["text_said"] and o["image_said"], o
    assert o["text_min_cosine"] >= 0.999 and o["image_min_cosine"] >= 0.99, o
    # two blocks at least: one to warm up, one counted
    assert r["host_syncs"]["image_pil_syncs"] is not None and r["host_syncs"]["image_nvjpeg_syncs"] is not None
    assert r["host_syncs"]["image_nvjpeg_decode_calls"] >= 1      # the decode's waits can be told apart
    assert r["text_job"]["blocks"] > 1                  # so that the rate after the first block exists
    table = open(tmp_path / "gpu-bench.md").read()
    assert "| text_job |" in table and "10.2 M posts per GPU" in table and "text host stages alone" in table
    assert "choices (job rate with the option / without" in table and "text --workers 2: " in table
    assert "host waits for the GPU" in table
    # the fp32 image job (no TF32 on a GPU) and every row of the bf16 and nvJPEG jobs against it
    assert r["images_pil_fp32"]["ok"] and r["images_pil_fp32"]["precision"] == "fp32"
    assert r["images_pil_fp32"]["rows"] == r["sample"]["job_rows"]
    for name in ("precision_agree", "nvjpeg_to_fp32"):
        assert r[name]["ok"] and r[name]["image_rows"] == r["sample"]["job_rows"] and r[name]["image_nan_rows"] == 0
    assert "against the fp32 PIL job (images_pil_fp32" in table and "images --precision bf16" in table


def test_the_jobs_store_is_the_sample_repeated(tmp_path):
    """benchmarks/gpu/'s `repeated`: every post and influencer `times` over, ids and usernames unique,
    bags where they belong, no labels yet, features empty, a store `cache verify` accepts."""
    import numpy as np

    from benchmarks.gpu import repeated
    from cache.inspect import verify
    from cache.store import open_store
    from cache.synthetic import planted_store
    src, dst = str(tmp_path / "s.zarr"), str(tmp_path / "r.zarr")
    planted_store(src, influencers=9, posts=7, block=16, write_features=False,
                  post_counts=np.array([7, 3, 9, 7, 1, 7, 12, 7, 7]))
    repeated(src, dst, 3)
    s, r = open_store(src), open_store(dst)
    n, m = s.n_posts, s.n_influencers
    assert (r.n_posts, r.n_influencers, r.block) == (3 * n, 3 * m, s.block)
    assert len(set(r["posts/id"][:])) == 3 * n and len(set(r["influencers/username"][:])) == 3 * m
    assert list(r["posts/caption"][:]) == 3 * list(s["posts/caption"][:])
    offsets, owner = r["influencers/offsets"][:], r["posts/influencer"][:]
    assert offsets[0] == 0 and offsets[-1] == 3 * n
    assert all((owner[offsets[i]:offsets[i + 1]] == i).all() for i in range(3 * m))
    assert (r["posts/label"][:] == -1).all() and (r["influencers/label"][:] == -1).all()     # `cache labels` labels it
    assert not r["features/text_done"][:].any() and r["features/text_done"].shape == (r.n_blocks,)
    assert verify(r) == []


def test_choices_use_an_image_path_only_while_it_keeps_the_features():
    """The bench's `choices`: an image option faster by over 1.05x is used only when, on every row
    against the fp32 PIL job, at most 0.5 % of rows are under a cosine of 0.99 and none under 0.95, and
    its first posts meet the 0.99 floor; not compared with fp32, it stays off."""
    import sys
    sys.path.insert(0, ROOT)
    from benchmarks.gpu import choice_items

    def run(under, low, first=0.995, nvjpeg_rows=True):
        def job(rate):
            return {"ok": True, "per_s": rate}
        r = {"text_job": job(10_000), "text_job_workers": {**job(20_000), "workers": 8},
             "images_pil": job(6_000), "images_pil_fp32": job(3_000), "images_nvjpeg": job(7_000),
             "agreement": {"ok": True, "image_min_cosine": first}, "agreement_nvjpeg": {"ok": True, "image_min_cosine": first},
             "precision_agree": {"ok": True, "image_rows": 10_000, "image_rows_under_0.99": under,
                                 "image_min_cosine": low, "image_nan_rows": 0}}
        if nvjpeg_rows:
            r["nvjpeg_to_fp32"] = dict(r["precision_agree"])
        return {part.split(": ")[0]: part for part in choice_items(r)}

    c = run(under=50, low=0.97)          # 0.5 % under 0.99, none under 0.95: kept
    assert c["text --workers 8"].endswith("2.00x (use it)")
    assert c["images --precision bf16 (auto, the default)"].endswith("2.00x (use it)")
    assert c["images --decoder nvjpeg"].endswith("1.17x (use it)")
    assert c["images --decoder nvjpeg --compile"].endswith("not measured")
    for bad in (dict(under=51, low=0.97), dict(under=0, low=0.94), dict(under=0, low=0.999, first=0.98)):
        c = run(**bad)
        assert "too far from fp32" in c["images --precision bf16 (auto, the default)"], (bad, c)
        assert c["images --decoder nvjpeg"].endswith("(keep it off)"), (bad, c)
    c = run(under=0, low=0.999, nvjpeg_rows=False)
    assert c["images --decoder nvjpeg"].endswith("not compared with fp32 (keep it off)"), c


@pytest.mark.slow
def test_precision_study_dry_run(tmp_path):
    """benchmarks/precision.py (`make bench-precision`) at tiny sizes: the four jobs ran in the precisions
    and decoders they say (bf16 features differ from fp32 ones, the fp32 job against itself does not),
    every row compared, the classifier's labels counted."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.precision", "--dry-run", "--json",
                          str(tmp_path / "p.json")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.load(open(tmp_path / "p.json"))
    assert set(r["jobs"]) == {"pil/fp32", "tv/fp32", "pil/bf16", "tv/bf16"}
    assert all(j["rows"] == r["posts"] for j in r["jobs"].values())
    pairs = r["pairs"]
    assert set(pairs) == {"pil/fp32 vs tv/fp32", "pil/fp32 vs pil/bf16", "pil/bf16 vs tv/bf16"}
    for p in pairs.values():
        assert p["rows"] > 0 and -1 <= p["min"] <= p["q0.01"] <= p["median"] <= 1 + 1e-6, p
    assert pairs["pil/fp32 vs pil/bf16"]["min"] < 1 - 1e-6          # the bf16 job did compute in bf16
    lab = r["labels"]
    assert lab["posts"] > 0 and lab["pil/fp32"]["labels_unlike_fp32"] == 0
    assert all(0 <= lab[k]["labels_unlike_fp32"] <= lab["posts"] for k in r["jobs"])
    assert "| pil/fp32 vs pil/bf16 | bf16 alone |" in out.stdout
