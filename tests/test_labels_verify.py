import numpy as np
import pytest
from typer.testing import CliRunner

from cache import schema
from cache.cli import app as cache_app
from cache.inspect import verify
from cache.labels import LabelError, apply_labels, assign_splits
from cache.store import open_store


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_labels_are_stored_with_stratified_splits(store_path):
    s = open_store(store_path)
    label, split = s["influencers/label"][:], s["influencers/split"][:]
    assert (label >= 0).sum() == 24
    for c in range(8):
        got = set(split[label == c].tolist())
        assert got == {1, 2, 3}, (c, got)
    plabel, psplit = s["posts/label"][:], s["posts/split"][:]
    assert ((plabel == -1) == (psplit == 0)).all() and (plabel >= 0).sum() > 100


def test_splits_are_seeded_and_keep_given_ones():
    labels = np.repeat(np.arange(4), 20)
    given = np.zeros(80, np.int8)
    given[:5] = schema.SPLITS["test"]
    a, b, c = (assign_splits(labels, given, seed) for seed in (1, 1, 2))
    assert (a == b).all() and not (a == c).all()
    assert (a[:5] == schema.SPLITS["test"]).all()
    for k in range(4):
        counts = np.bincount(a[labels == k], minlength=4)
        assert counts[1] >= 9 and counts[2] >= 3 and counts[3] >= 3


@pytest.mark.parametrize("body, message", [
    ("username,category\nnobody.here,food\n", "unknown id: line 2: 'nobody.here'"),
    ("username,category\n{u},cooking\n", "unknown category: line 2: 'cooking'"),
    ("username,category\n{u},food\n{u},pet\n", "conflicting duplicate rows: line 3"),
    ("username,category,split\n{u},food,holdout\n", "unknown split"),
    ("name,label\n{u},food\n", "header must be"),
])
def test_bad_influencer_csv_is_refused(fresh_store, tmp_path, body, message):
    s = open_store(fresh_store, "r+")
    before = s["influencers/label"][:]
    user = str(s["influencers/username"][0])
    path = _write(tmp_path / "i.csv", body.format(u=user))
    with pytest.raises(LabelError, match=message.replace("(", r"\(")) as e:
        apply_labels(s, path, None)
    assert path in str(e.value)
    assert (s["influencers/label"][:] == before).all(), "a refused file changes nothing"


def test_bad_post_csv_names_the_row(fresh_store, tmp_path):
    s = open_store(fresh_store, "r+")
    pid = str(s["posts/id"][0])
    ok = _write(tmp_path / "ok.csv", f"post_id,category\n{pid},food\n{pid},food\n")
    apply_labels(s, None, ok)          # identical duplicates are fine
    bad = _write(tmp_path / "p.csv", f"post_id,category\n{pid},food\n999,food\n")
    with pytest.raises(LabelError, match="line 3: '999'"):
        apply_labels(s, None, bad)


def test_cli_labels_error_is_one_line(fresh_store, tmp_path):
    path = _write(tmp_path / "i.csv", "username,category\nnobody,food\n")
    r = CliRunner().invoke(cache_app, ["labels", fresh_store, "--influencers", path])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and r.output.startswith("error:")


def test_verify_catches_a_half_written_block(fresh_store):
    s = open_store(fresh_store, "r+")
    assert verify(s) == []
    s["features/image_done"][1] = True       # flag set but features never written
    errors = verify(s)
    assert any("image block 1" in e for e in errors)
    r = CliRunner().invoke(cache_app, ["verify", fresh_store])
    assert r.exit_code == 1 and "FAIL" in r.output


def test_info_reports_progress_and_problems(store_path):
    r = CliRunner().invoke(cache_app, ["info", store_path])
    assert r.exit_code == 0
    assert "0/" in r.output and "problems" in r.output and "info_malformed" in r.output


def test_a_bug_keeps_its_traceback_while_user_errors_are_one_line(store_path, monkeypatch, tmp_path):
    """Only the project's own errors (and OS errors about a path or the disk) become `error: …`, exit 2;
    a ValueError from inside a library is a bug and must surface as one."""
    import cache.cli
    r = CliRunner().invoke(cache_app, ["info", str(tmp_path / "nowhere.zarr")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1

    def broken(*a, **k):
        raise ValueError("an internal inconsistency")
    monkeypatch.setattr(cache.cli, "store_info", broken)
    r = CliRunner().invoke(cache_app, ["info", store_path])
    assert r.exit_code == 1 and isinstance(r.exception, ValueError) and "error:" not in r.output
