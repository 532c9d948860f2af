import hashlib
import os

import pytest

from extract import release
from extract.sample import make_sample


def test_image_list_is_parsed_without_eval():
    assert release.parse_image_list("['1.jpg', '2.jpg']") == ["1.jpg", "2.jpg"]
    assert release.parse_image_list("") == []
    with pytest.raises(ValueError):
        release.parse_image_list("__import__('os').system('true')")
    with pytest.raises(ValueError):
        release.parse_image_list("[1, 2]")


def test_parse_info_fields_and_failures():
    node = ('{"id": "42", "taken_at_timestamp": 1500000000, "edge_media_to_caption": {"edges": '
            '[{"node": {"text": "hi #food"}}]}, "edge_media_preview_like": {"count": 7}, '
            '"edge_media_preview_comment": {"count": 3}}')
    post = release.parse_info(node)
    assert post["id"] == "42" and post["caption"] == "hi #food" and post["likes"] == 7 and post["comments"] == 3
    no_caption = release.parse_info('{"id": "1", "taken_at_timestamp": 5, "edge_media_to_caption": {"edges": []}}')
    assert no_caption["caption"] == "" and no_caption["caption_missing"]
    for bad in ('{"id": "1", "edge_media', "[1, 2]", '{"id": "1"}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            release.parse_info(bad)


def test_influencers_txt_problems(sample):
    rows, problems = release.read_influencers(sample)
    kinds = {p[0] for p in problems}
    assert {"category_misspelt", "influencer_count_missing"} <= kinds
    assert all(r.category in release.RELEASE_CATEGORIES or r.category == "" for r in rows)
    assert any("." in r.username or "_" in r.username for r in rows)
    missing = [r for r in rows if r.posts_total == -1]
    assert missing, "the planted row with #Posts missing reads as -1"


def test_split_info_name_keeps_dots_and_underscores():
    assert release.split_info_name("anna._x1-123.info") == ("anna._x1", "123.info")
    assert release.split_info_name("README.txt") is None


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            h.update(f.encode())
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_sample_is_deterministic_and_in_release_format(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    make_sample(a, influencers=6, posts=5, seed=1, image_size=48)
    make_sample(b, influencers=6, posts=5, seed=1, image_size=48)
    make_sample(c, influencers=6, posts=5, seed=2, image_size=48)
    assert _digest(a) == _digest(b) != _digest(c)
    with open(os.path.join(a, release.INFLUENCERS_FILE)) as f:
        header, rule = f.readline(), f.readline()
    assert header.split("\t")[:2] == ["Username", "Category"] and set(rule.strip()) == {"="}
    with open(os.path.join(a, release.MAPPING_FILE)) as f:
        assert f.readline().strip().split("\t") == ["influencer_name", "JSON_PostMetadata_file_name", "Image_file_name"]
        user, info, images = f.readline().rstrip("\n").split("\t")
    assert os.path.exists(release.info_path(a, user, info))
    first = release.parse_image_list(images)[0]
    assert os.path.exists(os.path.join(a, release.image_relpath(user, first)))


def test_sample_has_instagram_like_variety(sample):
    import json
    kinds, lengths = set(), []
    for name in os.listdir(os.path.join(sample, "info")):
        with open(os.path.join(sample, "info", name), encoding="utf-8") as f:
            try:
                node = json.load(f)
            except json.JSONDecodeError:
                continue
        kinds.add(node["__typename"])
        edges = node["edge_media_to_caption"]["edges"]
        lengths.append(len(edges[0]["node"]["text"].split()) if edges else -1)
    assert kinds == {"GraphImage", "GraphSidecar", "GraphVideo"}
    assert min(lengths) <= 0 and max(lengths) > 128 and -1 in lengths
