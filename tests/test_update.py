"""`extract index CRAWL STORE --update`: a grown crawl keeps every unchanged post's features, labels and
statuses; the shard jobs then encode exactly the new and changed posts."""
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.inspect import info, verify
from cache.labels import apply_labels, label_state_errors
from cache.store import open_store
from extract.cli import app as extract_app
from extract.images import run_images
from extract.index import run_index
from extract.text import run_text

crawls = pytest.importorskip("tests.crawls")

T0 = 1_650_000_000
WORDS = "makeup travel beach puppy recipe gym outfit sofa kids".split()


def _grow(root, users, posts, start=0, seed=0, first=0):
    """Posts `start`..`start + posts` of each user (ids {u}{k:04d}, u counted from `first`), each with a
    caption and an image."""
    rng = np.random.default_rng(seed)
    L = crawls.loader(root)
    for u, user in enumerate(users, start=first):
        if not (root / user).exists():
            crawls.save_profile(L, root, user, str(100 + u), followers=1000 + u)
        for k in range(start, start + posts):
            ts = T0 + 1000 * u + 10 * k
            caption = " ".join(rng.choice(WORDS, 5))
            crawls.save_post(L, crawls.graphql_node(f"{u}{k:04d}", ts, caption, owner=user), user)
            crawls.write_image(root / user, crawls.base_name(ts) + ".jpg", seed=1000 * u + k)


def _extract(path, tiny_bert, encoder):
    t = run_text(path, "0/1", model=tiny_bert, precision="fp32", device="cpu", batch_tokens=512, quiet=True)
    i = run_images(path, "0/1", encoder_path=encoder, workers=0, device="cpu", batch_size=16, quiet=True)
    return t, i


def _by_id(path, modality):
    s = open_store(str(path))
    ids = s["posts/id"][:]
    return {str(p): (s[f"features/{modality}"][k], s[f"features/{modality}_status"][k]) for k, p in enumerate(ids)}


@pytest.fixture
def grown(tmp_path, tiny_bert, quick_encoder):
    """A crawl indexed, labelled and extracted; then grown, pruned and edited on disk."""
    root = tmp_path / "crawl"
    users = ["amy", "bo", "cy", "di"]
    _grow(root, users, 12)
    store = str(tmp_path / "s.zarr")
    run_index(str(root), store, block=16, workers=1, quiet=True)
    with open(tmp_path / "infl.csv", "w") as f:
        f.write("username,category,split\namy,travel,train\nbo,food,train\ncy,pet,val\ndi,fitness,test\n")
    with open(tmp_path / "posts.csv", "w") as f:
        f.write("post_id,category,split\n00003,travel,train\n10004,food,train\n30001,fitness,val\n")
    apply_labels(open_store(store, "r+"), str(tmp_path / "infl.csv"), str(tmp_path / "posts.csv"), seed=0)
    _extract(store, tiny_bert, quick_encoder[0])
    before = {m: _by_id(store, m) for m in ("text", "image")}
    # grow: 3 new posts for amy, a new profile; prune: di gone, one of bo's posts gone;
    # edit: cy's post 2 has a new caption (text only), cy's post 5 a new image (image only)
    _grow(root, ["amy"], 3, start=12, seed=5)
    _grow(root, ["eve"], 4, seed=6, first=4)
    shutil.rmtree(root / "di")
    for name in os.listdir(root / "bo"):
        if name.startswith(crawls.base_name(T0 + 1000 + 10 * 7)):
            os.remove(root / "bo" / name)
    L = crawls.loader(root)
    crawls.save_post(L, crawls.graphql_node("20002", T0 + 2000 + 20, "a brand new caption", owner="cy"), "cy")
    img = root / "cy" / (crawls.base_name(T0 + 2000 + 50) + ".jpg")
    crawls.write_image(root / "cy", img.name, seed=99)
    os.utime(img, ns=(os.stat(img).st_atime_ns, os.stat(img).st_mtime_ns + 10**9))
    return {"root": root, "store": store, "before": before, "tmp": tmp_path}


def test_update_keeps_unchanged_features_and_encodes_only_the_rest(grown, tiny_bert, quick_encoder):
    store, before = grown["store"], grown["before"]
    r = CliRunner().invoke(extract_app, ["index", str(grown["root"]), store, "--update", "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert "7 new" in r.output and "13 posts and 1 influencers no longer" in r.output, r.output
    s = open_store(store)
    assert verify(s) == [] and label_state_errors(s) == []
    assert not os.path.exists(store + ".updating") and not os.path.exists(store + ".replaced")
    assert list(s["influencers/username"][:]) == ["amy", "bo", "cy", "eve"]
    up = s.attrs["update"]
    assert up["new_posts"] == 7 and up["vanished_posts"] == 12 + 1 and up["vanished_influencers"] == 1
    after = {m: _by_id(store, m) for m in ("text", "image")}
    changed = {"text": {"20002"}, "image": {"20005"}}
    for m in ("text", "image"):
        kept = [pid for pid in after[m] if pid in before[m] and pid not in changed[m]]
        assert len(kept) == 4 * 12 - 13 - 1, (m, len(kept))     # all but the vanished and the changed
        for pid in kept:
            feat, status = after[m][pid]
            assert status == before[m][pid][1] and np.array_equal(feat, before[m][pid][0], equal_nan=True), (m, pid)
        for pid in set(after[m]) - set(kept):
            assert after[m][pid][1] == 0, (m, pid)            # pending: new or changed
    assert len(set(after["text"]) - set(before["text"])) == 7
    # labels kept by username and post id; di's label and bo's deleted post are gone with their rows
    lab = dict(zip(s["influencers/username"][:], s["influencers/label"][:]))
    assert lab["amy"] == s.influencer_categories.index("travel") and lab["eve"] == -1
    plab = dict(zip(s["posts/id"][:], s["posts/label"][:]))
    assert plab["00003"] == s.post_categories.index("travel") and plab["10004"] == s.post_categories.index("food")
    assert "30001" not in plab
    assert s.attrs["labels"]["influencers"]["carried_by_update"] == {"kept": 3, "dropped": 1}
    # the shard jobs encode exactly the new and changed posts
    t, i = _extract(store, tiny_bert, quick_encoder[0])
    assert t.rows - t.carried == 7 + 1 and i.rows - i.carried == 7 + 1, (t, i)
    s = open_store(store)
    assert all(s[f"features/{m}_done"][:].all() for m in ("text", "image"))
    # and the result is what a full index and extraction of the new crawl gives
    ref = str(grown["tmp"] / "ref.zarr")
    run_index(str(grown["root"]), ref, block=16, workers=1, quiet=True)
    _extract(ref, tiny_bert, quick_encoder[0])
    for m in ("text", "image"):
        a, b = _by_id(store, m), _by_id(ref, m)
        assert set(a) == set(b)
        for pid in a:
            assert a[pid][1] == b[pid][1], (m, pid)
            assert np.allclose(a[pid][0].astype(np.float32), b[pid][0].astype(np.float32), atol=2e-2), (m, pid)


def test_a_killed_update_leaves_the_old_store_and_a_rerun_finishes(grown, monkeypatch):
    store = grown["store"]
    import extract.update as update

    def killed(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(update, "_carry", killed)
    with pytest.raises(KeyboardInterrupt):
        update.run_update(str(grown["root"]), store, workers=1, quiet=True)
    s = open_store(store)                       # the old store, whole
    assert s.n_influencers == 4 and s["features/text_done"][:].all() and verify(s) == []
    assert os.path.exists(store + ".updating")
    monkeypatch.undo()
    rep = update.run_update(str(grown["root"]), store, workers=1, quiet=True)
    assert rep.new_posts == 7 and not os.path.exists(store + ".updating")
    # a swap cut between its two renames is finished by the next update
    rep = update.run_update(str(grown["root"]), store, workers=1, quiet=True)
    assert rep.new_posts == 0
    os.rename(store, store + ".replaced")
    shutil.copytree(store + ".replaced", store + ".updating")
    assert update.finish_swap(os.path.abspath(store))
    assert open_store(store).n_influencers == 4 and not os.path.exists(store + ".replaced")


def test_update_refusals_are_one_line(grown, tmp_path):
    root, store = str(grown["root"]), grown["store"]
    cases = [
        (["index", root, str(tmp_path / "nothing.zarr"), "--update"], "no store here to update"),
        (["index", root, store, "--update", "--overwrite"], "pass one"),
        (["index", root, "memory://x", "--update"], "local store"),
    ]
    os.makedirs(tmp_path / "foreign")
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    cases.append((["index", root, str(tmp_path / "foreign"), "--update"], "not an Influencer Profiler store"))
    for args, expected in cases:
        r = CliRunner().invoke(extract_app, args)
        assert r.exit_code == 2 and expected in r.output and r.output.count("\n") == 1, (args, r.output)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "x"
    # a second update (or index) while one runs waits for it: refused at once
    from extract.target import lock_store
    fd = lock_store(store, store)
    try:
        r = CliRunner().invoke(extract_app, ["index", root, store, "--update"])
        assert r.exit_code == 2 and "another `extract index` is writing" in r.output, r.output
    finally:
        os.close(fd)


def test_a_store_without_image_signatures_reencodes_images_unless_told_paths_suffice(grown):
    """A store indexed before posts/image_bytes existed: its images cannot be told unchanged, so they are
    pending again; with --images-by-path an unchanged path keeps its features."""
    import shutil as sh
    from extract.update import run_update
    store = grown["store"]
    backup = store + ".bak"
    sh.copytree(store, backup)
    for name in ("image_bytes", "image_mtime"):
        sh.rmtree(os.path.join(store, "posts", name))
    rep = run_update(str(grown["root"]), store, workers=1, quiet=True)
    assert rep.kept["image"] == 0 and rep.kept["text"] == 4 * 12 - 13 - 1 and "signatures" in " ".join(rep.notes)
    sh.rmtree(store)
    sh.copytree(backup, store)
    for name in ("image_bytes", "image_mtime"):
        sh.rmtree(os.path.join(store, "posts", name))
    rep = run_update(str(grown["root"]), store, workers=1, quiet=True, images_by_path=True)
    assert rep.kept["image"] == 4 * 12 - 13       # the replaced image's path is the same: kept as told


def test_cache_info_says_predictions_were_dropped(grown):
    import zarr
    store = grown["store"]
    g = zarr.open_group(store, mode="r+")
    g.create_group("predictions").attrs.update(complete=True, run="/some/run")
    from extract.update import run_update
    run_update(str(grown["root"]), store, workers=1, quiet=True)
    d = info(open_store(store))
    assert d["predictions"] is None
    from cache.inspect import format_info
    text = format_info(d)
    assert "dropped by `extract index --update`" in text and "heads predict" in text
