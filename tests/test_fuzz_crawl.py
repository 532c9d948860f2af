"""Property-based fuzzing of the instaloader and JSONL readers (hypothesis): for every generated
corruption of one crawl file (a post's `.json.xz` or `.json`, a profile file, a caption, posts.jsonl), or
a node whose fields hold hostile JSON values, `extract index` finishes with the bad item in problems/, never
a traceback; the store verifies; every post the corruption did not touch is stored as in a clean run.

`make test` runs a few examples per property (FUZZ_EXAMPLES, default 15); `make fuzz` runs many.
"""
import json
import lzma
import os
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.inspect import verify
from cache.store import open_store
from extract.index import run_index
from tests.test_fuzz import FUZZ, JSON_VALUE

crawls = pytest.importorskip("tests.crawls")
T0 = 1_600_000_000
USERS = ["amy", "bo", "cy"]


@pytest.fixture(scope="module")
def clean_crawl(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-crawl") / "crawl"
    L, Lp = crawls.loader(root), crawls.loader(root, compress=False)
    for u, user in enumerate(USERS):
        crawls.save_profile(L if u != 1 else Lp, root, user, str(10 + u), followers=100 * (u + 1))
        for k in range(4):
            ts = T0 + 100 * u + k
            crawls.save_post(L if u != 1 else Lp, crawls.graphql_node(f"{u}{k}", ts, f"post {u} {k}", owner=user), user)
            crawls.write_image(root / user, crawls.base_name(ts) + ".jpg", seed=u * 10 + k)
    jl = root.parent / "jsonl"
    jl.mkdir()
    with open(jl / "posts.jsonl", "w") as f:
        for u, user in enumerate(USERS):
            for k in range(4):
                f.write(json.dumps({"influencer": user, "id": f"{u}{k}", "caption": f"post {u} {k}",
                                    "timestamp": T0 + k, "likes": k}) + "\n")
    ref = {}
    for name, r in (("crawl", root), ("jsonl", jl)):
        run_index(str(r), str(root.parent / f"ref-{name}.zarr"), block=16, workers=1, quiet=True)
        s = open_store(str(root.parent / f"ref-{name}.zarr"))
        ref[name] = {str(p): (str(c), int(t)) for p, c, t in zip(s["posts/id"][:], s["posts/caption"][:],
                                                                  s["posts/timestamp"][:])}
    return {"crawl": root, "jsonl": jl, "ref": ref}


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f.endswith((".json.xz", ".json", ".txt")))


@st.composite
def crawl_corruption(draw):
    how = draw(st.sampled_from(["truncate", "splice", "replace_json", "field"]))
    return how, draw(st.integers(0, 10_000)), draw(st.binary(max_size=40)), draw(JSON_VALUE), \
        draw(st.sampled_from(["id", "caption", "taken_at_timestamp", "date", "edge_media_preview_like",
                              "edge_media_to_caption", "edge_sidecar_to_children", "node", "instaloader"]))


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(lzma.compress(data) if path.endswith(".xz") else data)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    return lzma.decompress(raw) if path.endswith(".xz") else raw


@FUZZ
@given(c=crawl_corruption())
def test_any_single_crawl_corruption_is_recorded_never_a_traceback(clean_crawl, tmp_path_factory, c):
    how, pick, junk, value, field = c
    tmp = tmp_path_factory.mktemp("case")
    root = tmp / "crawl"
    shutil.copytree(clean_crawl["crawl"], root)
    files = _files(root)
    rel = files[pick % len(files)]
    path = os.path.join(root, rel)
    if how == "truncate":
        raw = open(path, "rb").read()
        open(path, "wb").write(raw[:pick % max(1, len(raw))])
    elif how == "splice":
        raw = bytearray(open(path, "rb").read())
        at = pick % max(1, len(raw))
        open(path, "wb").write(bytes(raw[:at]) + junk + bytes(raw[at + len(junk):]))
    elif how == "replace_json" and rel.endswith((".json", ".json.xz")):
        _write(path, json.dumps(value).encode())
    elif rel.endswith((".json", ".json.xz")):
        try:
            doc = json.loads(_read(path))
        except ValueError:
            doc = {}
        target = doc.get("node", doc) if isinstance(doc, dict) else doc
        if isinstance(target, dict):
            target[field] = value
        _write(path, json.dumps(doc).encode())
    out = tmp / "s.zarr"
    run_index(str(root), str(out), block=16, workers=1, quiet=True)
    s = open_store(str(out))
    assert verify(s) == []
    touched = rel.split(os.sep)[0]
    users = s["influencers/username"][:]
    got = {str(p): (str(cap), int(t), str(users[i])) for p, cap, t, i in
           zip(s["posts/id"][:], s["posts/caption"][:], s["posts/timestamp"][:], s["posts/influencer"][:])}
    for pid, (cap, t) in clean_crawl["ref"]["crawl"].items():
        owner = USERS[int(pid[0])]
        if owner != touched:
            assert got.get(pid) == (cap, t, owner), (pid, rel, how)


@FUZZ
@given(line=st.one_of(JSON_VALUE.map(json.dumps), st.text(max_size=80)),
       record=st.dictionaries(st.sampled_from(["influencer", "id", "caption", "image", "timestamp", "likes",
                                               "comments", "sponsored"]), JSON_VALUE, max_size=8))
def test_any_jsonl_line_is_recorded_never_a_traceback(clean_crawl, tmp_path_factory, line, record):
    tmp = tmp_path_factory.mktemp("jcase")
    root = tmp / "jsonl"
    shutil.copytree(clean_crawl["jsonl"], root)
    with open(root / "posts.jsonl", "a", encoding="utf-8", errors="surrogatepass") as f:
        f.write(line.replace("\n", " ") + "\n" + json.dumps(record) + "\n")
    out = tmp / "s.zarr"
    run_index(str(root), str(out), block=16, workers=1, quiet=True)
    s = open_store(str(out))
    assert verify(s) == []
    got = dict(zip((str(p) for p in s["posts/id"][:]), (str(c) for c in s["posts/caption"][:])))
    for pid, (cap, _) in clean_crawl["ref"]["jsonl"].items():
        assert got.get(pid) == cap, pid
