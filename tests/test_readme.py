"""The README is the front door (#29): at most 300 lines of at most 200 characters, no link that leaves the
repository, its Python example runs, and its sample recipe runs as written."""
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def _text() -> str:
    return open(README, encoding="utf-8").read()


def _block(after: str, lang: str = "") -> str:
    text = _text()
    start = text.index(after)
    m = re.compile(r"```" + lang + r"\n(.*?)```", re.S).search(text, start)
    return m.group(1)


def test_the_readme_is_short_and_its_links_stay_in_the_repository():
    lines = _text().splitlines()
    assert len(lines) <= 300, len(lines)
    assert not [n for n, line in enumerate(lines, 1) if len(line) > 200]
    for target in re.findall(r"\]\(([^)]+)\)", _text()):
        assert not re.match(r"^[a-z]+:", target) and not target.startswith(("/", "..")), target
        assert os.path.exists(os.path.join(ROOT, target.split("#")[0])), target
    for doc in ("docs/design.md", "docs/dataset.md", "docs/commands.md", "docs/benchmarks.md", "docs/testing.md"):
        text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
        assert "../shared" not in text and "DESIGN.md" not in text, doc


def test_the_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = _block("## Python API", "python")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    first, second = out.stdout.splitlines()[:2]
    assert first.startswith("test accuracy") and float(first.split()[-1]) >= 0.8, out.stdout
    assert second.startswith("attention of the first test bag"), out.stdout


@pytest.mark.slow
def test_the_sample_recipe_runs_as_written(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], HF_HUB_OFFLINE="1")
    for line in _block("**The sample, by hand**").strip().splitlines():
        r = subprocess.run(shlex.split(line.split("#")[0]), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, (line, r.stderr[-2000:])
    assert os.path.isfile(tmp_path / "report" / "index.html")
