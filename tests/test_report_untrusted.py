"""#30: `heads report` on run folders, predictions, baselines, ablations and stores from someone else: every
value is escaped (Jinja2 autoescape), thumbnails are named by row and written inside OUT only, no file of
the inputs can put a script on the page."""
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from cache.store import open_store
from conftest import build_demo_run
from heads.cli import app as heads_app

PAYLOAD = "\"'><script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
TITLE = "Influencer Profiler — Text & Image"


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.scripts, self.handlers, self.imgs, self.title, self._in_title = [], [], [], "", False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a.get("src"))
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag == "title":
            self._in_title = True
        self.handlers += [k for k in a if k.startswith("on")]

    def handle_endtag(self, tag):
        self._in_title = self._in_title and tag != "title"

    def handle_data(self, data):
        if self._in_title:
            self.title += data


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_demo_run(tmp_path_factory.mktemp("untrusted-report"))


def _copy(base, where) -> dict:
    """A copy of the demo run's folder (dataset, store, run, predictions) of one's own."""
    d = where / "copy"
    shutil.copytree(base["dir"], d, symlinks=True)
    return {k: str(v).replace(str(base["dir"]), str(d)) for k, v in base.items() if k != "dir"} | {"dir": d}


def _report(d, out, *extra) -> None:
    r = CliRunner().invoke(heads_app, ["report", d["run"], d["store"], "--out", out, "--dataset", d["data"]]
                           + list(extra))
    assert r.exit_code == 0, r.output


@pytest.fixture(scope="module")
def hostile(base, tmp_path_factory):
    """The demo run with a payload in every field of every file the report reads."""
    d = _copy(base, tmp_path_factory.mktemp("hostile"))
    run = d["run"]
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    for key in ("best_step", "best_epoch", "best_restart", "normalize", "instance_weight", "val_acc", "val_post_acc", "warning", "note"):
        metrics[key] = PAYLOAD
    metrics["reference"]["C"] = PAYLOAD
    metrics["influencer"]["f1"] = {c: PAYLOAD for c in metrics["influencer"]["f1"]}
    metrics["influencer"]["confusion"] = [[PAYLOAD]]
    json.dump(metrics, open(os.path.join(run, "metrics.json"), "w"))
    config = json.load(open(os.path.join(run, "config.json")))
    config.update(git_commit=PAYLOAD, precision=PAYLOAD, device=PAYLOAD)
    config["fit"][PAYLOAD] = PAYLOAD
    config["fit"]["attention"] = PAYLOAD
    config["store"].update(url=PAYLOAD, posts=PAYLOAD, influencers=PAYLOAD)
    config["labels"] = {"influencers": {"source": PAYLOAD, "file": PAYLOAD}}
    config["influencer_categories"][0] = PAYLOAD[:150]
    json.dump(config, open(os.path.join(run, "config.json"), "w"))
    with open(os.path.join(run, "history.csv"), "a") as f:
        f.write(",".join([PAYLOAD.replace(",", " ")] * 12) + "\n")
    summary = json.load(open(os.path.join(d["pred"], "summary.json")))
    summary["release_agreement"] = {"n": 5, "accuracy": PAYLOAD, "categories": [PAYLOAD], "confusion": PAYLOAD,
                                    "per_category": {PAYLOAD: {"precision": PAYLOAD, "recall": PAYLOAD, "f1": PAYLOAD,
                                                               "support": PAYLOAD}}}
    json.dump(summary, open(os.path.join(d["pred"], "summary.json"), "w"))
    base = str(d["dir"] / "baselines")
    os.makedirs(base)
    json.dump({"influencer": [{"model": PAYLOAD, "input": PAYLOAD, "metrics": {"n": 3, "accuracy": PAYLOAD,
                                                                            "f1": {c: PAYLOAD for c in config[
                                                                                "influencer_categories"]}}}],
               "post": [PAYLOAD]}, open(os.path.join(base, "results.json"), "w"))
    ablate = str(d["dir"] / "ablate")
    os.makedirs(ablate)
    json.dump({f"{PAYLOAD}|both": PAYLOAD, "full model|both": 0.5}, open(os.path.join(ablate, "ablation.json"), "w"))
    s = open_store(d["store"], "r+")
    s["influencers/username"][:] = [PAYLOAD.replace("/", "") + str(j) for j in range(s.n_influencers)]
    s["posts/caption"][:] = [PAYLOAD] * s.n_posts
    s["features/image"].attrs["encoder"] = {"model": PAYLOAD, "weights_sha256": PAYLOAD}
    out = str(d["dir"] / "report")
    _report(d, out, "--predictions", d["pred"], "--baselines", base, "--ablate", ablate, "--cards", "2")
    return dict(d, out=out)


def test_no_value_from_an_input_file_reaches_the_page_unescaped(hostile):
    page = open(os.path.join(hostile["out"], "index.html"), encoding="utf-8").read()
    tags = Tags()
    tags.feed(page)
    assert tags.scripts == ["assets/explorer.js", None], tags.scripts       # only the report's own two
    assert not tags.handlers, tags.handlers
    assert "x" not in tags.imgs
    assert tags.title == TITLE
    assert "document.title=&#39;pwned&#39;" in page, "the payloads are shown, as text"
    js = open(os.path.join(hostile["out"], "assets", "explorer.js"), encoding="utf-8").read()
    assert "</script" not in js.lower()


def test_thumbnails_are_named_by_row_inside_out(hostile):
    thumbs = os.listdir(os.path.join(hostile["out"], "assets", "thumbs"))
    assert thumbs and all(t.startswith("r") and t[1:-4].isdigit() and t.endswith(".jpg") for t in thumbs), thumbs


def test_post_ids_that_name_other_folders_never_write_there(base, tmp_path):
    d = _copy(base, tmp_path)
    s = open_store(d["store"], "r+")
    victim = d["dir"] / "victim"
    victim.mkdir()
    s["posts/id"][:] = [f"../../victim/{k}" for k in range(s.n_posts)]
    out = str(d["dir"] / "report")
    _report(d, out, "--cards", "3")
    assert not os.listdir(victim)
    assert len(os.listdir(os.path.join(out, "assets", "thumbs"))) > 0


def test_a_link_inside_image_to_a_file_outside_is_not_copied_into_the_report(base, tmp_path):
    d = _copy(base, tmp_path / "a")
    s = open_store(d["store"])
    outside = d["dir"] / "private.jpg"
    images = [str(p) for p in s["posts/image"][:] if str(p)]
    shutil.copy(os.path.join(d["data"], images[0]), outside)
    for rel in images:
        os.remove(os.path.join(d["data"], rel))
        os.symlink(outside, os.path.join(d["data"], rel))
    out = str(d["dir"] / "report")
    _report(d, out, "--cards", "3")
    assert not os.listdir(os.path.join(out, "assets", "thumbs")), "a link leaving the dataset is not followed"
    # a dataset whose image/ folder is itself a link (another disk) still gets its thumbnails
    d2 = _copy(base, tmp_path / "b")
    moved = d2["dir"] / "other-disk"
    shutil.move(os.path.join(d2["data"], "image"), moved)
    os.symlink(moved, os.path.join(d2["data"], "image"))
    out2 = str(d2["dir"] / "report")
    _report(d2, out2, "--cards", "3")
    assert os.listdir(os.path.join(out2, "assets", "thumbs"))


def test_the_report_refuses_to_write_into_its_inputs(hostile):
    for out in (os.path.join(hostile["store"], "r"), os.path.join(hostile["run"], "r")):
        r = CliRunner().invoke(heads_app, ["report", hostile["run"], hostile["store"], "--out", out])
        assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith("error:"), r.output


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_in_a_real_browser_no_payload_runs_and_the_explorer_renders(hostile, tmp_path):
    index = os.path.join(hostile["out"], "index.html")
    p = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                        "--virtual-time-budget=3000", "--dump-dom", f"file://{index}"],
                       capture_output=True, text=True, timeout=120)
    dom = p.stdout
    assert "<title>" + TITLE.replace("&", "&amp;") + "</title>" in dom, dom[:500]
    assert "pwned</title>" not in dom
    body = dom[dom.index('id="ex-body"'):]
    assert body.count("<tr>") >= 10, "the explorer rendered its rows"
