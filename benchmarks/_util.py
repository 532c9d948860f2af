"""Shared helpers of the benchmark scripts: run a measured function in a fresh process."""
from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap


def in_subprocess(code: str) -> dict:
    """Run `code` (which must print one JSON line last) in a fresh interpreter; add peak RSS.

    Peak memory is that process's own high-water mark (VmHWM) and the largest of its children's
    ru_maxrss, in MiB, so one measurement is never polluted by an earlier one in the same interpreter
    (nor by the benchmark process itself: ru_maxrss survives exec on Linux, VmHWM does not).
    """
    wrapper = textwrap.dedent("""
        import json, resource, sys
        def _peak():
            # VmHWM is this process's own high-water mark; ru_maxrss is carried across exec on Linux,
            # so it would report the (possibly larger) RSS of the benchmark process that started us.
            s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            try:
                with open("/proc/self/status") as f:
                    s = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
            except (OSError, StopIteration):
                pass
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


@contextlib.contextmanager
def scratch(prefix: str, keep: bool = False):
    """A temporary folder for a benchmark's stores, removed at the end unless `keep`."""
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
