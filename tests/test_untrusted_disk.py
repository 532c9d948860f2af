"""#30: a full disk under every writer, for real (a tiny tmpfs): one `error:` line naming the path, no
crash, nothing truncated under a final name, the inputs untouched. Needs root to mount (skipped otherwise)."""
import os
import shutil
import subprocess
import sys
import uuid

import pytest
from typer.testing import CliRunner

from cache.cli import app as cache_app
from cache.exchange import export_store
from cache.store import open_store
from conftest import build_demo_run
from heads.cli import app as heads_app

pytestmark = pytest.mark.slow
FILLER = "filler"


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if r.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    with open(mount / FILLER, "wb") as f:          # leave a few KB free: every writer meets a full disk
        f.write(b"\0" * (shutil.disk_usage(mount).free - 12 * 1024))
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return build_demo_run(tmp_path_factory.mktemp("disk"))


def _final_names_whole(folder) -> list[str]:
    """Files under their final names: none may be a leftover half (a .partial is removed or never renamed)."""
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
            if not f.endswith(".partial") and f != FILLER]


def _one_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in output and "Segmentation" not in output, output[-2000:]
    assert lines and lines[-1].startswith("error:"), output[-2000:]
    return lines[-1]


def test_heads_predict_report_and_fit_on_a_full_disk(demo, tiny_disk, tmp_path):
    store = str(tmp_path / "s.zarr")
    shutil.copytree(demo["store"], store)
    before = open_store(store)["predictions/influencer_label"][:]
    r = CliRunner().invoke(heads_app, ["predict", demo["run"], store, "--out", str(tiny_disk / "p")])
    assert r.exit_code == 2 and "disk is full" in _one_line(r.output)
    s = open_store(store)
    assert s.group["predictions"].attrs["complete"] and (s["predictions/influencer_label"][:] == before).all()
    assert not [p for p in _final_names_whole(tiny_disk) if p.endswith(".csv")], os.listdir(tiny_disk)
    r = CliRunner().invoke(heads_app, ["report", demo["run"], store, "--out", str(tiny_disk / "r"), "--cards", "3"])
    assert r.exit_code == 2 and str(tiny_disk) in _one_line(r.output)
    r = CliRunner().invoke(heads_app, ["fit", store, "--out", str(tiny_disk / "run"), "--max-steps", "30",
                                       "--restarts", "1", "--instance-loss", "off", "--normalize", "feature"])
    assert r.exit_code == 2 and str(tiny_disk) in _one_line(r.output)
    assert not os.path.exists(tiny_disk / "run")


def test_cache_export_and_import_on_a_full_disk(demo, tiny_disk, tmp_path):
    exe = [sys.executable, "-c", "import sys; from cache.cli import app; sys.argv[0] = 'cache'; app()"]
    p = subprocess.run(exe + ["export", demo["store"], str(tiny_disk / "x.h5")], capture_output=True, text=True)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])          # not 139: h5py never reaches the full disk
    assert "disk is full" in _one_line(p.stderr)
    assert os.listdir(tiny_disk) == [FILLER]
    h5 = str(tmp_path / "x.h5")
    export_store(demo["store"], h5)
    r = CliRunner().invoke(cache_app, ["import", h5, str(tiny_disk / "i.zarr")])
    assert r.exit_code == 2 and "disk is full" in _one_line(r.output)
    assert not os.path.exists(tiny_disk / "i.zarr")
