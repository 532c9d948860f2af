import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from cache.labels import apply_labels  # noqa: E402
from cache.store import open_store  # noqa: E402
from extract.index import run_index  # noqa: E402
from extract.sample import make_sample  # noqa: E402

BLOCK = 256   # small blocks so a sample store has several


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test leaves os.environ as it found it. dask's Nanny sets OMP_NUM_THREADS=1 (and more) in
    its parent's environment when it starts a worker process and never restores it; every later
    subprocess then ran torch on one thread, and one thread's image features differ from two
    threads' in a few float16 roundings (62 of 530 K values on the sample), which failed the crash
    drill's comparison with a reference computed before (tests/test_shard_jobs.py)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample") / "data"
    make_sample(str(root), influencers=24, posts=24, seed=3, image_size=96)
    return str(root)


def build_store(sample: str, path: str, **kw) -> str:
    run_index(sample, path, block=kw.pop("block", BLOCK), workers=kw.pop("workers", 1), quiet=True, **kw)
    apply_labels(open_store(path, "r+"), os.path.join(sample, "labels/influencers.csv"),
                 os.path.join(sample, "labels/posts.csv"), seed=0)
    return path


@pytest.fixture(scope="session")
def store_path(sample, tmp_path_factory):
    """An indexed, labelled store shared read-only by tests; copy it to modify."""
    return build_store(sample, str(tmp_path_factory.mktemp("store") / "s.zarr"))


@pytest.fixture
def fresh_store(sample, tmp_path):
    """An indexed, labelled store of one's own."""
    return build_store(sample, str(tmp_path / "s.zarr"))


@pytest.fixture(scope="session")
def tiny_bert(sample, tmp_path_factory):
    """A 2-layer BERT (768 wide, as the store's text features are) with a WordPiece vocabulary of
    the sample's captions, saved locally."""
    import json

    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizer
    captions = []
    for name in sorted(os.listdir(os.path.join(sample, "info"))):
        try:
            node = json.load(open(os.path.join(sample, "info", name), encoding="utf-8"))
            captions += [e["node"]["text"] for e in node["edge_media_to_caption"]["edges"]]
        except ValueError:
            pass
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(captions, vocab_size=1500, min_frequency=1, show_progress=False)
    tokenizer = BertTokenizer(vocab=wp.get_vocab())
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=768, num_hidden_layers=2,
                                 num_attention_heads=12, intermediate_size=256), add_pooling_layer=False)
    path = str(tmp_path_factory.mktemp("bert") / "tiny-bert")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def encoder_file(store_path, tmp_path_factory):
    """The sample's encoder: random Inception-v3 (batch norm calibrated), top two blocks trained at 107 px."""
    from extract.finetune import FinetuneConfig, finetune
    path = str(tmp_path_factory.mktemp("enc") / "encoder.pt")
    metrics = finetune(store_path, path, FinetuneConfig(weights="random", epochs=5, image_size=107, batch_size=16,
                                                        workers=0, seed=0), log=lambda *a, **k: None, quiet=True)
    return path, metrics


def kill_after_blocks(cmd: list[str], path: str, modality: str, blocks: int = 2) -> None:
    """Start a shard job and SIGKILL it once `blocks` of its blocks are flagged done."""
    import signal
    import subprocess
    import time
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and open_store(path)[f"features/{modality}_done"][:].sum() < blocks:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()


def shard_files(path: str, modality: str) -> dict[str, int]:
    """Modification time of each block's feature shard file: unchanged means not rewritten."""
    base = os.path.join(path, "features", modality, "c")
    return {b: os.stat(os.path.join(base, b, "0")).st_mtime_ns for b in os.listdir(base)}


@pytest.fixture(scope="session")
def fp32_store(sample, tiny_bert, tmp_path_factory):
    """The sample's text features, fp32 on the CPU: the reference the text jobs must reproduce."""
    from extract.text import run_text
    path = build_store(sample, str(tmp_path_factory.mktemp("t") / "s.zarr"), block=64)
    run_text(path, "0/1", model=tiny_bert, precision="fp32", device="cpu", batch_tokens=512, quiet=True)
    return path


@pytest.fixture(scope="session")
def quick_encoder(store_path, tmp_path_factory):
    """An encoder for the extraction mechanics (not for learning): random Inception-v3, one epoch at
    107 px, through `extract finetune-images` itself."""
    from typer.testing import CliRunner
    from extract.cli import app as extract_app
    path = str(tmp_path_factory.mktemp("quick-enc") / "encoder.pt")
    r = CliRunner().invoke(extract_app, ["finetune-images", store_path, "--out", path, "--weights", "random",
                                         "--epochs", "1", "--image-size", "107", "--batch-size", "32", "--workers", "0",
                                         "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return path, None


@pytest.fixture(scope="session")
def extracted(sample, quick_encoder, tmp_path_factory):
    """The sample's image features through the CLI (2 decoding workers), with the CLI's output."""
    from typer.testing import CliRunner
    from extract.cli import app as extract_app
    path = build_store(sample, str(tmp_path_factory.mktemp("i") / "s.zarr"))
    r = CliRunner().invoke(extract_app, ["images", path, "--shard", "0/1", "--encoder", quick_encoder[0],
                                         "--workers", "2", "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    return path, r.output


@pytest.fixture
def block_delay():
    """Crash drills: `block_delay(seconds, command)` is the shard-job command run so that it waits this
    long after each committed block (tests/delayed.py injects extract.jobs.after_block), so that it
    can be killed mid-run. COMMAND is `python -m MODULE ...` or a console script (`.../extract ...`)."""
    launcher = os.path.join(os.path.dirname(__file__), "delayed.py")
    scripts = {"extract": "extract.cli_main"}

    def delayed(seconds: float, cmd: list[str]) -> list[str]:
        module, rest = (cmd[2], cmd[3:]) if cmd[1:2] == ["-m"] else (scripts[os.path.basename(cmd[0])], cmd[1:])
        return [sys.executable, launcher, str(seconds), module, *rest]
    return delayed


def build_demo_run(d) -> dict:
    """The sample dataset's store with planted features, fitted, evaluated and predicted, with real images
    for the report's cards (in folder `d`)."""
    import numpy as np
    from typer.testing import CliRunner

    from cache.blocks import claim_fingerprint, commit_block
    from cache.synthetic import planted_store
    from heads.cli import app as heads_app
    data = str(d / "data")
    make_sample(data, influencers=24, posts=10, seed=7, image_size=64)
    path = str(d / "s.zarr")
    run_index(data, path, block=128, workers=1, quiet=True)
    # planted features on the real store's shape: copy a planted store's feature blocks in
    s = open_store(path, "r+")
    apply_labels(s, os.path.join(data, "labels/influencers.csv"), os.path.join(data, "labels/posts.csv"))
    counts = [int(c) for c in (s.offsets()[1:] - s.offsets()[:-1])]
    planted = str(d / "p.zarr")
    planted_store(planted, influencers=len(counts), post_counts=np.array(counts), seed=1, block=128, noise=1.0)
    p = open_store(planted)
    for m in ("image", "text"):
        claim_fingerprint(s, m, {"kind": m, "model": "planted", "seed": 1})
        for b in range(s.n_blocks):
            rows = s.block_rows(b)
            commit_block(s, m, b, p[f"features/{m}"][rows], p[f"features/{m}_status"][rows])
    run = str(d / "run")
    r = CliRunner().invoke(heads_app, ["fit", path, "--out", run, "--max-steps", "150", "--attention-warmup", "50",
                                       "--normalize", "feature", "--precision", "fp32", "--restarts", "1", "--instance-loss", "off"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(heads_app, ["eval", run, "--posts", "2,5"])
    assert r.exit_code == 0, r.output
    pred = str(d / "pred")
    r = CliRunner().invoke(heads_app, ["predict", run, path, "--out", pred])
    assert r.exit_code == 0, r.output
    return {"data": data, "store": path, "run": run, "pred": pred, "dir": d}
