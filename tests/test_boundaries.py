"""The packages' boundaries (DESIGN.md, issue #16): `runtime` imports nothing of the project, `cache`
only `runtime`, `baselines` nothing of `heads`; and no module grows past 400 lines."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = {"runtime", "cache", "extract", "heads", "baselines"}
ALLOWED = {"runtime": {"runtime"}, "cache": {"runtime", "cache"}, "baselines": {"runtime", "cache", "baselines"}}


def _modules(package: str):
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(dirpath, f)


def _imports(path: str) -> set[str]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = set()
    for node in ast.walk(tree):        # function-level imports count too
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    wrong = {os.path.relpath(p, ROOT): sorted(_imports(p) - ALLOWED[package]) for p in _modules(package)}
    assert not {k: v for k, v in wrong.items() if v}


def test_no_module_over_400_lines():
    """Every module outside tests/: the packages, the benchmarks and the scripts (issue #29)."""
    long = {os.path.relpath(p, ROOT): n for pkg in PROJECT | {"benchmarks", "scripts"} for p in _modules(pkg)
            if (n := sum(1 for _ in open(p, encoding="utf-8"))) > 400}
    assert not long


def test_no_function_takes_more_than_7_positional_parameters():
    """Typed plumbing (issue #29): past seven, parameters are keyword-only (or a dataclass)."""
    many = {}
    for pkg in PROJECT:
        for p in _modules(pkg):
            for node in ast.walk(ast.parse(open(p, encoding="utf-8").read(), p)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names = [a.arg for a in node.args.posonlyargs + node.args.args]
                    n = len(names) - (names[:1] in (["self"], ["cls"]))
                    if n > 7:
                        many[f"{os.path.relpath(p, ROOT)}:{node.name}"] = n
    assert not many
