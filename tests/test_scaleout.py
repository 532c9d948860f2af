"""Scale-out: a dask.distributed cluster of worker processes, and a store on S3.

Marked `integration` (run by `make test-integration`, and by `.ci/run` after `make test`):
they start a LocalCluster with two worker processes and a real S3-compatible server
(moto's server mode) on 127.0.0.1, and check that every whole-store stage gives the same
numbers there as on the local scheduler and a local store.
"""
import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from baselines.aggregate import influencer_means
from baselines.cli import app as baselines_app
from cache.cli import app as cache_app
from cache.store import open_store
from cache.synthetic import planted_store
from heads.cli import app as heads_app
from heads.train import FitConfig, fit
from tests.conftest import build_store, kill_after_blocks

pytestmark = pytest.mark.integration
BIN = os.path.dirname(sys.executable)


def cli(app, *args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def sh(*args, env=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def scores(results_json):
    """Every baseline's selection and test scores, without its timing."""
    r = json.load(open(results_json))
    return [{k: v for k, v in row.items() if k != "seconds"} for task in ("influencer", "post") for row in r[task]]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ------------------------------------------------------------------ dask.distributed

@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cluster")
    path = str(base / "s.zarr")
    planted_store(path, influencers=300, posts=30, seed=4, block=256, labelled_influencers=160)
    s = open_store(path, "r+")
    s["features/image_status"][[5, 700, 4000]] = 3        # unreadable images, for `cache info`
    s["features/text_status"][[9, 10]] = 2                 # captionless posts
    run = str(base / "run")
    fit(path, run, FitConfig(epochs=3, seed=0, restarts=1, instance_loss="off"), log=lambda *_: None)
    return path, run


def test_info_and_verify_on_the_cluster_equal_the_local_scheduler(planted_run, cluster, tmp_path):
    path, _ = planted_run
    local = json.loads(cli(cache_app, "info", path, "--json"))
    remote = json.loads(cli(cache_app, "info", path, "--json", "--scheduler", cluster))
    assert remote == local
    assert local["features"]["image"]["rows"]["unreadable"] == 3
    assert [u["row"] for u in local["features"]["image"]["unreadable_first"]] == [5, 700, 4000]
    assert "ok: store verified" in cli(cache_app, "verify", path, "--scheduler", cluster)
    # a half-written block and a wrong owner are found the same way on the cluster
    broken = str(tmp_path / "broken.zarr")
    shutil.copytree(path, broken)
    s = open_store(broken, "r+")
    s["features/text"][3000] = np.nan
    s["posts/influencer"][7000] = 0
    outs = [CliRunner().invoke(cache_app, ["verify", broken] + extra) for extra in ([], ["--scheduler", cluster])]
    assert [o.exit_code for o in outs] == [1, 1]
    fails = [[line for line in o.output.splitlines() if line.startswith("FAIL")] for o in outs]
    assert fails[0] == fails[1] and len(fails[0]) == 2
    assert "text block 11 is flagged done but rows 3000" in outs[0].output
    assert "posts/influencer disagrees with influencers/offsets in block 27" in outs[0].output


def test_aggregation_on_the_cluster_equals_the_local_scheduler(planted_run, cluster):
    path, _ = planted_run
    for wanted in (None, np.array([3, 150, 299, 0])):
        a, ca = influencer_means(path, "both", wanted)
        b, cb = influencer_means(path, "both", wanted, scheduler=cluster)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ca, cb)


def test_baselines_run_on_the_cluster_equals_the_local_scheduler(planted_run, cluster, tmp_path):
    path, _ = planted_run
    args = ["run", path, "--models", "gnb,knn", "--inputs", "text,both"]
    cli(baselines_app, *args, "--out", tmp_path / "local")
    out = cli(baselines_app, *args, "--out", tmp_path / "remote", "--scheduler", cluster)
    assert f"dask scheduler {cluster}" in out
    assert scores(tmp_path / "local" / "results.json") == scores(tmp_path / "remote" / "results.json")
    assert read_csv(tmp_path / "local" / "predictions.csv") == read_csv(tmp_path / "remote" / "predictions.csv")


def test_predict_on_the_cluster_equals_the_local_scheduler(planted_run, cluster, tmp_path, monkeypatch):
    import heads.predict
    monkeypatch.setattr(heads.predict, "GROUP_ROWS", 256)      # 36 tasks, so order and windows matter
    path, run = planted_run
    outs = {}
    for name, extra in (("local", []), ("cluster", ["--scheduler", cluster])):
        out = tmp_path / name
        cli(heads_app, "predict", run, path, "--out", out, *extra)
        s = open_store(path)
        outs[name] = ({k: s[f"predictions/{k}"][:] for k in ("post_label", "post_prob", "attention",
                                                              "influencer_label", "influencer_prob")},
                      read_csv(out / "influencers.csv"), read_csv(out / "posts.csv"))
        assert s.group["predictions"].attrs["complete"] is True
    (a, ia, pa), (b, ib, pb) = outs["local"], outs["cluster"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert ia == ib and pa == pb
    assert len(ia) == 301 and len(pa) == 9001


def test_unreachable_scheduler_is_one_clear_line(planted_run):
    path, _ = planted_run
    r = CliRunner().invoke(cache_app, ["verify", path, "--scheduler", f"tcp://127.0.0.1:{_free_port()}"])
    assert r.exit_code == 2 and r.output.startswith("error: dask scheduler tcp://127.0.0.1:")
    assert len(r.output.strip().splitlines()) == 1


# ------------------------------------------------------------------ S3 (moto server)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1, the environment pointing at it, one bucket."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([os.path.join(BIN, "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("profiler")
        yield "s3://profiler"
        s3fs.S3FileSystem.clear_instance_cache()
    proc.terminate()
    proc.wait()


def _extract(target, tiny_bert, encoder, text_shards=("0/2", "1/2")):
    for shard in text_shards:
        sh(os.path.join(BIN, "extract"), "text", target, "--shard", shard, "--model", tiny_bert, "--precision", "fp32")
    for shard in ("0/2", "1/2"):
        sh(os.path.join(BIN, "extract"), "images", target, "--shard", shard, "--encoder", encoder,
           "--workers", "2", "--batch-size", "16", "--precision", "fp32")


@pytest.fixture(scope="module")
def s3_cluster(s3):
    """A cluster whose workers were started with the S3 endpoint and credentials in their environment."""
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c.scheduler_address


def test_whole_pipeline_on_s3_equals_a_local_store(sample, s3, tiny_bert, quick_encoder, s3_cluster, block_delay,
                                                    tmp_path):
    """Index, shard jobs (one SIGKILLed and rerun), verify, heads fit/predict, baselines on an s3:// store."""
    cluster = s3_cluster
    url, local = f"{s3}/pipeline.zarr", str(tmp_path / "local.zarr")
    for target in (url, local):
        build_store(sample, target)
    _extract(local, tiny_bert, quick_encoder[0])
    # on S3: a text job killed after its first block, then the same command completes it
    extract = os.path.join(BIN, "extract")
    kill_after_blocks(block_delay(2, [extract, "text", url, "--shard", "0/1", "--model", tiny_bert, "--precision",
                                      "fp32"]), url, "text", blocks=1)
    done = open_store(url)["features/text_done"][:]
    assert 1 <= done.sum() < len(done), done
    _extract(url, tiny_bert, quick_encoder[0], text_shards=("0/1",))
    a, b = open_store(url), open_store(local)
    for m in ("text", "image"):
        np.testing.assert_array_equal(a[f"features/{m}_status"][:], b[f"features/{m}_status"][:])
        np.testing.assert_array_equal(a[f"features/{m}"][:], b[f"features/{m}"][:])
        assert a[f"features/{m}_done"][:].all()
    assert "ok: store verified" in cli(cache_app, "verify", url)
    assert "ok: store verified" in cli(cache_app, "verify", url, "--scheduler", cluster)
    info = cli(cache_app, "info", url)
    assert f"store      {url}" in info and "image      3/3 blocks done" in info

    runs = {}
    for name, target in (("s3", url), ("local", local)):
        run = str(tmp_path / f"run-{name}")
        sh(os.path.join(BIN, "heads"), "fit", target, "--out", run, "--epochs", "3", "--standardize", "--restarts", "1", "--instance-loss", "off")
        runs[name] = run
        sh(os.path.join(BIN, "baselines"), "run", target, "--out", tmp_path / f"bl-{name}",
           "--models", "gnb,knn", "--inputs", "both")
    ma, mb = (json.load(open(os.path.join(runs[k], "metrics.json"))) for k in ("s3", "local"))
    assert ma["influencer"] == mb["influencer"] and ma["post"] == mb["post"]
    assert scores(tmp_path / "bl-s3" / "results.json") == scores(tmp_path / "bl-local" / "results.json")

    sh(os.path.join(BIN, "heads"), "predict", runs["local"], url, "--out", tmp_path / "pred-s3", "--scheduler", cluster)
    sh(os.path.join(BIN, "heads"), "predict", runs["local"], local, "--out", tmp_path / "pred-local")
    for name in ("influencers.csv", "posts.csv"):
        assert read_csv(tmp_path / "pred-s3" / name) == read_csv(tmp_path / "pred-local" / name)
    a, b = open_store(url), open_store(local)
    np.testing.assert_array_equal(a["predictions/attention"][:], b["predictions/attention"][:])
    assert "ok: store verified" in cli(cache_app, "verify", url)


def test_missing_s3_store_or_credentials_is_one_clear_line(s3, monkeypatch):
    r = CliRunner().invoke(cache_app, ["info", f"{s3}/nothing-here.zarr"])
    assert r.exit_code == 2 and "no store here" in r.output, r.output
    import s3fs
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        r = CliRunner().invoke(cache_app, ["info", f"{s3}/pipeline.zarr"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert r.exit_code == 2 and "cannot open the store" in r.output and "Credentials" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
