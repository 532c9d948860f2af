"""#30: run folders, encoder files, checkpoints and weights from someone else never run code, and every
file `heads fit` writes is whole or absent (a full disk, a killed refit)."""
import csv
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from cache.store import open_store
from cache.synthetic import planted_store
from extract.cli import app as extract_app
from heads.cli import app as heads_app
from heads.train import FitConfig, fit

QUICK = ["--max-steps", "30", "--attention-warmup", "5", "--restarts", "1", "--instance-loss", "off", "--normalize", "feature"]


class Payload:
    """Unpickling this creates the marker file: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_error_line(output: str, name: str) -> None:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in output, output
    assert lines and lines[-1].startswith("error:") and name in lines[-1], output


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("untrusted")
    store = str(d / "s.zarr")
    planted_store(store, influencers=48, posts=8, seed=0, block=128)
    run = str(d / "run")
    r = CliRunner().invoke(heads_app, ["fit", store, "--out", run] + QUICK)
    assert r.exit_code == 0, r.output
    return {"store": store, "run": run, "dir": d}


def _copy_run(small_run, tmp_path) -> str:
    run = str(tmp_path / "run")
    shutil.copytree(small_run["run"], run)
    return run


def test_a_model_pt_with_a_pickle_payload_is_refused_by_predict_and_eval(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path)
    marker = tmp_path / "ran"
    state = torch.load(os.path.join(run, "model.pt"), weights_only=True)
    torch.save(dict(state, extra=Payload(marker)), os.path.join(run, "model.pt"))
    store = str(tmp_path / "s.zarr")
    shutil.copytree(small_run["store"], store)
    for args in (["predict", run, store, "--out", str(tmp_path / "p")], ["eval", run, "--posts", "2"]):
        r = CliRunner().invoke(heads_app, args)
        assert r.exit_code == 2, r.output
        _one_error_line(r.output, "model.pt")
        assert not marker.exists(), "the payload ran"
    assert "predictions" not in open_store(store).group, "nothing is written before the run is read"


def test_the_run_folder_holds_weights_only_and_its_options_in_json(small_run):
    state = torch.load(os.path.join(small_run["run"], "model.pt"), weights_only=True)
    assert set(state) == {"state_dict"} and all(isinstance(v, torch.Tensor) for v in state["state_dict"].values())
    config = json.load(open(os.path.join(small_run["run"], "config.json")))
    assert config["model"]["in_dim"] == 1792 and config["fit"]["max_steps"] == 30


TAMPER = {
    "garbage config": ("config.json", lambda p: open(p, "w").write("{not json")),
    "config a list": ("config.json", lambda p: json.dump([1, 2], open(p, "w"))),
    "missing model": ("config.json", lambda p: _edit(p, lambda c: c.pop("model"))),
    "modality wrong type": ("config.json", lambda p: _edit(p, lambda c: c["fit"].update(modality=7))),
    "absurd dimensions": ("config.json", lambda p: _edit(p, lambda c: c["model"].update(in_dim=10**7, hidden=10**6))),
    "200,000 categories": ("config.json", lambda p: _edit(p, lambda c: (c["model"].update(n_influencer=200_000),
                                                                       c.update(influencer_categories=["x"] * 200_000)))),
    "categories disagree": ("config.json", lambda p: _edit(p, lambda c: c.update(influencer_categories=["a", "b"]))),
    "deep json": ("config.json", lambda p: open(p, "w").write("[" * 100_000 + "]" * 100_000)),
    "truncated model": ("model.pt", lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2)),
    "model wrong shapes": ("model.pt", lambda p: torch.save({"state_dict": {k: torch.zeros(3) for k in
                                                                            torch.load(p)["state_dict"]}}, p)),
    "model not a dict": ("model.pt", lambda p: torch.save([1, 2, 3], p)),
    "metrics wrong types": ("metrics.json", lambda p: _edit(p, lambda m: m.update(influencer="high"))),
    "metrics missing": ("metrics.json", lambda p: os.remove(p)),
}


def _edit(path, change):
    obj = json.load(open(path))
    change(obj)
    json.dump(obj, open(path, "w"))


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_a_tampered_run_folder_is_one_error_line_naming_the_file(small_run, tmp_path, case):
    run = _copy_run(small_run, tmp_path)
    name, change = TAMPER[case]
    change(os.path.join(run, name))
    r = CliRunner().invoke(heads_app, ["predict", run, small_run["store"], "--out", str(tmp_path / "p")])
    assert r.exit_code == 2, r.output
    _one_error_line(r.output, name)


def test_an_encoder_file_and_a_checkpoint_with_a_payload_are_refused(small_run, tmp_path):
    from extract.sample import make_sample
    from cache.labels import apply_labels
    from extract.index import run_index
    marker = tmp_path / "ran"
    data = str(tmp_path / "data")
    make_sample(data, influencers=8, posts=6, seed=0, image_size=80)
    store = str(tmp_path / "s.zarr")
    run_index(data, store, block=64, workers=1, quiet=True)
    apply_labels(open_store(store, "r+"), os.path.join(data, "labels/influencers.csv"),
                 os.path.join(data, "labels/posts.csv"), seed=0)
    enc = str(tmp_path / "enc.pt")
    torch.save({"format": "x", "p": Payload(marker)}, enc)
    r = CliRunner().invoke(extract_app, ["images", store, "--shard", "0/1", "--encoder", enc, "--device", "cpu"])
    assert r.exit_code == 2
    _one_error_line(r.output, "enc.pt")
    weights = str(tmp_path / "inception.pth")
    torch.save({"p": Payload(marker)}, weights)
    common = ["finetune-images", store, "--out", str(tmp_path / "new.pt"), "--image-size", "75", "--epochs", "1",
              "--workers", "0", "--device", "cpu"]
    r = CliRunner().invoke(extract_app, common + ["--weights", weights])
    assert r.exit_code == 2
    _one_error_line(r.output, "inception.pth")
    torch.save({"settings": {}, "p": Payload(marker)}, str(tmp_path / "new.pt.ckpt"))
    r = CliRunner().invoke(extract_app, common + ["--weights", "random"])
    assert r.exit_code == 2
    _one_error_line(r.output, "new.pt.ckpt")
    open(str(tmp_path / "new.pt.ckpt"), "wb").write(b"PK\x03\x04 truncated")
    r = CliRunner().invoke(extract_app, common + ["--weights", "random"])
    assert r.exit_code == 2
    _one_error_line(r.output, "new.pt.ckpt")
    assert not marker.exists(), "a payload ran"


def test_a_text_model_folder_with_a_payload_is_refused(tiny_bert, store_path, tmp_path):
    marker = tmp_path / "ran"
    model = str(tmp_path / "bert")
    shutil.copytree(tiny_bert, model)
    for f in os.listdir(model):
        if f.endswith(".safetensors"):
            os.remove(os.path.join(model, f))
    torch.save({"p": Payload(marker)}, os.path.join(model, "pytorch_model.bin"))
    store = str(tmp_path / "s.zarr")
    shutil.copytree(store_path, store)
    r = CliRunner().invoke(extract_app, ["text", store, "--shard", "0/1", "--model", model, "--device", "cpu"])
    assert r.exit_code == 2, r.output
    _one_error_line(r.output, "bert")
    assert not marker.exists(), "the payload ran"


def test_a_full_disk_while_saving_the_model_leaves_no_truncated_file(small_run, tmp_path, monkeypatch):
    import heads.rundir

    def full(obj, f, *a, **k):
        f.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(heads.rundir.torch, "save", full)
    out = str(tmp_path / "run")
    cfg = FitConfig(max_steps=30, attention_warmup=5, restarts=1, instance_loss="off", normalize="feature")
    with pytest.raises(Exception) as e:
        fit(small_run["store"], out, cfg, log=lambda *a: None)
    assert "model.pt" in str(e.value) and "disk is full" in str(e.value)
    assert not os.path.exists(out), "no run folder under the final name"
    left = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert not [p for p in left if p.endswith("model.pt")], left


def test_a_killed_refit_leaves_the_old_run_whole_and_a_finished_run_needs_overwrite(small_run, tmp_path):
    run = _copy_run(small_run, tmp_path)
    before = {f: open(os.path.join(run, f), "rb").read() for f in ("config.json", "model.pt", "metrics.json")}
    r = CliRunner().invoke(heads_app, ["fit", small_run["store"], "--out", run] + QUICK)
    assert r.exit_code == 2 and "--overwrite" in r.output.strip().splitlines()[-1], r.output

    class Killed(BaseException):
        pass

    def log(line):
        if "round" in line and "restart 0" in line:
            raise Killed()
    cfg = FitConfig(modality="image", max_steps=30, attention_warmup=5, restarts=1, instance_loss="off", normalize="feature")
    with pytest.raises(Killed):
        fit(small_run["store"], run, cfg, log=log, overwrite=True)
    after = {f: open(os.path.join(run, f), "rb").read() for f in before}
    assert after == before, "the old run is untouched until the new one is whole"
    store = str(tmp_path / "s.zarr")
    shutil.copytree(small_run["store"], store)
    r = CliRunner().invoke(heads_app, ["predict", run, store, "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(heads_app, ["fit", small_run["store"], "--out", run, "--modality", "image", "--overwrite"]
                           + QUICK)
    assert r.exit_code == 0, r.output
    assert json.load(open(os.path.join(run, "config.json")))["fit"]["modality"] == "image"
    assert not os.path.exists(run + ".partial") and not os.path.exists(run + ".replaced")


def test_outputs_inside_the_store_are_refused(small_run, tmp_path):
    for args in (["fit", small_run["store"], "--out", os.path.join(small_run["store"], "run")] + QUICK,
                 ["predict", small_run["run"], small_run["store"], "--out", os.path.join(small_run["store"], "p")]):
        r = CliRunner().invoke(heads_app, args)
        assert r.exit_code == 2, r.output
        _one_error_line(r.output, "inside the store")


def _hostile_names(small_run, tmp_path) -> tuple[str, dict]:
    """A copy of the store whose captions and usernames begin like spreadsheet formulas, with non-ASCII text."""
    store = str(tmp_path / "s.zarr")
    shutil.copytree(small_run["store"], store)
    s = open_store(store, "r+")
    users = s["influencers/username"][:]
    caps = s["posts/caption"][:]
    evil = {"=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)", "\tTAB", "\rCR"}
    new_users = [f"{'=+-@'[j % 4]}user{j}" for j in range(len(users))]
    new_caps = [sorted(evil)[k % len(evil)] + " café ☕" for k in range(len(caps))]
    s["influencers/username"][:] = new_users
    s["posts/caption"][:] = new_caps
    return store, {"users": new_users, "captions": new_caps}


def test_csv_cells_that_start_like_formulas_are_neutralised_and_read_back(small_run, tmp_path):
    store, names = _hostile_names(small_run, tmp_path)
    out = str(tmp_path / "pred")
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0")
    code = "import sys; from heads.cli import app; sys.argv[0] = 'heads'; app()"
    p = subprocess.run([sys.executable, "-X", "utf8=0", "-c", code, "predict", small_run["run"], store, "--out", out],
                       env=env, capture_output=True, text=True, encoding="utf-8")
    assert p.returncode == 0, p.stderr[-2000:]
    with open(os.path.join(out, "influencers.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["username"] for r in rows] == ["'" + u for u in names["users"]]
    captions = {r["top1_caption"] for r in rows if r["top1_caption"]}
    assert captions and all(c.startswith("'") and c[1:] in names["captions"] for c in captions), captions
    with open(os.path.join(out, "posts.csv"), encoding="utf-8", newline="") as f:
        posts = list(csv.DictReader(f))
    assert {r["username"] for r in posts} <= {"'" + u for u in names["users"]}
    assert all(not r["probability"].startswith("'") for r in posts)
    for name in ("influencers.csv", "posts.csv"):
        text = open(os.path.join(out, name), encoding="utf-8").read()
        for cell in text.replace("\r\n", "\n").split(","):
            assert not cell.lstrip('"').startswith(("=", "+", "@", "\t")), (name, cell[:40])


def test_numbers_stay_numbers_in_csvs():
    from runtime.files import csv_cell
    assert [csv_cell(v) for v in ("-0.25", "-1", "1e-3", 3, -2.5)] == ["-0.25", "-1", "1e-3", 3, -2.5]
    assert [csv_cell(v) for v in ("-inf", "-nan", "- 1", "-1-1", "=1", "@a", "\t1")] == \
        ["'-inf", "'-nan", "'- 1", "'-1-1", "'=1", "'@a", "'\t1"]


def test_a_failed_predict_keeps_the_previous_predictions_whole_and_a_second_one_waits(small_run, tmp_path,
                                                                                       monkeypatch):
    import heads.predict
    from cache.outputs import lock_predictions
    store = str(tmp_path / "s.zarr")
    shutil.copytree(small_run["store"], store)
    out = str(tmp_path / "p")
    r = CliRunner().invoke(heads_app, ["predict", small_run["run"], store, "--out", out])
    assert r.exit_code == 0, r.output
    before = open_store(store)["predictions/influencer_label"][:]
    csv_before = open(os.path.join(out, "influencers.csv"), "rb").read()

    def full(rows):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(heads.predict, "csv_rows", full)
    r = CliRunner().invoke(heads_app, ["predict", small_run["run"], store, "--out", out])
    assert r.exit_code == 2 and "disk is full" in r.output.strip().splitlines()[-1], r.output
    monkeypatch.undo()
    s = open_store(store)
    assert s.group["predictions"].attrs["complete"] and (s["predictions/influencer_label"][:] == before).all()
    assert open(os.path.join(out, "influencers.csv"), "rb").read() == csv_before
    with lock_predictions(open_store(store)):
        r = CliRunner().invoke(heads_app, ["predict", small_run["run"], store, "--out", out])
    assert r.exit_code == 2 and "another `heads predict`" in r.output, r.output
    r = CliRunner().invoke(heads_app, ["predict", small_run["run"], store, "--out", out])
    assert r.exit_code == 0, r.output


BAD_OPTIONS = [["fit", "S", "--out", "O", "--lr", "nan"], ["fit", "S", "--out", "O", "--lr", "0"],
               ["fit", "S", "--out", "O", "--aux-weight", "nan"], ["fit", "S", "--out", "O", "--patience", "-5"],
               ["fit", "S", "--out", "O", "--attention-warmup", "-1"], ["eval", "RUN", "--posts", "abc"],
               ["predict", "RUN", "S", "--batch-size", "0"], ["predict", "RUN", "S", "--batch-size", "-1"],
               ["report", "RUN", "S", "--out", "R", "--cards", "-1"]]


@pytest.mark.parametrize("args", BAD_OPTIONS, ids=[" ".join(a[3:] if a[0] == "fit" else a[-2:]) for a in BAD_OPTIONS])
def test_bad_option_values_are_refused_by_the_command_line(small_run, tmp_path, args):
    store = str(tmp_path / "s.zarr")
    shutil.copytree(small_run["store"], store)
    args = [{"S": store, "O": str(tmp_path / "o"), "RUN": small_run["run"], "R": str(tmp_path / "r")}.get(a, a)
            for a in args]
    r = CliRunner().invoke(heads_app, args)
    assert r.exit_code == 2, r.output
    _one_error_line(r.output, args[-2])
    assert "predictions" not in open_store(store).group or args[0] != "predict"


@pytest.mark.parametrize("args", [["finetune-images", "S", "--out", "E", "--dropout", "2"],
                                  ["finetune-images", "S", "--out", "E", "--lr", "nan"],
                                  ["text", "S", "--shard", "0/1", "--model", "random", "--batch-tokens", "0"],
                                  ["index", "D", "S2", "--workers", "-1"],
                                  ["sample-data", "D2", "--image-size", "0"]])
def test_bad_extract_option_values_are_one_line(store_path, tmp_path, args):
    store = str(tmp_path / "s.zarr")
    shutil.copytree(store_path, store)
    data = open_store(store).attrs["dataset_root"]
    args = [{"S": store, "E": str(tmp_path / "e.pt"), "D": data, "S2": str(tmp_path / "new.zarr"),
             "D2": str(tmp_path / "d")}.get(a, a) for a in args]
    r = CliRunner().invoke(extract_app, args)
    assert r.exit_code == 2, r.output
    _one_error_line(r.output, args[-2])


def test_baselines_refuse_an_output_inside_the_store(small_run):
    from baselines.cli import app as baselines_app
    r = CliRunner().invoke(baselines_app, ["run", small_run["store"], "--out", os.path.join(small_run["store"], "b")])
    assert r.exit_code == 2, r.output
    _one_error_line(r.output, "inside the store")


def test_fit_config_replays_a_run_and_options_given_override_it(small_run, tmp_path):
    src = json.load(open(os.path.join(small_run["run"], "config.json")))["fit"]
    r = CliRunner().invoke(heads_app, ["fit", small_run["store"], "--out", str(tmp_path / "again"), "--config",
                                       os.path.join(small_run["run"], "config.json")])
    assert r.exit_code == 0, r.output
    again = json.load(open(tmp_path / "again" / "config.json"))["fit"]
    assert again == src
    assert json.load(open(tmp_path / "again" / "metrics.json"))["influencer"] == \
        json.load(open(os.path.join(small_run["run"], "metrics.json")))["influencer"], "the same run again"
    r = CliRunner().invoke(heads_app, ["fit", small_run["store"], "--out", str(tmp_path / "other"), "--config",
                                       small_run["run"], "--seed", "7"])
    assert r.exit_code == 0, r.output
    other = json.load(open(tmp_path / "other" / "config.json"))["fit"]
    assert other == dict(src, seed=7)


def test_fit_config_replays_a_run_from_before_instance_loss_as_it_ran(small_run, tmp_path):
    """A config.json written before --instance-loss existed: a weight > 0 meant weak labels on, 0 meant off."""
    from heads.cli import _fit_config
    for weight in (3.0, 0.0):
        old = tmp_path / f"old{weight}"
        shutil.copytree(small_run["run"], old)
        config = json.load(open(old / "config.json"))
        config["fit"].pop("instance_loss")
        config["fit"]["instance_weight"] = weight
        (old / "config.json").write_text(json.dumps(config))
        cfg = _fit_config(None, {}, str(old))         # nothing given on the command line: no context read
        assert cfg.instance_weights == (weight,)
