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
    "image": ("encoder_file", "extracted", lambda enc: ["images", "--encoder", enc[0], "--workers", "1",
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


def test_sigkill_then_rerun_redoes_only_unfinished_blocks(job, sample, block_delay, tmp_path):
    modality, cmd, ref = job
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    block_delay(0.5)
    kill_after_blocks(cmd(path, "0/1"), path, modality)
    block_delay(0)
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


@pytest.mark.parametrize("shards", [("0/2", "1/2"), ("0/1", "0/1")], ids=["two-shards", "one-shard-twice"])
def test_two_jobs_at_once(job, sample, shards, tmp_path):
    modality, cmd, ref = job
    path = build_store(sample, str(tmp_path / "s.zarr"), block=64)
    procs = [subprocess.Popen(cmd(path, sh), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for sh in shards]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    _same_as_reference(path, modality, ref)
