import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402

from cache.labels import apply_labels  # noqa: E402
from cache.store import open_store  # noqa: E402
from extract.index import run_index  # noqa: E402
from extract.sample import make_sample  # noqa: E402

BLOCK = 256   # small blocks so a sample store has several


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
