"""Finding influencers for a brief: embeddings in the store, `heads similar`, `heads search`, sponsored share."""
import csv
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cache import schema
from cache.store import open_store
from cache.synthetic import planted_store
from heads.cli import app as heads_app
from heads.discover import Directory, Filters, search, similar
from heads.train import FitConfig, fit


def _heads(*args):
    return CliRunner().invoke(heads_app, [str(a) for a in args])


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """A planted store (160 influencers, 20 per category), fitted and predicted, with planted followers,
    likes and paid posts so that every filter has something to cut."""
    d = tmp_path_factory.mktemp("discover")
    path = str(d / "s.zarr")
    planted_store(path, influencers=160, posts=20, seed=5, noise=1.0, on_topic=0.5)
    s = open_store(path, "r+")
    rng = np.random.default_rng(0)
    s["influencers/followers"][:] = (10 ** rng.uniform(3, 6.5, s.n_influencers)).astype(np.int64)
    s["posts/likes"][:] = rng.integers(0, 5000, s.n_posts)
    s.group.create_array("posts/sponsored", shape=(s.n_posts,), dtype="int8", chunks=(s.n_posts,))
    spons = rng.choice([-1, 0, 1], s.n_posts, p=[0.1, 0.7, 0.2]).astype(np.int8)
    spons[s.offsets()[3]:s.offsets()[4]] = -1            # one influencer whose paid posts are all unknown
    s["posts/sponsored"][:] = spons
    run = str(d / "run")
    fit(path, run, FitConfig(max_steps=300, restarts=1, instance_loss="off", precision="fp32"), log=lambda *_: None)
    r = _heads("predict", run, path, "--out", d / "pred")
    assert r.exit_code == 0, r.output
    return {"store": path, "run": run, "dir": d}


def _frame(d: Directory) -> pd.DataFrame:
    return pd.DataFrame({"username": d.username, "label": d.label, "prob": d.prob, "followers": d.followers,
                         "tier": d.tier, "engagement": d.engagement, "sponsored": d.sponsored})


def test_embeddings_are_in_the_store_under_the_predictions_protocol(predicted):
    s = open_store(predicted["store"])
    e = s[f"predictions/{schema.EMBEDDING}"]
    assert e.shape == (s.n_influencers, 256) and e.dtype == np.float16
    assert not np.isnan(e[:]).any()
    # and exported with the rest: the export's import round-trips it
    from cache.exchange import export_store, import_store
    h5 = str(predicted["dir"] / "x.h5")
    export_store(predicted["store"], h5)
    import_store(h5, str(predicted["dir"] / "back.zarr"))
    back = open_store(str(predicted["dir"] / "back.zarr"))
    assert np.array_equal(back[f"predictions/{schema.EMBEDDING}"][:], e[:], equal_nan=True)


def test_lookalikes_share_the_category_and_an_influencer_ranks_itself_first(predicted):
    d = Directory(open_store(predicted["store"]), predicted["run"], need_embeddings=True)
    truth = open_store(predicted["store"])["influencers/label"][:]
    precisions = []
    for j in range(len(d)):
        rows = similar(d, d.username[j], 10, Filters())
        assert d.username[j] not in [r["username"] for r in rows]
        got = [truth[d.find(r["username"])] for r in rows]
        precisions.append(np.mean(np.array(got) == truth[j]))
        if j < 20:
            with_self = similar(d, d.username[j], 5, Filters(), include_self=True)
            assert with_self[0]["username"] == d.username[j] and with_self[0]["similarity"] == pytest.approx(1, abs=1e-3)
    assert np.mean(precisions) >= 0.9, np.mean(precisions)


def test_filters_are_exact_against_a_pandas_query(predicted):
    d = Directory(open_store(predicted["store"]), predicted["run"], need_embeddings=True)
    df = _frame(d)
    cats = d.categories
    briefs = [Filters(category="fitness"), Filters(tiers=("micro", "macro")), Filters(min_engagement=0.05),
              Filters(min_followers=100_000), Filters(min_probability=0.9), Filters(max_sponsored=0.15),
              Filters(category="food", tiers=("nano",), max_sponsored=0.3, min_probability=0.5)]
    sizes = []
    for f in briefs:
        q = df[df.label >= 0]
        if f.category:
            q = q[q.label == cats.index(f.category)]
        if f.tiers:
            q = q[q.tier.isin(f.tiers)]
        if f.min_engagement is not None:
            q = q[q.engagement >= f.min_engagement]
        if f.min_followers is not None:
            q = q[q.followers >= f.min_followers]
        if f.min_probability is not None:
            q = q[q.prob >= f.min_probability]
        if f.max_sponsored is not None:
            q = q[q.sponsored <= f.max_sponsored]       # NaN (unknown) never passes
        got = search(d, f, top=10_000)
        assert sorted(r["username"] for r in got) == sorted(q.username), f
        sizes.append(len(got))
        probs = [r["probability"] for r in got]
        assert probs == sorted(probs, reverse=True)
        sims = similar(d, d.username[0], 10_000, f)
        assert {r["username"] for r in sims} == set(q.username) - {d.username[0]}, f
    assert sum(0 < n < len(df) for n in sizes) >= 5, sizes          # the briefs cut, and keep, something
    assert np.isnan(d.sponsored[3])                       # all of its posts unknown: unknown share
    kept = search(d, Filters(max_sponsored=1.0), top=10_000)
    assert d.username[3] not in [r["username"] for r in kept]


def test_the_command_lines_print_a_table_and_write_csv(predicted):
    store, run, tmp = predicted["store"], predicted["run"], predicted["dir"]
    user = str(open_store(store)["influencers/username"][0])
    out = tmp / "sim.csv"
    r = _heads("similar", run, store, user, "--k", "5", "--out", out)
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[0].split()[:3] == ["similarity", "username", "category"]
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert len(rows) == 5 and rows[0]["top_posts"]
    r = _heads("search", run, store, "--category", "travel", "--sort", "engagement", "--top", "3", "--out", tmp / "s.csv")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp / "s.csv", encoding="utf-8")))
    eng = [float(x["engagement"]) for x in rows]
    assert len(rows) == 3 and eng == sorted(eng, reverse=True) and {x["category"] for x in rows} == {"travel"}


def test_bad_briefs_are_one_error_line(predicted, tmp_path):
    store, run = predicted["store"], predicted["run"]
    user = str(open_store(store)["influencers/username"][0])
    cases = [
        (["similar", run, store, "nobody_here"], "no influencer 'nobody_here'"),
        (["similar", run, store, user[:-1] + "x"], "closest names"),
        (["similar", run, store, user, "--k", "0"], "--k must be at least 1"),
        (["similar", run, store, user, "--k", "-3"], "--k must be at least 1"),
        (["similar", run, store, user, "--category", "astrology"], "not one of the run's categories"),
        (["search", run, store, "--tier", "micro,macor"], "did you mean 'macro'"),
        (["search", run, store, "--tier", "giant"], "is not a tier"),
        (["search", run, store, "--sort", "likes"], "--sort must be one of"),
        (["search", run, store, "--max-sponsored", "2"], "--max-sponsored must be in"),
    ]
    for args, expected in cases:
        r = _heads(*args)
        assert r.exit_code == 2 and expected in r.output and r.output.count("\n") == 1, (args, r.output)
    # an influencer with no usable post (no embedding), then a store predicted before embeddings were kept
    import shutil
    old = str(tmp_path / "old.zarr")
    shutil.copytree(store, old)
    s = open_store(old, "r+")
    s[f"predictions/{schema.EMBEDDING}"][1] = np.nan
    r = _heads("similar", run, old, str(s["influencers/username"][1]))
    assert r.exit_code == 2 and "no usable posts" in r.output and r.output.count("\n") == 1, r.output
    shutil.rmtree(os.path.join(old, "predictions", schema.EMBEDDING))
    r = _heads("similar", run, old, user)
    assert r.exit_code == 2 and "rerun `heads predict" in r.output and r.output.count("\n") == 1, r.output
    # predictions of another run
    r = _heads("search", str(tmp_path / "other-run"), store)
    assert r.exit_code == 2 and "not of" in r.output, r.output


def test_sponsored_is_recorded_per_post_from_what_the_formats_carry(sample, tmp_path):
    from extract.index import run_index
    from extract.reading import sponsored_flag
    run_index(sample, str(tmp_path / "s.zarr"), block=512, workers=1, quiet=True)
    s = open_store(str(tmp_path / "s.zarr"))
    flags = s["posts/sponsored"][:]
    # the sample's .info files all carry edge_media_to_sponsor_user: known everywhere, some paid
    assert set(np.unique(flags)) == {0, 1} and 0 < (flags == 1).mean() < 0.5
    assert sponsored_flag({"edge_media_to_sponsor_user": {"edges": [{"node": {}}]}}) == 1
    assert sponsored_flag({"edge_media_to_sponsor_user": {"edges": []}}) == 0
    assert sponsored_flag({"is_paid_partnership": True}) == 1 and sponsored_flag({"is_ad": False}) == 0
    assert sponsored_flag({"sponsor_tags": [{"sponsor": {}}]}) == 1 and sponsored_flag({"caption": "x"}) == -1
    assert sponsored_flag({"is_paid_partnership": "yes"}) == -1
    # a store indexed before posts/sponsored: every share unknown, nothing breaks
    from heads.explorer import influencer_columns
    import shutil
    shutil.rmtree(tmp_path / "s.zarr" / "posts" / "sponsored")
    assert np.isnan(influencer_columns(open_store(str(tmp_path / "s.zarr")))["sponsored"]).all()
