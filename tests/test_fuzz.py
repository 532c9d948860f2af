"""Property-based fuzzing of the release reader and the label reader (hypothesis).

For every generated corruption of influencers.txt, the mapping, one .info file or a label CSV
the invariant is: `extract index` finishes with the bad item in problems/ (or stops with one
clear error naming the file), never a traceback or a hang; it reads nothing outside the dataset
(a canary outside it never reaches the store), writes nothing outside STORE, leaves the dataset
untouched, and every influencer the corruption did not touch is stored exactly as in a clean
run. `cache labels` either stores the file or refuses it whole with one line naming the file,
and `cache verify` finds no mixed label state either way.

`make test` runs a few examples per property (FUZZ_EXAMPLES, default 15); `make fuzz` runs many.
"""
import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.inspect import verify
from cache.labels import LabelError, apply_labels
from cache.store import StoreError, open_store
from extract import release
from extract.index import run_index
from tests.hostile import USERS, info_json, post_ids, posts_by_user, write_dataset

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

HOSTILE_TEXT = st.sampled_from([
    "../../outside/secret", "../outside/secret-42.info", "/etc/passwd", "..", ".", "a/b", "a\\b", "\ud83d",
    "\x00", "[" * 5000, '{"a":' * 3000, "[" + "-" * 5000 + "1]", "['" + "x" * 300 + "']", "1e400", "true",
    str(10 ** 30), "NaN", "-1", "", "\t\t\t", "=" * 40, "['42.jpg'", "['a.jpg' 'b.jpg']", "[1+1]"])
FRAGMENT = st.one_of(HOSTILE_TEXT, st.text(max_size=60), st.text(st.characters(min_codepoint=0xD800,
                                                                                max_codepoint=0xDFFF), max_size=3))
JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10 ** 25, 10 ** 25),
                                    st.floats(allow_nan=False), st.text(max_size=20), HOSTILE_TEXT),
                          lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                  st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=8)


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


@st.composite
def corruption(draw):
    """(relative file, new bytes, users the change may affect)."""
    target = draw(st.sampled_from(["influencers", "mapping", "info", "info_field"]))
    u = draw(st.integers(0, len(USERS) - 1))
    user, pid = USERS[u][0], post_ids(u)[draw(st.integers(0, len(post_ids(u)) - 1))]
    if target in ("influencers", "mapping"):
        name = release.INFLUENCERS_FILE if target == "influencers" else release.MAPPING_FILE
        return name, draw(st.sampled_from(["replace_line", "append_line", "splice_bytes", "truncate"])), \
            draw(FRAGMENT), draw(st.binary(max_size=40)), u
    name = f"{release.INFO_DIR}/{user}-{pid}.info"
    if target == "info":
        return name, draw(st.sampled_from(["splice_bytes", "truncate", "replace_all"])), draw(FRAGMENT), \
            draw(st.binary(max_size=40)), u
    field = draw(st.sampled_from(["id", "taken_at_timestamp", "edge_media_to_caption", "edge_media_preview_like",
                                  "edge_media_to_parent_comment", "is_video", "extra"]))
    return name, ("field", field), draw(JSON_VALUE), b"", u


def _apply(root, files, change, where_frac=0.5) -> set[str]:
    """Write the corruption; returns the usernames it may affect."""
    name, op, text, blob, u = change
    path = os.path.join(root, name)
    data = files[name]
    touched = {USERS[u][0]}
    if isinstance(op, tuple):
        node = json.loads(data)
        node[op[1]] = text
        new = json.dumps(node, ensure_ascii=False).encode("utf-8", "surrogatepass")
    elif op == "replace_line":
        lines = data.split(b"\n")
        k = 2 + u if name == release.INFLUENCERS_FILE else 1 + u * len(post_ids(u))
        touched = {USERS[u][0], _raw(text).decode("utf-8", "replace").split("\t")[0].strip()}
        lines[k] = _raw(text)
        new = b"\n".join(lines)
    elif op == "append_line":
        new = data + _raw(text) + b"\n"
        touched |= {_raw(text).decode("utf-8", "replace").split("\t")[0].strip()}
    elif op == "splice_bytes":
        at = int(len(data) * where_frac)
        new = data[:at] + blob + _raw(text) + data[at:]
        touched = {x for x, _ in USERS} if name in (release.INFLUENCERS_FILE, release.MAPPING_FILE) else touched
    elif op == "truncate":
        new = data[:int(len(data) * where_frac)]
        touched = {x for x, _ in USERS} if name in (release.INFLUENCERS_FILE, release.MAPPING_FILE) else touched
    else:
        new = _raw(text) + blob
    with open(path, "wb") as f:
        f.write(new)
    return touched


def _snapshot(root: str) -> dict:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[p] = open(p, "rb").read() if os.path.isfile(p) else None
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    files = write_dataset(str(base / "data"))["files"]
    run_index(str(base / "data"), str(base / "s.zarr"), block=256, workers=1, quiet=True)
    return files, posts_by_user(open_store(str(base / "s.zarr")))


@FUZZ
@given(change=corruption(), where=st.floats(0, 1))
def test_index_survives_any_single_corruption(clean, tmp_path_factory, change, where):
    files, reference = clean
    base = tmp_path_factory.mktemp("fuzz")
    root, store = str(base / "data"), str(base / "s.zarr")
    write_dataset(root)
    os.makedirs(base / "outside")
    (base / "outside" / "secret-42.info").write_text(json.dumps(info_json("42", "CANARY", 1_600_000_000)))
    touched = _apply(root, files, change, where)
    before = _snapshot(root)
    try:
        run_index(root, store, block=256, workers=1, quiet=True)
    except (StoreError, FileNotFoundError) as e:     # a whole-dataset refusal: one line, naming the file
        assert "\n" not in str(e) and root in str(e), e
        return
    finally:
        assert _snapshot(root) == before, "the dataset was modified"
        assert sorted(os.listdir(base)) == sorted(["data", "outside"] + (["s.zarr"] if os.path.exists(store) else []))
    s = open_store(store)
    assert verify(s) == []
    got = posts_by_user(s)
    assert not any("CANARY" in str(p[1]) for posts in got.values() for p in posts), "read outside the dataset"
    for user, posts in reference.items():
        if user not in touched:
            assert got.get(user) == posts, (user, change)
    shutil.rmtree(base, ignore_errors=True)


LABEL_ROW = st.one_of(
    st.tuples(st.sampled_from([u for u, _ in USERS] + ["nobody", "", "../x"]),
              st.sampled_from(["food", "travel", "beauty", "FOOD ", "nonsense", ""]),
              st.sampled_from(["", "train", "val", "test", "bogus"])).map(lambda t: ",".join(t)),
    FRAGMENT)


@pytest.fixture(scope="module")
def label_store(tmp_path_factory):
    base = tmp_path_factory.mktemp("labels")
    write_dataset(str(base / "data"))
    run_index(str(base / "data"), str(base / "s.zarr"), block=256, workers=1, quiet=True)
    return str(base / "s.zarr")


@FUZZ
@given(header=st.sampled_from(["username,category", "username,category,split", "user,cat", "", "username"]),
       rows=st.lists(LABEL_ROW, max_size=6), junk=st.binary(max_size=8))
def test_label_files_are_stored_whole_or_refused_whole(label_store, tmp_path_factory, header, rows, junk):
    path = tmp_path_factory.mktemp("csv") / "influencers.csv"
    path.write_bytes(_raw(header + "\n" + "\n".join(rows) + "\n") + junk)
    s = open_store(label_store, "r+")
    before = (s["influencers/label"][:].copy(), s["influencers/split"][:].copy())
    try:
        apply_labels(s, str(path), None)
    except LabelError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e), e
        after = (s["influencers/label"][:], s["influencers/split"][:])
        assert (after[0] == before[0]).all() and (after[1] == before[1]).all(), "a refused file changed labels"
    assert verify(open_store(label_store)) == []
