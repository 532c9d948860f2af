"""Hostile and real-world input (issue: never delete, crash, hang or read outside the dataset;
never leave mixed labels). Each test fails on the code before the fixes."""
import json
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.cli import app as cache_app
from cache.inspect import info, verify
from cache.labels import LabelError, apply_labels
from cache.store import StoreError, create_store, open_store
from extract import release
from extract.cli import app as extract_app
from extract.index import run_index
from extract.target import prepare_target
from tests.hostile import USERS, info_json, post_ids, posts_by_user, write_dataset


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_dataset(str(root))
    return root


def _index(root, store, **kw):
    return run_index(str(root), str(store), block=256, workers=1, quiet=True, **kw)


def _problems(store) -> dict:
    return info(open_store(str(store)))["problems"]


def _cli(*args):
    return CliRunner().invoke(extract_app, [str(a) for a in args])


# -- data loss -----------------------------------------------------------------------------------
def test_index_never_deletes_a_folder_that_is_not_a_store(data, tmp_path):
    target = tmp_path / "V"
    target.mkdir()
    (target / "precious.txt").write_text("x")
    for extra in ([], ["--overwrite"]):
        r = _cli("index", data, target, *extra)
        assert r.exit_code == 2 and "not an Influencer Profiler store" in r.output, r.output
        assert (target / "precious.txt").read_text() == "x"


def test_index_never_writes_over_the_dataset_or_a_folder_containing_it(data, tmp_path):
    before = sorted(os.listdir(data))
    for target in (data, tmp_path, data / "."):
        r = _cli("index", data, target, "--overwrite")
        assert r.exit_code == 2 and "dataset root" in r.output, r.output
    assert sorted(os.listdir(data)) == before and (data / release.INFLUENCERS_FILE).exists()


def test_foreign_zarr_group_and_own_store_need_overwrite(data, tmp_path):
    import zarr
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(str(foreign), mode="w").attrs["mine"] = 1
    r = _cli("index", data, foreign, "--overwrite")
    assert r.exit_code == 2 and "not an Influencer Profiler store" in r.output
    assert zarr.open_group(str(foreign), mode="r").attrs["mine"] == 1
    own = tmp_path / "own.zarr"
    _index(data, own)
    r = _cli("index", data, own)
    assert r.exit_code == 2 and "pass --overwrite" in r.output
    assert _cli("index", data, own, "--overwrite").exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli("index", data, empty).exit_code == 0


def test_a_second_index_on_the_same_store_refuses_while_the_first_runs(data, tmp_path):
    store = tmp_path / "s.zarr"
    lock = prepare_target(str(data), str(store), False)     # as a running `extract index` holds it
    try:
        with pytest.raises(StoreError, match="another `extract index` is writing"):
            _index(data, store, overwrite=True)
    finally:
        os.close(lock)
    _index(data, store, overwrite=True)


def test_after_a_killed_index_commands_say_to_rerun_it(data, tmp_path):
    store = tmp_path / "s.zarr"
    create_store(str(store), str(data), 256)          # what a killed index leaves: complete=false, no tables
    for app, args in ((cache_app, ["info", store]), (cache_app, ["labels", store, "--influencers", "x.csv"])):
        r = CliRunner().invoke(app, [str(a) for a in args])
        assert r.exit_code == 2 and "index did not finish" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(cache_app, ["verify", str(store)])
    assert r.exit_code == 1 and "index did not finish" in r.output


def test_corrupted_store_metadata_is_one_line_naming_the_store(data, tmp_path):
    store = tmp_path / "s.zarr"
    _index(data, store)
    (store / "zarr.json").write_text("{not json")
    r = CliRunner().invoke(cache_app, ["info", str(store)])
    assert r.exit_code == 2 and str(store) in r.output and len(r.output.strip().splitlines()) == 1, r.output


# -- reading outside the dataset -----------------------------------------------------------------
def test_mapping_names_cannot_reach_outside_the_dataset(data, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret-42.info").write_text(json.dumps(info_json("42", "SECRET", 1_600_000_000)))
    (outside / "secret-42.jpg").write_bytes(b"\xff\xd8secret")
    with open(data / release.MAPPING_FILE, "a") as f:
        f.write("../../../outside/secret\t42.info\t['42.jpg']\n")
        f.write("alice.cooks\t../../outside/secret-42.info\t['1000.jpg']\n")
        f.write("alice.cooks\t1001.info\t['../../outside/secret-42.jpg']\n")
    store = tmp_path / "s.zarr"
    _index(data, store)
    s = open_store(str(store))
    assert "SECRET" not in " ".join(str(c) for c in s["posts/caption"][:])
    assert not any(".." in str(p) for p in s["posts/image"][:])
    assert _problems(store)["mapping_row_unsafe"] == 3


def test_images_outside_the_dataset_are_never_read(data, tmp_path):
    from cache.schema import Status
    from extract.images import Batch, BatchDecoder
    (tmp_path / "secret.jpg").write_bytes(b"\xff\xd8secret\xff\xd9")
    for raw_jpeg in (False, True):
        dec = BatchDecoder("(unused)", str(data), [Batch(0, 0, 2)], 256, resize=342, crop=299, exact=False, raw_jpeg=raw_jpeg)
        dec._paths = (0, np.array(["../secret.jpg", f"{release.IMAGE_DIR}/missing.jpg"], dtype=object))
        _, pixels, rows, status, raw, errors = dec[0]
        assert status[0] == Status.UNREADABLE and "outside the dataset" in errors[0][2] and not raw
        assert len(pixels) == len(rows) == 0                # nothing decoded, nothing sent to the model
        assert status[1] == Status.NO_INPUT


def test_links_inside_image_to_files_outside_are_never_read_but_a_linked_image_folder_is(data, tmp_path):
    from cache.schema import Status
    from extract.images import Batch, BatchDecoder
    from PIL import Image
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "private.jpg")
    os.symlink(tmp_path / "private.jpg", data / release.IMAGE_DIR / "link.jpg")
    other_disk = tmp_path / "other-disk"
    shutil.move(str(data / release.IMAGE_DIR), other_disk)
    os.symlink(other_disk, data / release.IMAGE_DIR)               # image/ kept on another disk
    Image.new("RGB", (40, 40), (10, 200, 10)).save(other_disk / "real.jpg")
    dec = BatchDecoder("(unused)", str(data), [Batch(0, 0, 2)], 256, resize=80, crop=75, exact=False, raw_jpeg=False)
    dec._paths = (0, np.array([f"{release.IMAGE_DIR}/link.jpg", f"{release.IMAGE_DIR}/real.jpg"], dtype=object))
    _, pixels, rows, status, raw, errors = dec[0]
    assert status[0] == Status.UNREADABLE and "path_outside_dataset" in errors[0][2]
    assert status[1] == Status.OK and rows.tolist() == [1]


# -- a post id that disagrees with its file name -----------------------------------------------
def test_info_id_disagreeing_with_its_file_name_keeps_the_file_name(data, tmp_path):
    a, b = post_ids(0)[:2]
    path = data / release.INFO_DIR / f"{USERS[0][0]}-{b}.info"
    node = json.loads(path.read_text())
    node["id"] = a                                     # claims to be another post
    path.write_text(json.dumps(node))
    store = tmp_path / "s.zarr"
    _index(data, store)
    ids = [str(i) for i in open_store(str(store))["posts/id"][:]]
    assert len(ids) == len(set(ids)) and b in ids
    assert _problems(store)["info_id_mismatch"] == 1


# -- crashes and hangs -----------------------------------------------------------------------------
def test_lone_surrogates_and_undecodable_file_names_are_recorded(data, tmp_path):
    user, pid = USERS[0][0], post_ids(0)[0]
    path = data / release.INFO_DIR / f"{user}-{pid}.info"
    path.write_text(path.read_text().replace("food post 0", "food \\ud83d post 0"))
    os.close(os.open(os.path.join(os.fsencode(data / release.INFO_DIR), b"bad\xff-77.info"), os.O_CREAT | os.O_WRONLY))
    store = tmp_path / "s.zarr"
    _index(data, store)
    caps = [str(c) for c in open_store(str(store))["posts/caption"][:]]
    assert "food \ufffd post 0 #food" in caps
    p = _problems(store)
    assert p["info_field_invalid"] == 1 and p["info_name_unusable"] == 1


@pytest.mark.parametrize("field,value,kind", [
    ("taken_at_timestamp", "1e400", "info_malformed"), ("taken_at_timestamp", str(10 ** 30), "info_malformed"),
    ("likes", str(10 ** 20), "info_field_invalid"), ("likes", "true", "info_field_invalid"),
    ("likes", "1e400", "info_field_invalid"), ("likes", "2.5", "info_field_invalid")])
def test_numbers_out_of_range_are_recorded_and_stored_as_missing(data, tmp_path, field, value, kind):
    user, pid = USERS[1][0], post_ids(1)[0]
    path = data / release.INFO_DIR / f"{user}-{pid}.info"
    text = path.read_text()
    if field == "likes":
        text = text.replace('"edge_media_preview_like": {"count": 10}', f'"edge_media_preview_like": {{"count": {value}}}')
    else:
        text = text.replace(f'"{field}": {1_600_000_000 + 1000}', f'"{field}": {value}')
    path.write_text(text)
    store = tmp_path / "s.zarr"
    _index(data, store)
    assert _problems(store)[kind] == 1
    if field == "likes":
        posts = dict((p[0], p) for p in posts_by_user(open_store(str(store)))[user])
        assert posts[pid][4] == -1


def test_deep_nesting_and_hostile_list_literals_are_recorded(data, tmp_path):
    user, pids = USERS[2][0], post_ids(2)
    (data / release.INFO_DIR / f"{user}-{pids[0]}.info").write_text("[" * 100_000)
    (data / release.INFO_DIR / f"{user}-{pids[1]}.info").write_text('{"a":' * 1000 + "1" + "}" * 1000)
    with open(data / release.MAPPING_FILE, "a") as f:
        f.write(f"{user}\t9.info\t[{'-' * 100_000}1]\n")
        f.write(f"{user}\t8.info\t[{'1+' * 50_000}1]\n")
        f.write(f"{user}\t7.info\t{'[' * 10_000}\n")
    store = tmp_path / "s.zarr"
    _index(data, store)
    p = _problems(store)
    assert p["info_malformed"] == 2 and p["mapping_row_malformed"] == 3


def test_fifos_never_hang_index_or_image_decoding(data, tmp_path):
    from cache.schema import Status
    from extract.imaging import ImageError, decode
    user, pid = USERS[0][0], post_ids(0)[2]
    info = data / release.INFO_DIR / f"{user}-{pid}.info"
    image = data / release.IMAGE_DIR / f"{user}-{pid}.jpg"
    info.unlink()
    os.mkfifo(info)
    image.unlink()
    os.mkfifo(image)
    store = tmp_path / "s.zarr"
    _index(data, store)
    assert _problems(store)["info_unreadable"] == 1
    with pytest.raises(ImageError) as e:
        decode(str(image), 342, 299)
    assert e.value.status == Status.UNREADABLE and "regular file" in e.value.reason


def test_latin1_influencers_file_and_overlong_mapping_lines_are_recorded(data, tmp_path):
    with open(data / release.INFLUENCERS_FILE, "ab") as f:
        f.write("jos\u00e9.caf\u00e9\tfood\t1\t1\t1\n".encode("latin-1"))
    with open(data / release.MAPPING_FILE, "a") as f:
        f.write("alice.cooks\t5.info\t['" + "x" * (release.MAX_LINE + 10) + "']\n")
        f.write(f"{USERS[1][0]}\t{post_ids(1)[0]}.info\t['{post_ids(1)[0]}.jpg']\n")   # a row after it still reads
    store = tmp_path / "s.zarr"
    _index(data, store)
    p = _problems(store)
    assert p["influencer_row_not_utf8"] == 1 and p["mapping_row_malformed"] == 1 and p["mapping_duplicate"] == 1


# -- labels ------------------------------------------------------------------------------------------
@pytest.fixture
def labelled(data, tmp_path):
    store = tmp_path / "s.zarr"
    _index(data, store)
    csv = tmp_path / "influencers.csv"
    csv.write_text("username,category\n" + "".join(f"{u},{c}\n" for u, c in USERS))
    return store, csv


def test_an_interrupted_label_write_is_caught_by_verify_and_readers(labelled, tmp_path, monkeypatch):
    store, csv = labelled
    apply_labels(open_store(str(store), "r+"), str(csv), None)
    assert verify(open_store(str(store))) == []
    csv2 = tmp_path / "b.csv"
    csv2.write_text("username,category\n" + "".join(f"{u},beauty\n" for u, _ in USERS))
    import cache.labels as labels_mod
    real = labels_mod.assign_splits
    s = open_store(str(store), "r+")
    # the process dies after the label array is written and before the split array is
    original_setitem = type(s["influencers/split"]).__setitem__

    def die(self, key, value):
        if self.path.endswith("influencers/split"):
            raise KeyboardInterrupt("killed")
        return original_setitem(self, key, value)
    monkeypatch.setattr(type(s["influencers/split"]), "__setitem__", die)
    with pytest.raises(KeyboardInterrupt):
        apply_labels(s, str(csv2), None)
    monkeypatch.undo()
    assert real is labels_mod.assign_splits
    errors = verify(open_store(str(store)))
    assert any("labels are half-written" in e for e in errors), errors
    from heads.data import load_labelled
    with pytest.raises(StoreError, match="half-written"):
        load_labelled(open_store(str(store)), "both")
    apply_labels(open_store(str(store), "r+"), str(csv2), None)     # rerunning repairs it
    assert verify(open_store(str(store))) == []


def test_labels_changed_behind_the_store_are_caught(labelled):
    store, csv = labelled
    apply_labels(open_store(str(store), "r+"), str(csv), None)
    s = open_store(str(store), "r+")
    s["influencers/label"][0] = (s["influencers/label"][0] + 1) % 8
    assert any("differ from what `cache labels` wrote" in e for e in verify(open_store(str(store))))


def test_label_files_that_replace_wipe_or_are_not_utf8_say_so(labelled, tmp_path):
    store, csv = labelled
    r = CliRunner().invoke(cache_app, ["labels", str(store), "--influencers", str(csv)])
    assert r.exit_code == 0 and "replaced" not in r.output
    r = CliRunner().invoke(cache_app, ["labels", str(store), "--influencers", str(csv)])
    assert r.exit_code == 0 and "replaced the previous labels (3 labelled" in r.output
    empty = tmp_path / "empty.csv"
    empty.write_text("username,category\n")
    r = CliRunner().invoke(cache_app, ["labels", str(store), "--influencers", str(empty)])
    assert r.exit_code == 2 and "no label rows" in r.output and str(empty) in r.output
    assert (open_store(str(store))["influencers/label"][:] >= 0).sum() == 3
    latin = tmp_path / "latin.csv"
    latin.write_bytes("username,category\nalice.cooks,food\njos\u00e9,food\n".encode("latin-1"))
    with pytest.raises(LabelError, match=r"latin.csv: line 3 is not UTF-8"):
        apply_labels(open_store(str(store), "r+"), str(latin), None)


def test_extract_text_on_a_regular_file_names_it(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    r = _cli("text", f, "--shard", "0/1")
    assert r.exit_code == 2 and str(f) in r.output and "Traceback" not in r.output, r.output


def test_a_gpu_torch_cannot_use_is_said_not_silently_left(monkeypatch, capsys, store_path, tmp_path):
    """Extraction is GPU work: on a GPU node where torch cannot start CUDA (a driver older than torch's
    CUDA, a CPU-only torch wheel), `--device auto` used to fall back to the CPU silently, 100x slower
    over 10 M posts; it now says why in one warning line. `--device cuda` there, or a GPU that is busy
    (exclusive mode), is one error line naming the cause, not a traceback at the first copy.
    CUDA_VISIBLE_DEVICES='' hides the GPUs on purpose: no warning."""
    import glob

    import torch

    from extract.cli import app as extract_app
    from runtime.device import pick_device
    from runtime.errors import UserError
    real_glob = glob.glob
    monkeypatch.setattr(glob, "glob", lambda p: ["/dev/nvidia0"] if p.startswith("/dev/nvidia") else real_glob(p))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pick_device("auto", slow_on_cpu=True).type == "cpu"
    err = capsys.readouterr().err
    assert "WARNING: this machine has an NVIDIA GPU but torch (built for CUDA" in err and "--device cpu" in err
    assert len(err.strip().splitlines()) == 1
    assert pick_device("auto").type == "cpu" and not capsys.readouterr().err       # heads: light, no warning
    with pytest.raises(UserError, match=r"torch sees no GPU \(this machine has an NVIDIA GPU"):
        pick_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UserError, match="is a CPU-only build"):
        pick_device("cuda:0")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    pick_device("auto", slow_on_cpu=True)
    assert not capsys.readouterr().err
    # a GPU torch sees but cannot start: one line through the CLI, before any work
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def busy():
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable\nCUDA kernel errors …")
    monkeypatch.setattr(torch.cuda, "init", busy)
    s = str(tmp_path / "s.zarr")
    import shutil
    shutil.copytree(store_path, s)
    r = CliRunner().invoke(extract_app, ["text", s, "--shard", "0/1", "--model", "random", "--device", "cuda"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert [x for x in r.output.splitlines() if x.startswith("error")] == [
        "error: cannot use the GPU cuda: CUDA error: all CUDA-capable devices are busy or unavailable"], r.output
