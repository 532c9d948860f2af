"""#14: labels from the release's own categories, weak fine-tuning labels, agreement with the release."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache import schema
from cache.cli import app as cache_app
from cache.inspect import format_info, info, verify
from cache.labels import LabelError, ReleaseDraw, apply_labels
from cache.store import open_store
from cache.synthetic import planted_store
from extract.cli import app as extract_app
from heads.cli import app as heads_app

OTHER = schema.RELEASE_CATEGORIES.index("other")


def _release_store(path, influencers=400, seed=0, **kw):
    """A planted store whose release column is its truth, with some `other` and uncategorised rows."""
    truth = planted_store(path, influencers=influencers, posts=kw.pop("posts", 4), seed=seed,
                          write_features=kw.pop("write_features", False), **kw)
    s = open_store(path, "r+")
    rc = truth["dominant"].astype(np.int8).copy()
    rc[::25] = OTHER
    rc[1::40] = -1
    s["influencers/release_category"][:] = rc
    # planted_store labels some influencers; start these tests from an unlabelled store
    s["influencers/label"][:] = -1
    s["influencers/split"][:] = 0
    return s, rc


def _state(s):
    return (s["influencers/label"][:].copy(), s["influencers/split"][:].copy(),
            s["influencers/label_source"][:].copy(), json.dumps(dict(s.group.attrs), sort_keys=True, default=str))


def test_release_draw_follows_the_protocol_and_is_seeded(tmp_path):
    s, rc = _release_store(str(tmp_path / "s.zarr"))
    summary = apply_labels(s, None, None, seed=1, release=ReleaseDraw(per_category=20, val_fraction=0.25, test=50))
    label, split, source = s["influencers/label"][:], s["influencers/split"][:], s["influencers/label_source"][:]
    for c in range(8):
        assert (split[label == c] == schema.SPLITS["train"]).sum() >= 15
        assert ((label == c) & (split == schema.SPLITS["val"])).sum() == 5
        assert ((label == c) & np.isin(split, [1, 2])).sum() == 20
    assert (split == schema.SPLITS["test"]).sum() == 50
    drawn = label >= 0
    assert drawn.sum() == 8 * 20 + 50
    assert (label[drawn] == rc[drawn]).all()                     # each label is the release's category
    assert not (drawn & ((rc == OTHER) | (rc == -1))).any()     # `other` and uncategorised never drawn
    assert (source[drawn] == schema.LABEL_SOURCES["release"]).all() and (source[~drawn] == 0).all()
    rec = summary["influencers"]
    assert rec["source"] == "release" and rec["from_release"]["excluded"]["other"] == int((rc == OTHER).sum())
    assert rec["from_release"]["excluded"]["no category"] == int((rc == -1).sum())
    assert s.attrs["labels"]["influencers"]["source"] == "release"
    first = _state(s)[:3]
    apply_labels(s, None, None, seed=1, release=ReleaseDraw(20, 0.25, 50))
    assert all((a == b).all() for a, b in zip(first, _state(s)[:3]))
    apply_labels(s, None, None, seed=2, release=ReleaseDraw(20, 0.25, 50))
    assert not (first[0] == s["influencers/label"][:]).all()
    assert verify(s) == []
    text = format_info(info(s))
    assert "influencers: 210 labelled (train 120, val 40, test 50); from release" in text


def test_a_hand_label_wins_and_disagreements_are_counted(tmp_path):
    s, rc = _release_store(str(tmp_path / "s.zarr"))
    users = s["influencers/username"][:]
    cats = schema.INFLUENCER_CATEGORIES
    j_same = int(np.flatnonzero(rc == 0)[0])
    j_diff = int(np.flatnonzero(rc == 1)[0])
    path = tmp_path / "hand.csv"
    path.write_text(f"username,category\n{users[j_same]},{cats[0]}\n{users[j_diff]},{cats[5]}\n")
    summary = apply_labels(s, str(path), None, seed=0, release=ReleaseDraw(10, 0.2, 20))
    label, source = s["influencers/label"][:], s["influencers/label_source"][:]
    assert label[j_diff] == 5 and label[j_same] == 0
    assert source[j_diff] == source[j_same] == schema.LABEL_SOURCES["hand"]
    assert (source == schema.LABEL_SOURCES["release"]).sum() == 8 * 10 + 20
    d = summary["influencers"]["from_release"]["hand_vs_release"]
    assert d["compared"] == 2 and d["differ"] == 1 and str(users[j_diff]) in d["first"][0]
    assert summary["influencers"]["source"] == "hand+release"
    r = CliRunner().invoke(cache_app, ["labels", s.url, "--influencers", str(path), "--from-release",
                                       "--per-category", "10", "--test", "20"])
    assert r.exit_code == 0, r.output
    assert "1 of 2 hand labels differ from the release's category" in r.output and "hand labels are kept" in r.output


@pytest.mark.parametrize("case", ["too_small", "test_too_large", "unknown_category", "old_store", "bad_code"])
def test_bad_release_input_is_one_line_and_writes_nothing(tmp_path, case):
    s, rc = _release_store(str(tmp_path / "s.zarr"))
    apply_labels(s, None, None, seed=0, release=ReleaseDraw(5, 0.2, 10))
    before = _state(s)
    args = ["--per-category", "5", "--test", "10"]
    if case == "too_small":
        args = ["--per-category", "60"]
        want = "too few influencers for --per-category 60: "
    elif case == "test_too_large":
        args = ["--per-category", "5", "--test", "5000"]
        want = "--test 5000 asks for more influencers than the"
    elif case == "unknown_category":
        s.group.attrs["release_categories"] = schema.INFLUENCER_CATEGORIES + ["gaming"]
        want = "categories the model does not know: 'gaming'"
    elif case == "old_store":
        del s.group["influencers/release_category"]
        want = "no release categories (indexed before they were stored)"
    else:
        bad = rc.copy()
        bad[7] = 42
        s["influencers/release_category"][:] = bad
        want = "holds 1 codes outside 0..8"
    before = _state(s)[:3] + (json.dumps({k: v for k, v in dict(s.group.attrs).items()}, sort_keys=True, default=str),)
    r = CliRunner().invoke(cache_app, ["labels", s.url, "--from-release", *args])
    assert r.exit_code == 2 and want in r.output, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("error: ")
    after = _state(open_store(s.url))
    assert all((a == b).all() for a, b in zip(before[:3], after[:3])) and before[3] == after[3]


def test_too_small_names_every_short_category(tmp_path):
    s, rc = _release_store(str(tmp_path / "s.zarr"), influencers=120)
    with pytest.raises(LabelError) as e:
        apply_labels(s, None, None, release=ReleaseDraw(per_category=14))
    have = np.bincount(rc[(rc >= 0) & (rc < 8)], minlength=8)
    for c in range(8):
        assert (f"{schema.INFLUENCER_CATEGORIES[c]} has {have[c]}" in str(e.value)) == (have[c] < 14)


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    """Release labels (true categories here) -> heads fit -> heads predict, on planted features, no post labels."""
    d = tmp_path_factory.mktemp("rel")
    path = str(d / "s.zarr")
    s, rc = _release_store(path, influencers=240, posts=12, seed=4, write_features=True, noise=2.0,
                           on_topic=0.5, label_posts=0.0)
    r = CliRunner().invoke(cache_app, ["labels", path, "--from-release", "--per-category", "12", "--test", "40"])
    assert r.exit_code == 0, r.output
    run = str(d / "run")
    r = CliRunner().invoke(heads_app, ["fit", path, "--out", run, "--max-steps", "400", "--normalize", "feature",
                                       "--precision", "fp32", "--restarts", "1", "--instance-loss", "off"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(heads_app, ["predict", run, path])
    assert r.exit_code == 0, r.output
    return path, run, rc, r.output


def test_agreement_with_the_release_is_reported_and_high(release_run):
    path, run, rc, output = release_run
    summary = json.load(open(os.path.join(run, "predictions", "summary.json")))
    a = summary["release_agreement"]
    s = open_store(path)
    split, pred = s["influencers/split"][:], s["predictions/influencer_label"][:]
    keep = ~np.isin(split, [1, 2]) & (rc >= 0) & (rc < 8) & (pred >= 0)
    assert a["n"] == keep.sum() and a["n"] > 100
    assert a["accuracy"] == pytest.approx((pred[keep] == rc[keep]).mean())
    assert a["accuracy"] >= 0.9, a["accuracy"]
    assert np.array(a["confusion"]).sum() == a["n"] and set(a["per_category"]) == set(schema.INFLUENCER_CATEGORIES)
    assert "agreement with the release's categories: " in output and f"of {a['n']:,} influencers" in output


def test_without_post_labels_the_post_head_is_untrained_and_said_so(release_run):
    path, run, rc, output = release_run
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["post_head_trained"] is False and config["labels"]["influencers"]["source"] == "release"
    report = open(os.path.join(run, "report.md")).read()
    assert "Not trained: the store has no labelled train posts" in report and "drawn from the release" in report
    with open(os.path.join(run, "predictions", "posts.csv")) as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["category"] == "" for r in rows) and any(r["attention"] for r in rows)
    assert (open_store(path)["predictions/post_label"][:] == -1).all()
    assert "post categories left empty" in output


def test_weak_labels_finetune_on_owners_categories(tmp_path):
    """The release path on a sample dataset: labels from influencers.txt, weak fine-tuning, features,
    fit, predict with the agreement line."""
    from extract.index import run_index
    from extract.sample import make_sample
    from tests.conftest import BLOCK
    sample = str(tmp_path / "data")
    make_sample(sample, influencers=40, posts=8, seed=5, image_size=64)
    path = str(tmp_path / "s.zarr")
    run_index(sample, path, block=BLOCK, workers=1, quiet=True)
    runner = CliRunner()
    r = runner.invoke(cache_app, ["labels", path, "--from-release", "--per-category", "2", "--val-fraction", "0.5",
                                  "--test", "4"])
    assert r.exit_code == 0, r.output
    enc = str(tmp_path / "weak.pt")
    r = runner.invoke(extract_app, ["finetune-images", path, "--out", enc, "--labels", "influencers",
                                    "--posts-per-influencer", "4", "--weights", "random", "--epochs", "1",
                                    "--image-size", "75", "--batch-size", "8", "--workers", "0"])
    assert r.exit_code == 0, r.output
    meta = torch.load(enc, map_location="cpu", weights_only=False)
    assert meta["labels"]["kind"] == "influencers" and meta["labels"]["weak"] is True
    assert "from release" in meta["labels"]["source"] and meta["metrics"]["train_posts"] <= 8 * 4
    r = runner.invoke(extract_app, ["images", path, "--shard", "0/1", "--encoder", enc, "--workers", "0",
                                    "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    run = str(tmp_path / "run")
    r = runner.invoke(heads_app, ["fit", path, "--out", run, "--modality", "image", "--max-steps", "60",
                                  "--attention-warmup", "20", "--normalize", "feature", "--restarts", "1", "--instance-loss", "off"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(heads_app, ["predict", run, path])
    assert r.exit_code == 0, r.output
    assert "agreement with the release's categories: " in r.output
    a = json.load(open(os.path.join(run, "predictions", "summary.json")))["release_agreement"]
    assert a["n"] >= 4 and a["excluded_train_val"] == 16


def test_another_runs_predictions_are_not_replaced_unless_asked(release_run, tmp_path):
    import shutil
    path, run, rc, output = release_run
    other = str(tmp_path / "other-run")
    shutil.copytree(run, other)
    before = open_store(path)["predictions/influencer_label"][:]
    r = CliRunner().invoke(heads_app, ["predict", other, path, "--out", str(tmp_path / "p")])
    assert r.exit_code == 2 and "holds the predictions of another run" in r.output and "--overwrite" in r.output
    assert r.output.count("\n") == 1
    s = open_store(path)
    assert s.group["predictions"].attrs["run"] == os.path.abspath(run) and (s["predictions/influencer_label"][:] == before).all()
    r = CliRunner().invoke(heads_app, ["predict", other, path, "--out", str(tmp_path / "p"), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert open_store(path).group["predictions"].attrs["run"] == os.path.abspath(other)
    r = CliRunner().invoke(heads_app, ["predict", run, path, "--out", str(tmp_path / "p"), "--overwrite"])
    assert r.exit_code == 0, r.output


def test_schema_declares_every_array_a_store_holds(release_run):
    from cache.exchange import _arrays
    path = release_run[0]
    held = [p for p, _ in _arrays(open_store(path).group)]
    assert "predictions/attention" in held and "influencers/label_source" in held
    assert [p for p in held if p not in schema.ARRAYS] == []
