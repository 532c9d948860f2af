"""Shared helpers of the benchmark scripts: run a measured function in a fresh process."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def in_subprocess(code: str) -> dict:
    """Run `code` (which must print one JSON line last) in a fresh interpreter; add peak RSS.

    Peak memory is that process's own ru_maxrss and the largest of its children's, in MiB,
    so one measurement is never polluted by an earlier one in the same interpreter.
    """
    wrapper = textwrap.dedent("""
        import json, resource, sys
        def _peak():
            s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            return s, c
    """) + textwrap.dedent(code) + textwrap.dedent("""
        _s, _c = _peak()
        result["peak_rss_mib"] = round(_s, 1)
        result["peak_child_rss_mib"] = round(_c, 1)
        print(json.dumps(result))
    """)
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
