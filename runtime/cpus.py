"""How many CPUs a job may use, for sizing its worker pools (no torch: index workers import it)."""
from __future__ import annotations

import math
import os

CGROUP = "/sys/fs/cgroup"


def usable_cpus(cgroup: str = CGROUP) -> int:
    """The CPUs this process may use, for sizing worker pools: its CPU affinity (a SLURM allocation's
    or taskset's cpuset), capped by a CPU quota (a Kubernetes CPU limit, `docker run --cpus`; cgroup
    v2 `cpu.max` or v1 `cpu/cpu.cfs_quota_us`). os.cpu_count() counts the host's cores instead: a pod
    limited to 4 CPUs on a 128-core node would start 16 decoding workers on them."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cpu_quota(cgroup)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cpu_quota(cgroup: str) -> float | None:
    """CPUs' worth of time the cgroup may use, or None without a quota (or a readable cgroup)."""
    try:
        with open(os.path.join(cgroup, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(cgroup, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(cgroup, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
