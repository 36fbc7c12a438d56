"""Torch's thread count from the cgroup CPU quota, against fake cgroup trees (v2 and v1)."""

from pathlib import Path

import pytest

from emotion_stream.worker.model.threads import cpu_quota, torch_threads


def _v2(root: Path, quotas: dict[str, str]) -> Path:
    """A cgroup v2 tree: ``quotas`` maps a cgroup's path (``""`` the root) to its cpu.max."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for path, text in quotas.items():
        directory = root / path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.max").write_text(text + "\n")
    return root


def _v1(root: Path, quotas: dict[str, tuple[int, int]], name: str = "cpu,cpuacct") -> Path:
    for path, (quota, period) in quotas.items():
        directory = root / name / path
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (directory / "cpu.cfs_period_us").write_text(f"{period}\n")
    return root


IN_NAMESPACE = "0::/\n"  # a container with its own cgroup namespace sees itself at the root


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("200000 100000", 2),
        ("250000 100000", 2),
        ("50000 100000", 1),
        ("1600000 100000", 8),
        ("150000 50000", 3),
    ],
)
def test_v2_quota_rounds_down_to_at_least_one_and_at_most_the_cpus(tmp_path, cpu_max, expected):
    root = _v2(tmp_path, {"": cpu_max})
    threads, why = torch_threads(None, root=root, proc_cgroup=IN_NAMESPACE, cpu_count=8)
    assert threads == expected
    assert "CPU quota" in why and str(root) in why


def test_v2_without_a_quota_leaves_torch_its_default(tmp_path):
    root = _v2(tmp_path, {"": "max 100000"})
    threads, why = torch_threads(None, root=root, proc_cgroup=IN_NAMESPACE, cpu_count=8)
    assert threads is None and "no CPU quota" in why


def test_v2_the_tightest_of_the_cgroup_and_its_parents_counts(tmp_path):
    # The process's own cgroup has no limit; its pod's has 1.5 CPUs, the node's slice 6.
    root = _v2(
        tmp_path,
        {
            "": "max 100000",
            "kubepods": "600000 100000",
            "kubepods/pod1": "150000 100000",
            "kubepods/pod1/c1": "max 100000",
        },
    )
    assert cpu_quota(root, "0::/kubepods/pod1/c1\n") == (1.5, str(root / "kubepods/pod1"))
    assert torch_threads(None, root=root, proc_cgroup="0::/kubepods/pod1/c1\n", cpu_count=16)[0] == 1


@pytest.mark.parametrize(("quota", "expected"), [(200000, 2), (350000, 3), (-1, None)])
def test_v1_quota_and_period(tmp_path, quota, expected):
    root = _v1(tmp_path, {"": (quota, 100000)})
    proc = "12:cpu,cpuacct:/\n11:memory:/\n"
    assert torch_threads(None, root=root, proc_cgroup=proc, cpu_count=8)[0] == expected


def test_v1_follows_the_process_path_in_the_cpu_hierarchy(tmp_path):
    root = _v1(tmp_path, {"": (-1, 100000), "docker/abc": (100000, 100000)}, name="cpu")
    proc = "4:memory:/docker/abc\n3:cpu:/docker/abc\n2:cpuacct:/docker/abc\n"
    threads, why = torch_threads(None, root=root, proc_cgroup=proc, cpu_count=4)
    assert threads == 1 and str(root / "cpu/docker/abc") in why


def test_the_setting_overrides_the_quota(tmp_path):
    root = _v2(tmp_path, {"": "100000 100000"})
    assert torch_threads(6, root=root, proc_cgroup=IN_NAMESPACE, cpu_count=8) == (6, "EMOTION_TORCH_THREADS")


def test_no_cgroup_filesystem_means_no_quota(tmp_path):
    assert cpu_quota(tmp_path / "missing", "") is None
    assert torch_threads(None, root=tmp_path / "missing", proc_cgroup="", cpu_count=2)[0] is None


def test_garbage_in_the_files_is_no_quota(tmp_path):
    root = _v2(tmp_path, {"": "lots 0"})
    assert cpu_quota(root, IN_NAMESPACE) is None
