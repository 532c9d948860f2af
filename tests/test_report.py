"""#15: `heads report`, the self-contained HTML report."""
import json
import os
import re
import shutil
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from cache.store import open_store
from conftest import build_demo_run
from heads.cli import app as heads_app


class Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags, self.stack, self.errors = [], 0, [], []

    def handle_starttag(self, tag, attrs):
        self.tags += 1
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.refs.append(a[key])
        if tag not in ("img", "meta", "input", "br", "link"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def _check_page(out: str) -> tuple[str, Collect]:
    page = open(os.path.join(out, "index.html"), encoding="utf-8").read()
    p = Collect()
    p.feed(page)
    assert p.tags > 50 and not p.errors and not p.stack, (p.errors[:5], p.stack)
    for ref in p.refs:
        if ref.startswith("#"):
            continue
        assert not re.match(r"^[a-z]+:", ref) and not ref.startswith("//"), ref       # nothing external
        assert os.path.isfile(os.path.join(out, ref)), ref
    assert "http://" not in page and "https://" not in page
    return page, p


def _explorer(out: str) -> dict:
    text = open(os.path.join(out, "assets", "explorer.js")).read()
    assert text.startswith("window.EXPLORER=") and text.rstrip().endswith(";")
    return json.loads(text[len("window.EXPLORER="):].rstrip().rstrip(";"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    return build_demo_run(tmp_path_factory.mktemp("report"))


def test_report_is_complete_offline_and_shows_the_metrics(demo_run, tmp_path):
    out = str(tmp_path / "report")
    r = CliRunner().invoke(heads_app, ["report", demo_run["run"], demo_run["store"], "--out", out,
                                       "--predictions", demo_run["pred"], "--cards", "2"])
    assert r.exit_code == 0, r.output
    page, p = _check_page(out)
    metrics = json.load(open(os.path.join(demo_run["run"], "metrics.json")))
    accs = re.findall(r'<span class="acc">([0-9.]+)%</span>', page)
    assert accs[0] == f"{100 * metrics['influencer']['accuracy']:.2f}"              # Table 1, the head
    assert f"{100 * metrics['reference']['influencer']['accuracy']:.2f}" in accs[1]  # the reference
    assert f"{100 * metrics['post']['accuracy']:.2f}" in accs                       # Table 2
    summary = json.load(open(os.path.join(demo_run["pred"], "summary.json")))
    assert f"{100 * summary['release_agreement']['accuracy']:.2f}" in accs         # agreement with the release
    for fig in ("curves", "fig5a", "cm_infl", "cm_post"):
        assert f"assets/{fig}.png" in p.refs
    ex = _explorer(out)
    s = open_store(demo_run["store"])
    assert len(ex["username"]) == s.n_influencers and all(len(v) == s.n_influencers for v in ex.values())
    assert ex["username"] == [str(u) for u in s["influencers/username"][:]]
    thumbs = [x for x in p.refs if x.startswith("assets/thumbs/")]
    assert thumbs and all(os.path.getsize(os.path.join(out, t)) > 0 for t in thumbs)
    assert "98.32%" in page                                           # the paper's column
    w = metrics["instance_weight"]                                    # the variant --instance-loss kept
    assert f"normalisation {metrics['normalize']}, " + ("no weak post labels" if w == 0 else f"weak post labels x{w:g}") \
        in page


def test_moved_dataset_gives_placeholders_not_a_broken_report(demo_run, tmp_path):
    moved = str(demo_run["dir"] / "moved")
    shutil.move(demo_run["data"], moved)
    try:
        out = str(tmp_path / "report")
        r = CliRunner().invoke(heads_app, ["report", demo_run["run"], demo_run["store"], "--out", out, "--cards", "2"])
        assert r.exit_code == 0, r.output
        page, p = _check_page(out)
        assert "image unavailable" in page and "could not be read from the dataset root" in page
        assert not [x for x in p.refs if x.startswith("assets/thumbs/")]
        out2 = str(tmp_path / "report2")
        r = CliRunner().invoke(heads_app, ["report", demo_run["run"], demo_run["store"], "--out", out2, "--cards", "2",
                                           "--dataset", moved])
        assert r.exit_code == 0, r.output
        page2, p2 = _check_page(out2)
        assert [x for x in p2.refs if x.startswith("assets/thumbs/")]
    finally:
        shutil.move(moved, demo_run["data"])


def test_report_before_predict_and_with_a_corrupt_image(demo_run, tmp_path):
    """No predictions yet: the explorer still lists everyone, the cards say what to run. A corrupt image
    becomes a placeholder."""
    import numpy as np
    path = str(tmp_path / "s.zarr")
    shutil.copytree(demo_run["store"], path)
    s = open_store(path, "r+")
    del s.group["predictions"]
    out = str(tmp_path / "report")
    r = CliRunner().invoke(heads_app, ["report", demo_run["run"], path, "--out", out])
    assert r.exit_code == 0, r.output
    page, _ = _check_page(out)
    assert "no predictions in the store yet" in page
    ex = _explorer(out)
    assert len(ex["username"]) == s.n_influencers and set(ex["category"]) == {""}
    # a corrupt image among the shown posts
    from heads.cards import thumbnail
    bad = os.path.join(demo_run["data"], "corrupt.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(500))
    try:
        assert thumbnail(demo_run["data"], "corrupt.jpg", out, "x") is None
        assert thumbnail(demo_run["data"], "../outside.jpg", out, "y") is None
    finally:
        os.remove(bad)
