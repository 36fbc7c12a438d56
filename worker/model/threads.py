"""How many threads torch gets: the CPUs the container may use, not the CPUs the machine has.

Torch starts one thread per core it sees, and in a container it sees the whole node's. Under a
CPU quota (a Kubernetes CPU limit, `docker run --cpus`) those threads share the few CPUs'
worth of time the quota allows: the kernel stops all of them once the quota is spent in each
period, and a forward pass whose threads wait at a barrier waits for the slowest throttled
one. One thread per CPU of the quota avoids it. The Downward API's `limits.cpu` is no
substitute: it rounds a fraction up (2.5 CPUs gives 3 threads for 2.5 CPUs of time) and gives
the node's CPU count when there is no limit.

The quota is read from the cgroup the process runs in: cgroup v2's `cpu.max`
("QUOTA PERIOD", or "max PERIOD" for none) or v1's `cpu.cfs_quota_us` and `cpu.cfs_period_us`
(-1 for none), on the process's own cgroup and each of its ancestors (a limit set on a parent
binds the children too; the tightest one counts). Fractions round down, to at least 1 thread
and at most the CPUs the machine has. EMOTION_TORCH_THREADS, when set, wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_V1_CPU_DIRS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


def _ancestors(relative: str) -> list[str]:
    """``/a/b`` -> [``a/b``, ``a``, ``""``]: a cgroup's path and its parents', under the root."""
    parts = [p for p in relative.split("/") if p]
    return ["/".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _membership(proc_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """From /proc/self/cgroup: the v2 path (the ``0::`` line) and the v1 paths by controller."""
    v2, v1 = None, {}
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path
        for controller in controllers.split(","):
            if controller:
                v1[controller] = path
    return v2, v1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        return int(quota) / int(period or 100000)
    except (ValueError, ZeroDivisionError):
        return None


def _v1_quota(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    try:
        if quota is None or period is None or int(quota) <= 0:
            return None
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> tuple[float, str] | None:
    """The CPUs' worth of time the cgroup quota allows this process, and the file that says so;
    None without a quota.

    ``root`` is where the cgroup filesystem is mounted, ``proc_cgroup`` the text of
    /proc/self/cgroup (read when None); both can point at a fake tree in tests.
    """
    if proc_cgroup is None:
        proc_cgroup = _read(PROC_SELF_CGROUP) or ""
    v2_path, v1_paths = _membership(proc_cgroup)
    candidates: list[tuple[Path, object]] = []
    if (root / "cgroup.controllers").exists():  # the unified (v2) hierarchy is mounted here
        # In a container with its own cgroup namespace the process's path reads "/" and the
        # root is its own cgroup; otherwise the path leads from the root to it.
        for relative in _ancestors(v2_path or "/"):
            candidates.append((root / relative, _v2_quota))
    else:
        for name in _V1_CPU_DIRS:
            base = root / name
            if base.is_dir():
                for relative in _ancestors(v1_paths.get("cpu", "/")):
                    candidates.append((base / relative, _v1_quota))
                break
    found = []
    for directory, read in candidates:
        quota = read(directory)  # type: ignore[operator]
        if quota is not None:
            found.append((quota, str(directory)))
    return min(found) if found else None


def torch_threads(
    configured: int | None,
    *,
    root: Path = CGROUP_ROOT,
    proc_cgroup: str | None = None,
    cpu_count: int | None = None,
) -> tuple[int | None, str]:
    """The thread count for torch and why: ``configured`` (EMOTION_TORCH_THREADS) if set, else
    the cgroup's CPU quota rounded down (at least 1, at most the machine's CPUs), else None
    (torch's own choice: no quota to go by)."""
    if configured:
        return configured, "EMOTION_TORCH_THREADS"
    cpus = cpu_count or os.cpu_count() or 1
    quota = cpu_quota(root, proc_cgroup)
    if quota is None:
        return None, f"no CPU quota in the cgroup: torch's default for {cpus} CPUs"
    allowed, source = quota
    threads = max(1, min(cpus, math.floor(allowed)))
    return threads, f"CPU quota of {allowed:g} CPUs ({source}), of {cpus} on the machine"
