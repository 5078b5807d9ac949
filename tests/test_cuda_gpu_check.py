"""benchmarks/gpu_check.sh cannot run without a GPU: check here what can be (the script parses, its test
selection exists, the summary writer and the HBM bound on synthetic results)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_summary

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_gpu_check_stays_inside_its_time_budget(tmp_path):
    # With the budget spent before the first step, no step runs (and no build starts), and the summary
    # still says so: the script never outlasts GPU_CHECK_SECONDS by more than a step's 5 s floor.
    env = {**os.environ, "GPU_CHECK_SECONDS": "0", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    steps = [line.split() for line in (tmp_path / "out" / "steps.txt").read_text().splitlines()]
    assert {"env", "build", "tests", "probe", "export_cuda"} <= {name for name, _, _ in steps}
    assert all(code in ("125", "127") and seconds == "0" for _, code, seconds in steps)
    assert "not run: time budget spent" in (tmp_path / "out" / "summary.md").read_text()


def test_gpu_check_test_selection_and_modules_exist():
    text = SCRIPT.read_text()
    tests = re.search(r"GPU_TESTS=\(([^)]*)\)", text).group(1).split()
    assert tests and all((ROOT / t).is_file() for t in tests)
    for module in re.findall(r"-m ((?:benchmarks|pimm_fast)\.[\w.]+)", text):
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


def test_hbm_bound_counts_the_bytes_of_the_step():
    # 1 sample, 1 field, D=1, 1 touched row: ids 8 + row 4 + out 4 + grad 4 + row w/r 8 + moments 16 = 44 bytes
    assert gpu_summary.embedding_step_bytes(1, 1, 1, 1) == 44
    assert gpu_summary.hbm_bound_ms(4.8e9) == pytest.approx(1.0)


def test_summary_from_synthetic_results(tmp_path):
    (tmp_path / "steps.txt").write_text("build 0 61\ntests 1 90\n")
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_cuda_ops" name="test_a"/>'
        '<testcase classname="tests.test_cuda_ops" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cuda_ops" name="test_c"><skipped/></testcase></testsuite></testsuites>')
    probe = {"benchmarks": {
        "embedding_step": {"65536": {"dim": 5, "unique_rows": 1000, "bytes": 4.8e9, "bound_ms": 1.0,
                                     "ms": {"reference": 9.0, "cuda": 1.5, "triton": 2.5}},
                           "65536_hot": {"dim": 5, "unique_rows": 900, "bytes": 4.7e9, "bound_ms": 0.98,
                                         "ms": {"reference": 9.0, "cuda": 1.6, "triton": 2.0}}},
        "pim": {"speedup": {"cuda": 4.0, "triton": 2.0}},
        "pimm_step": {"speedup_vs_compiled_reference": {"cuda": 2.5, "triton": 1.0}}}}
    (tmp_path / "probe.json").write_text(json.dumps(probe))
    assert gpu_summary.main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tests"]["passed"] == 1 and summary["tests"]["failed_tests"] == ["tests.test_cuda_ops::test_b"]
    met = {t["target"]: t["met"] for t in summary["targets"]}
    assert met == {
        "embedding fwd+bwd+update B=65536 (cuda) within 2x of the HBM bound": True,
        "embedding fwd+bwd+update B=65536 (triton) within 2x of the HBM bound": False,
        "pim_attention fwd+bwd (cuda) >= 3x eager reference": True,
        "pim_attention fwd+bwd (triton) >= 3x eager reference": False,
        "PIMM training step (cuda) >= 2x torch.compile(reference)": True,
        "PIMM training step (triton) >= 2x torch.compile(reference)": False}
    md = (tmp_path / "summary.md").read_text()
    assert "1 passed, 1 failed, 1 skipped" in md and "| 65536 | 5 | 1000 | 4800.0 | 1.000 | 9.000 | 1.500 | 2.500 |" in md
    assert "| 65536_hot | 5 | 900 | 4700.0 | 0.980 | 9.000 | 1.600 | 2.000 |" in md


def test_summary_of_an_empty_run_says_what_is_missing(tmp_path):
    assert gpu_summary.main([str(tmp_path)]) == 0
    md = (tmp_path / "summary.md").read_text()
    assert "no JUnit report" in md and "no benchmark results" in md


def test_probe_dry_run_on_the_cpu(tmp_path):
    """The probe's training and benchmark sections on the CPU (cpp standing in for the GPU kernels): a
    mistake in the script shows here, not in the one GPU run. About 30 s."""
    out = tmp_path / "probe.json"
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu_probe", "--cpu", "--small", "--sections",
                             "training,benchmarks", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(out.read_text())
    assert set(probe["training"]) == {"reference", "cpp", "cpp+compile"}
    assert all(run.get("finite") for run in probe["training"].values()), probe["training"]
    bench = probe["benchmarks"]
    assert bench["pimm_step"]["errors"] == {} and set(bench["pimm_step"]["speedup_vs_compiled_reference"]) == {"cpp"}
    assert {"4096", "4096_hot"} <= set(bench["embedding_step"]) and set(bench["pim"]["speedup"]) == {"cpp"}
    assert gpu_summary.main([str(tmp_path)]) == 0
