"""The shard-job protocol (extract/jobs.py), once for both encoders: a job SIGKILLed mid-run and rerun
redoes only the unfinished blocks; two shards at once, and one shard given to two jobs at once,
give the single job's features."""
import subprocess
import sys
import time

import numpy as np
import pytest

from cache.inspect import verify
from cache.store import open_store
from tests.conftest import build_store, kill_after_blocks, shard_files

ENCODERS = {
    # modality: (fixture with the encoder, reference store fixture, the command's options)
    "text": ("tiny_bert", "fp32_store", lambda enc: ["text", "--model", enc, "--device", "cpu", "--precision", "fp32",
                                                      "--batch-tokens", "512"]),
    "image": ("quick_encoder", "extracted", lambda enc: ["images", "--encoder", enc[0], "--workers", "1",
                                                        "--batch-size", "16"]),
}


@pytest.fixture(params=list(ENCODERS))
def job(request):
    """(modality, command maker, reference store path) for each encoder."""
    modality = request.param
    enc_fixture, ref_fixture, options = ENCODERS[modality]
    enc, ref = request.getfixturevalue(enc_fixture), request.getfixturevalue(ref_fixture)
    ref_path = ref[0] if isinstance(ref, tuple) else ref
    opts = options(enc)

    def cmd(store: str, shard: str) -> list[str]:
        return [sys.executable, "-m", "extract.cli_main", opts[0], store, "--shard", shard, *opts[1:]]
    return modality, cmd, ref_path


def _same_as_reference(path: str, modality: str, ref: str) -> None:
    s = open_store(path)
    assert verify(s) == [] and s[f"features/{modality}_done"][:].all()
    np.testing.assert_array_equal(s[f"features/{modality}"][:], open_store(ref)[f"features/{modality}"][:])
    np.testing.assert_array_equal(s[f"features/{modality}_status"][:], open_store(ref)[f"features/{modality}_status"][:])


@pytest.mark.slow
def test_sigkill_then_rerun_redoes_only_unfinished_blocks(job, sample, block_delay, tmp_path):
    modality, cmd, ref = job
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    kill_after_blocks(block_delay(0.5, cmd(path, "0/1")), path, modality)
    done_before = open_store(path)[f"features/{modality}_done"][:]
    assert 2 <= done_before.sum() < len(done_before), "killed mid-run"
    assert verify(open_store(path)) == []
    before = shard_files(path, modality)
    time.sleep(0.05)
    out = subprocess.run(cmd(path, "0/1"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"{int(done_before.sum())} already done" in out.stderr
    after = shard_files(path, modality)
    for b in np.flatnonzero(done_before):
        assert after[str(b)] == before[str(b)], f"block {b} was recomputed"
    _same_as_reference(path, modality, ref)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [("0/2", "1/2"), ("0/1", "0/1")], ids=["two-shards", "one-shard-twice"])
def test_two_jobs_at_once(job, sample, shards, tmp_path):
    modality, cmd, ref = job
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    procs = [subprocess.Popen(cmd(path, sh), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for sh in shards]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    _same_as_reference(path, modality, ref)


class _Planted:
    """A BlockJob (extract.jobs) giving each row its own index as features, without a model."""
    modality, unit, fingerprint, waited = "text", "captions", {"kind": "text", "model": "planted"}, 0.0

    def plan(self, blocks):
        pass

    def prepare(self, rows):
        return rows

    def encode(self, rows):
        n = rows.stop - rows.start
        x = np.repeat(np.arange(rows.start, rows.stop, dtype=np.float32)[:, None], 768, axis=1) / 1000
        return x.astype(np.float16), np.ones(n, dtype=np.uint8), []

    def close(self):
        pass


def test_overlapped_writes_store_what_writes_in_the_loop_store(tmp_path):
    """run_shard commits block i in a writer thread while block i+1 encodes: the store is the one
    the in-loop writes give, and the report counts every block."""
    from cache.blocks import parse_shard
    from cache.synthetic import planted_store
    from extract.jobs import run_shard
    stores = {}
    for overlap in (False, True):
        url = str(tmp_path / f"s{overlap}.zarr")
        planted_store(url, influencers=20, posts=10, block=16, write_features=False)
        r = run_shard(open_store(url, "r+"), parse_shard("0/1"), _Planted(), quiet=True, overlap_writes=overlap)
        assert r.blocks_done == 13 and r.rows == 200 and r.write_s > 0 and r.first_block_rows == 16
        stores[overlap] = open_store(url)
    np.testing.assert_array_equal(stores[True]["features/text"][:], stores[False]["features/text"][:])
    assert stores[True]["features/text_done"][:].all()
    assert stores[True]["features/text"][199, 0] == np.float16(0.199)


def test_the_steady_rate_leaves_out_start_up_and_closing_the_workers(tmp_path):
    """A job's rate after its first block is the rate of a long shard: the first block's encoding
    (start-up, the pipeline's fill) and the closing of its worker processes (close(), 0.7-1 s for
    8-16 processes on an H200 node) are outside it, and close's time is reported apart."""
    import time

    from cache.blocks import parse_shard
    from cache.synthetic import planted_store
    from extract.jobs import run_shard

    class SlowStartAndClose(_Planted):
        def encode(self, rows):
            if rows.start == 0:
                time.sleep(0.4)                  # the first block: workers starting
            return super().encode(rows)

        def close(self):
            time.sleep(0.6)                      # worker processes ending

    url = str(tmp_path / "s.zarr")
    planted_store(url, influencers=20, posts=10, block=16, write_features=False)
    r = run_shard(open_store(url, "r+"), parse_shard("0/1"), SlowStartAndClose(), quiet=True)
    assert r.close_s >= 0.6 and r.first_block_s >= 0.4 and r.first_block_rows == 16
    assert r.seconds >= r.first_block_s + r.close_s
    assert r.steady_per_s == pytest.approx((r.rows - 16) / (r.seconds - r.close_s - r.first_block_s))


def test_a_failed_write_stops_the_job_and_keeps_the_blocks_before_it(tmp_path, monkeypatch):
    """A commit that fails in the writer thread (a full disk, a lost bucket) stops the job with that
    error; every block committed before it stays done, and a rerun writes only the rest."""
    import extract.jobs as jobs
    from cache.blocks import parse_shard
    from cache.synthetic import planted_store
    url = str(tmp_path / "s.zarr")
    planted_store(url, influencers=8, posts=8, block=16, write_features=False)
    plain = jobs.commit_block

    def failing(store, modality, b, features, status):
        if b == 2:
            raise OSError("No space left on device")
        plain(store, modality, b, features, status)
    monkeypatch.setattr(jobs, "commit_block", failing)
    with pytest.raises(OSError, match="No space left"):
        jobs.run_shard(open_store(url, "r+"), parse_shard("0/1"), _Planted(), quiet=True)
    assert open_store(url)["features/text_done"][:].tolist() == [True, True, False, False]
    monkeypatch.setattr(jobs, "commit_block", plain)
    r = jobs.run_shard(open_store(url, "r+"), parse_shard("0/1"), _Planted(), quiet=True)
    assert (r.blocks_done, r.blocks_skipped) == (2, 2) and open_store(url)["features/text_done"][:].all()
