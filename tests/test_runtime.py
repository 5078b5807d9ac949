"""pimm_fast.runtime: OpenMP wait defaults that honour the user's own, the relaunch, thread counts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pimm_fast import runtime

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in runtime.WAIT_VARIABLES + (runtime.RELAUNCH_MARKER,)}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def test_defaults_only_where_the_user_chose_nothing():
    assert runtime.openmp_env({}) == dict(runtime.DEFAULT_ENV)
    assert runtime.openmp_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {}
    assert runtime.openmp_env({"GOMP_SPINCOUNT": "0"}) == {}
    assert runtime.openmp_env({runtime.RELAUNCH_MARKER: "0"}) == {}  # the opt-out
    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    runtime.apply_openmp_defaults(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {}
    runtime.apply_openmp_defaults(env)
    assert env == dict(runtime.DEFAULT_ENV)
    assert "GOMP_SPINCOUNT=" in runtime.wait_policy(env)
    assert "libgomp default" in runtime.wait_policy({})


def test_relaunch_sets_the_defaults_before_torch_starts():
    show = [sys.executable, "-c", "import os; print(os.environ.get('GOMP_SPINCOUNT'), "
                                  f"os.environ.get('{runtime.RELAUNCH_MARKER}'))"]
    script = ("import sys, torch\nfrom pimm_fast.runtime import relaunch_with_defaults\n"
              f"relaunch_with_defaults([], command={show!r})\nprint('not relaunched')\n")
    out = subprocess.run([sys.executable, "-c", script], env=clean_env(), capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [runtime.DEFAULT_ENV["GOMP_SPINCOUNT"], "1"]
    # a user's own policy is kept: no relaunch
    out = subprocess.run([sys.executable, "-c", script], env=clean_env(OMP_WAIT_POLICY="PASSIVE"),
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "not relaunched"


def test_thread_count_honours_omp_num_threads():
    assert runtime.default_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert runtime.default_threads({"OMP_NUM_THREADS": "4,2"}) == 4  # nested levels: the first
    assert 1 <= runtime.default_threads({}) <= runtime.available_cores()
    for bad in ("0", "two"):
        with pytest.raises(ValueError, match="OMP_NUM_THREADS must be a positive int"):
            runtime.default_threads({"OMP_NUM_THREADS": bad})


def test_configure_threads():
    previous = torch.get_num_threads()
    try:
        assert runtime.configure_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be a positive int"):
            runtime.configure_threads(0)
        assert runtime.describe()["threads"] == 1
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("text, cores", [("200000 100000", 2), ("150000 100000", 2), ("50000 100000", 1),
                                         ("max 100000", None), ("garbage", None)])
def test_cgroup_quota(tmp_path, text, cores):
    path = tmp_path / "cpu.max"
    path.write_text(text + "\n")
    assert runtime.cgroup_cpu_quota(str(path)) == cores
    assert runtime.cgroup_cpu_quota(str(tmp_path / "missing")) is None


def test_threads_follow_the_batch_size(monkeypatch):
    """One thread per 8192 samples of the batch, at least one, at most default_threads; OMP_NUM_THREADS wins."""
    monkeypatch.setattr(runtime, "default_threads", lambda env=None: int(env.get("OMP_NUM_THREADS", 2)) if env else 2)
    assert runtime.threads_for_batch(1024, {}) == 1
    assert runtime.threads_for_batch(8192, {}) == 1
    assert runtime.threads_for_batch(16384, {}) == 2
    assert runtime.threads_for_batch(1 << 20, {}) == 2  # never more than the cores
    assert runtime.threads_for_batch(1024, {"OMP_NUM_THREADS": "2"}) == 2
    previous = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert runtime.configure_threads(None, batch_size=1024) == 1 and torch.get_num_threads() == 1
        assert runtime.configure_threads(2, batch_size=1024) == 2  # an explicit count is kept
    finally:
        torch.set_num_threads(previous)
