"""Your own crawl: instaloader folders (written by instaloader itself, tests/crawls.py) and a plain JSONL,
read by `extract index` into the same store a release gives."""
import json
import lzma
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from cache.cli import app as cache_app
from cache.inspect import verify
from cache.store import open_store
from extract.cli import app as extract_app
from extract.index import run_index

crawls = pytest.importorskip("tests.crawls")

T0 = 1_700_000_000


def _index(root, out, *extra):
    r = CliRunner().invoke(extract_app, ["index", str(root), str(out), "--block", "64", "--workers", "1", *extra])
    return r


def _posts(path) -> dict:
    s = open_store(str(path))
    cols = {k: s[f"posts/{k}"][:] for k in ("id", "caption", "image", "timestamp", "likes", "comments",
                                             "media_count", "influencer")}
    users = s["influencers/username"][:]
    return {pid: {**{k: v[i] for k, v in cols.items() if k != "id"}, "user": users[cols["influencer"][i]]}
            for i, pid in enumerate(cols["id"])}


def _problems(path) -> list[tuple[str, str, str]]:
    s = open_store(str(path))
    return list(zip(s["problems/kind"][:], s["problems/where"][:], s["problems/detail"][:]))


@pytest.fixture
def crawl(tmp_path):
    """A crawl of three profiles covering the three node shapes, carousels, videos, webp, xz and plain JSON,
    a missing profile file, a caption-less post, an edited caption and a profile with no posts."""
    root = tmp_path / "crawl"
    L = crawls.loader(root)
    crawls.save_profile(L, root, "anna", "11", followers=5000, followees=300)
    anna = root / "anna"
    # classic GraphQL image, a carousel of three (the second a video), a video with its thumbnail
    crawls.save_post(L, crawls.graphql_node("101", T0, "sunny beach #travel", likes=50, comments=4), "anna")
    crawls.write_image(anna, crawls.base_name(T0) + ".jpg", 1)
    crawls.save_post(L, crawls.graphql_node("102", T0 + 60, "three views", typename="GraphSidecar",
                                            children=[False, True, False]), "anna")
    for k in (1, 2, 3):
        crawls.write_image(anna, f"{crawls.base_name(T0 + 60)}_{k}.jpg", 10 + k)
    (anna / f"{crawls.base_name(T0 + 60)}_2.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    crawls.save_post(L, crawls.graphql_node("103", T0 + 120, "a clip", typename="GraphVideo"), "anna")
    crawls.write_image(anna, crawls.base_name(T0 + 120) + ".jpg", 3)
    (anna / (crawls.base_name(T0 + 120) + ".mp4")).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    # the logged-in iPhone shape, and 4.16's anonymous shape with a WebP image
    crawls.save_post(L, crawls.iphone_post(L, "104", T0 + 180, "from the phone", likes=7, comments=1), "anna")
    crawls.write_image(anna, crawls.base_name(T0 + 180) + ".jpg", 4)
    crawls.save_post(L, crawls.polaris_post(L, "105", T0 + 240, "polaris caption", likes=9, comments=3), "anna")
    crawls.write_image(anna, crawls.base_name(T0 + 240) + ".webp", 5, fmt="WEBP")
    # a post with no caption (no .txt is written), and one whose caption was edited between two crawls
    crawls.save_post(L, crawls.graphql_node("106", T0 + 300, None), "anna")
    crawls.write_image(anna, crawls.base_name(T0 + 300) + ".jpg", 6)
    crawls.save_post(L, crawls.graphql_node("107", T0 + 360, "first words"), "anna")
    crawls.save_post(L, crawls.graphql_node("107", T0 + 360, "second thoughts"), "anna")
    crawls.write_image(anna, crawls.base_name(T0 + 360) + ".jpg", 7)
    # ben: crawled with --no-compress-json, no profile file
    Lp = crawls.loader(root, compress=False)
    crawls.save_post(Lp, crawls.graphql_node("201", T0 + 10, "plain json post", owner="ben"), "ben")
    crawls.write_image(root / "ben", crawls.base_name(T0 + 10) + ".png", 8, fmt="PNG")
    # carl: a profile with no posts
    crawls.save_profile(L, root, "carl", "33", media_count=12)
    return root


def test_instaloader_crawl_indexes_every_shape(crawl, tmp_path):
    out = tmp_path / "s.zarr"
    r = _index(crawl, out)
    assert r.exit_code == 0, r.output
    assert verify(open_store(str(out))) == []
    s = open_store(str(out))
    assert s.attrs["dataset_format"] == "instaloader"
    assert list(s["influencers/username"][:]) == ["anna", "ben", "carl"]
    assert list(s["influencers/followers"][:]) == [5000, -1, 1000]
    # no posts count in anna's profile or ben's (none): the posts found; carl's profile has media_count
    assert list(s["influencers/posts_total"][:]) == [7, 1, 12]
    assert (s["influencers/release_category"][:] == -1).all()
    posts = _posts(out)
    assert set(posts) == {"101", "102", "103", "104", "105", "106", "107", "201"}
    b = crawls.base_name
    assert posts["101"]["caption"] == "sunny beach #travel" and posts["101"]["likes"] == 50
    assert posts["101"]["comments"] == 4 and posts["101"]["timestamp"] == T0
    assert posts["101"]["image"] == f"anna/{b(T0)}.jpg" and posts["101"]["media_count"] == 1
    assert posts["102"]["media_count"] == 3 and posts["102"]["image"] == f"anna/{b(T0 + 60)}_1.jpg"
    assert posts["103"]["image"] == f"anna/{b(T0 + 120)}.jpg"          # the video's thumbnail
    assert (posts["104"]["caption"], posts["104"]["likes"], posts["104"]["comments"]) == ("from the phone", 7, 1)
    assert posts["104"]["timestamp"] == T0 + 180
    assert (posts["105"]["caption"], posts["105"]["likes"], posts["105"]["comments"]) == ("polaris caption", 9, 3)
    assert posts["105"]["image"].endswith(".webp")
    assert posts["106"]["caption"] == ""
    assert posts["107"]["caption"] == "second thoughts"                  # the edited caption, not _old_01
    assert (crawl / "anna" / f"{b(T0 + 360)}_old_01.txt").exists()
    assert posts["201"]["user"] == "ben" and posts["201"]["image"].endswith(".png")
    spons = dict(zip(s["posts/id"][:], s["posts/sponsored"][:]))
    assert spons["101"] == -1 and spons["105"] == -1      # no sponsor key on these nodes: unknown
    # newest first within an influencer, as for the release
    anna = [pid for pid, p in posts.items() if p["user"] == "anna"]
    assert anna == ["107", "106", "105", "104", "103", "102", "101"]
    kinds = {k for k, _, _ in _problems(out)}
    assert {"profile_missing", "influencer_no_posts", "caption_missing"} <= kinds
    where = {(k, w) for k, w, _ in _problems(out)}
    assert ("profile_missing", "ben") in where and ("influencer_no_posts", "carl") in where
    assert ("caption_missing", f"anna/{b(T0 + 300)}.json.xz") in where
    # no release category exists: --from-release says so in one line
    r = CliRunner().invoke(cache_app, ["labels", str(out), "--from-release", "--per-category", "1"])
    assert r.exit_code == 2 and "no release category" in r.output and r.output.count("\n") == 1, r.output


def test_format_is_detected_or_forced(crawl, tmp_path, sample):
    r = _index(crawl, tmp_path / "a.zarr", "--format", "release")
    assert r.exit_code == 2 and "influencers.txt: missing" in r.output
    r = _index(crawl, tmp_path / "b.zarr", "--format", "instaloader")
    assert r.exit_code == 0, r.output
    # files of two formats in one tree: refused, naming both
    (crawl / "influencers.txt").write_text("Username\tCategory\n")
    r = _index(crawl, tmp_path / "c.zarr")
    assert r.exit_code == 2 and "release, instaloader" in r.output and "--format" in r.output, r.output
    assert not (tmp_path / "c.zarr").exists()
    r = _index(tmp_path / "empty_dir_that_is_missing", tmp_path / "d.zarr")
    assert r.exit_code == 2 and "no such folder" in r.output
    (tmp_path / "empty").mkdir()
    r = _index(tmp_path / "empty", tmp_path / "e.zarr")
    assert r.exit_code == 2 and "no dataset found" in r.output


def test_crawl_bad_inputs_are_recorded_never_a_traceback(crawl, tmp_path):
    anna, b = crawl / "anna", crawls.base_name
    L = crawls.loader(crawl)
    # a truncated .json.xz
    crawls.save_post(L, crawls.graphql_node("301", T0 + 1000, "cut"), "anna")
    meta = anna / f"{b(T0 + 1000)}.json.xz"
    meta.write_bytes(meta.read_bytes()[:40])
    # an xz bomb: a few KB on disk, 48 MiB decompressed (three times the bound)
    bomb = lzma.compress(b'{"node": {"id": "' + b"9" * (48 << 20) + b'"}}', preset=9)
    assert len(bomb) < 100_000
    (anna / f"{b(T0 + 1100)}.json.xz").write_bytes(bomb)
    # JSON of another node_type (a story item saved beside the posts)
    with lzma.open(anna / f"{b(T0 + 1200)}.json.xz", "wt") as f:
        json.dump({"node": {"id": "302", "taken_at_timestamp": T0}, "instaloader": {"node_type": "StoryItem"}}, f)
    # a node with none of the known caption / likes / comments / time keys
    with lzma.open(anna / f"{b(T0 + 1300)}.json.xz", "wt") as f:
        json.dump({"node": {"id": "303", "shortcode": "Zz"}, "instaloader": {"node_type": "Post"}}, f)
    # two profiles claiming one post id
    crawls.save_post(L, crawls.graphql_node("101", T0 + 5, "copied", owner="dora"), "dora")
    # a hashtag folder, and a folder whose name is not valid UTF-8
    crawls.save_post(L, crawls.graphql_node("401", T0 + 7, "tagged"), "#travel")
    os.mkdir(os.path.join(os.fsencode(crawl), b"bad\xffname"))
    with lzma.open(os.path.join(os.fsencode(crawl), b"bad\xffname", b"2020-01-01_00-00-00_UTC.json.xz"), "wt") as f:
        json.dump({"node": {"id": "501"}, "instaloader": {"node_type": "Post"}}, f)
    out = tmp_path / "s.zarr"
    r = _index(crawl, out)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert verify(open_store(str(out))) == []
    probs = _problems(out)
    found = {(k, w) for k, w, _ in probs}
    assert ("info_malformed", f"anna/{b(T0 + 1000)}.json.xz") in found
    bomb_detail = [d for k, w, d in probs if w == f"anna/{b(T0 + 1100)}.json.xz"]
    assert bomb_detail and "decompresses to over" in bomb_detail[0]
    assert ("info_not_a_post", f"anna/{b(T0 + 1200)}.json.xz") in found
    assert ("info_field_missing", f"anna/{b(T0 + 1300)}.json.xz") in found
    assert any(k == "post_id_duplicate" and w == "dora 101" for k, w in found)
    assert ("folder_not_a_profile", "#travel") in found
    assert any(k == "folder_not_a_profile" and "bad" in w for k, w in found)
    posts = _posts(out)
    assert posts["101"]["user"] == "anna" and "401" not in posts and "501" not in posts
    # the node without known keys is kept, its time taken from the file name
    assert posts["303"]["timestamp"] == T0 + 1300 and posts["303"]["likes"] == -1
    users = list(open_store(str(out))["influencers/username"][:])
    assert "dora" in users and "#travel" not in users
    assert sorted(k for k, w in found if w == "dora") == ["influencer_no_posts", "profile_missing"]


def _write_jsonl(root, lines, influencers=None):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "posts.jsonl", "w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n")
    if influencers is not None:
        with open(root / "influencers.jsonl", "w", encoding="utf-8") as f:
            for line in influencers:
                f.write(json.dumps(line) + "\n")


def test_jsonl_dataset(tmp_path):
    root = tmp_path / "j"
    (root / "img").mkdir(parents=True)
    crawls.write_image(root / "img", "a1.jpg", 1)
    crawls.write_image(root / "img", "a2.jpg", 2)
    outside = tmp_path / "secret.jpg"
    crawls.write_image(tmp_path, "secret.jpg", 3)
    lines = [
        {"influencer": "amy", "id": "1", "caption": "hello", "image": ["img/a1.jpg", "img/a2.jpg"],
         "timestamp": T0, "likes": 5, "comments": 1},
        {"influencer": "amy", "id": 2, "image": "img/a2.jpg", "timestamp": T0 + 1, "sponsored": True},  # no caption
        {"influencer": "amy", "id": "3", "caption": "no image", "likes": "many"},          # bad likes
        {"influencer": "bob", "id": "4", "caption": "escape", "image": "../secret.jpg"},
        {"influencer": "bob", "id": "5", "caption": "gone", "image": "img/nothere.jpg"},
        {"influencer": "bob", "id": "1", "caption": "same id as amy's"},
        "{not json",
        {"id": "6"},
        {"influencer": "amy", "id": "1", "caption": "listed twice"},
    ]
    _write_jsonl(root, lines, [{"username": "amy", "followers": 100, "followees": 5, "category": "Travel"},
                               {"username": "cat", "followers": "x", "category": "astrology"}])
    out = tmp_path / "s.zarr"
    r = _index(root, out)
    assert r.exit_code == 0, r.output
    assert verify(open_store(str(out))) == []
    s = open_store(str(out))
    assert s.attrs["dataset_format"] == "jsonl"
    assert list(s["influencers/username"][:]) == ["amy", "cat", "bob"]
    assert list(s["influencers/followers"][:]) == [100, -1, -1]
    assert s["influencers/release_category"][0] == s.attrs["release_categories"].index("travel")
    posts = _posts(out)
    assert set(posts) == {"1", "2", "3", "4", "5"}
    assert posts["1"]["image"] == "img/a1.jpg" and posts["1"]["media_count"] == 2 and posts["1"]["caption"] == "hello"
    assert posts["2"]["caption"] == "" and posts["3"]["likes"] == -1 and posts["3"]["timestamp"] == -1
    assert posts["4"]["image"] == "" and posts["5"]["image"] == ""
    spons = dict(zip(s["posts/id"][:], s["posts/sponsored"][:]))
    assert spons["2"] == 1 and spons["1"] == -1
    found = {(k, w) for k, w, _ in _problems(out)}
    for expected in [("path_outside_dataset", "../secret.jpg"), ("image_missing", "img/nothere.jpg"),
                     ("post_row_malformed", "posts.jsonl:7"), ("post_row_malformed", "posts.jsonl:8"),
                     ("post_duplicate", "posts.jsonl:9"), ("post_id_duplicate", "bob 1"),
                     ("info_field_invalid", "posts.jsonl:3"), ("category_unknown", "influencers.jsonl:2"),
                     ("influencer_not_listed", "posts.jsonl:4")]:
        assert expected in found, (expected, found)
    assert outside.exists()


def test_sample_data_as_instaloader_matches_the_release_sample(tmp_path):
    """The same sample, as a release and as a crawl written by instaloader: the same posts and fields."""
    rel, ig = tmp_path / "rel", tmp_path / "ig"
    args = ["--influencers", "10", "--posts", "8", "--seed", "5", "--image-size", "48", "--clean"]
    assert CliRunner().invoke(extract_app, ["sample-data", str(rel), *args]).exit_code == 0
    r = CliRunner().invoke(extract_app, ["sample-data", str(ig), "--format", "instaloader", *args])
    assert r.exit_code == 0, r.output
    assert (ig / "labels" / "influencers.csv").exists()
    run_index(str(rel), str(tmp_path / "r.zarr"), block=64, workers=1, quiet=True)
    run_index(str(ig), str(tmp_path / "i.zarr"), block=64, workers=1, quiet=True)
    a, b = _posts(tmp_path / "r.zarr"), _posts(tmp_path / "i.zarr")
    assert set(a) == set(b) and len(a) > 50
    for pid in a:
        for k in ("caption", "timestamp", "likes", "comments", "media_count", "user"):
            assert a[pid][k] == b[pid][k], (pid, k, a[pid][k], b[pid][k])
    sa, sb = open_store(str(tmp_path / "r.zarr")), open_store(str(tmp_path / "i.zarr"))
    order = np.argsort(sa["influencers/username"][:])
    assert list(sa["influencers/username"][:][order]) == list(sb["influencers/username"][:])
    assert list(sa["influencers/followers"][:][order]) == list(sb["influencers/followers"][:])
    # the images are the same files
    for pid in list(a)[:10]:
        assert (rel / a[pid]["image"]).read_bytes() == (ig / b[pid]["image"]).read_bytes()
    # hand labels apply to the crawl's store as to the release's
    r = CliRunner().invoke(cache_app, ["labels", str(tmp_path / "i.zarr"), "--influencers",
                                       str(ig / "labels/influencers.csv"), "--posts", str(ig / "labels/posts.csv")])
    assert r.exit_code == 0, r.output


def test_a_run_fitted_on_the_release_predicts_the_same_posts_crawled(tmp_path, tiny_bert, quick_encoder):
    """`heads predict RUN OTHER` across formats: fitted on a release store, predicting an instaloader store of the
    same posts extracted with the same encoders gives the same labels; another encoder's store is refused."""
    from extract.images import run_images
    from extract.text import run_text
    from heads.cli import app as heads_app
    args = ["--influencers", "40", "--posts", "8", "--seed", "2", "--image-size", "48", "--clean"]
    rel, ig = tmp_path / "rel", tmp_path / "ig"
    assert CliRunner().invoke(extract_app, ["sample-data", str(rel), *args]).exit_code == 0
    assert CliRunner().invoke(extract_app, ["sample-data", str(ig), "--format", "instaloader", *args]).exit_code == 0
    stores = {}
    for name, root in (("rel", rel), ("ig", ig)):
        path = str(tmp_path / f"{name}.zarr")
        run_index(str(root), path, block=64, workers=1, quiet=True)
        run_text(path, "0/1", model=tiny_bert, precision="fp32", device="cpu", batch_tokens=512, quiet=True)
        run_images(path, "0/1", encoder_path=quick_encoder[0], workers=0, device="cpu", batch_size=16, quiet=True)
        stores[name] = path
    r = CliRunner().invoke(cache_app, ["labels", stores["rel"], "--influencers", str(rel / "labels/influencers.csv"),
                                       "--posts", str(rel / "labels/posts.csv")])
    assert r.exit_code == 0, r.output
    run = str(tmp_path / "run")
    r = CliRunner().invoke(heads_app, ["fit", stores["rel"], "--out", run, "--max-steps", "30", "--restarts", "1", "--instance-loss", "off",
                                       "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    labels = {}
    for name, path in stores.items():
        r = CliRunner().invoke(heads_app, ["predict", run, path, "--out", str(tmp_path / f"pred-{name}")])
        assert r.exit_code == 0, r.output
        s = open_store(path)
        labels[name] = dict(zip(s["influencers/username"][:], s["predictions/influencer_label"][:]))
    assert set(labels["rel"]) == set(labels["ig"]) and len(labels["ig"]) == 40
    same = sum(labels["rel"][u] == labels["ig"][u] for u in labels["ig"])
    assert same == 40, (same, labels)
    # features from another encoder: refused in one line
    import zarr
    g = zarr.open_group(stores["ig"], mode="r+")
    g["features/text"].attrs["encoder"] = {**dict(g["features/text"].attrs["encoder"]), "model": "another-bert"}
    r = CliRunner().invoke(heads_app, ["predict", run, stores["ig"], "--out", str(tmp_path / "pred-x"), "--overwrite"])
    assert r.exit_code == 2 and "another encoder" in r.output and r.output.count("\n") == 1, r.output


def test_links_inside_a_profile_folder_are_not_followed(crawl, tmp_path):
    """A crawl's files are read only where they are: a link among a profile's files (to a file outside the
    crawl) is recorded, never read."""
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"node": {"id": "999", "caption": "SECRET", "taken_at_timestamp": T0},
                                  "instaloader": {"node_type": "Post"}}))
    b = crawls.base_name(T0 + 5000)
    os.symlink(secret, crawl / "anna" / f"{b}.json")
    os.symlink(tmp_path / "secret.jpg", crawl / "anna" / f"{b}.jpg")
    out = tmp_path / "s.zarr"
    assert _index(crawl, out).exit_code == 0
    posts = _posts(out)
    assert "999" not in posts and not any("SECRET" in p["caption"] for p in posts.values())
    found = {(k, w) for k, w, _ in _problems(out)}
    assert ("link_not_followed", f"anna/{b}.json") in found and ("link_not_followed", f"anna/{b}.jpg") in found


def test_the_crawl_sample_plants_a_crawls_oddities_and_the_fallback_writer_writes_the_same(tmp_path, monkeypatch):
    import extract.sample_crawl as sample_crawl
    args = dict(influencers=10, posts=8, seed=4, image_size=32)
    sample_crawl.make_crawl_sample(str(tmp_path / "ig"), **args)
    names = [n for _, _, files in os.walk(tmp_path / "ig") for n in files]
    assert any(n.endswith(".webp") for n in names) and any(n.endswith("_UTC.json") for n in names)
    assert any("_old_01.txt" in n for n in names) and any(n.startswith("iterator_") for n in names)
    run_index(str(tmp_path / "ig"), str(tmp_path / "a.zarr"), block=64, workers=1, quiet=True)
    kinds = {k for k, _, _ in _problems(tmp_path / "a.zarr")}
    assert {"profile_missing", "crawl_interrupted", "info_malformed", "folder_not_a_profile"} <= kinds, kinds
    # without instaloader installed, the sample's own writer lays out the same crawl
    monkeypatch.setattr(sample_crawl, "_writer", lambda out, compress: None)
    sample_crawl.make_crawl_sample(str(tmp_path / "own"), **args)
    run_index(str(tmp_path / "own"), str(tmp_path / "b.zarr"), block=64, workers=1, quiet=True)
    a, b = _posts(tmp_path / "a.zarr"), _posts(tmp_path / "b.zarr")
    assert a.keys() == b.keys()
    for pid in a:
        assert {k: v for k, v in a[pid].items() if k != "influencer"} == \
            {k: v for k, v in b[pid].items() if k != "influencer"}, pid
