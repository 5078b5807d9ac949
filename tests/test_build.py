"""The package imports and runs with and without its compiled library, and reports what it has."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import pimm_fast

PACKAGE = Path(pimm_fast.__file__).resolve().parent

SMOKE = (
    "import warnings, torch\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    import pimm_fast\n"
    "msgs = [str(w.message) for w in caught if 'pimm_fast' in str(w.message)]\n"
    "m = pimm_fast.PIMM([5, 7], tower_dims=(8,))\n"
    "x = torch.tensor([[1, 2], [4, 6]])\n"
    "p = m(x, labels=torch.tensor([[1, 1], [0, 0]]))\n"
    "m.loss(p, torch.tensor([[1, 1], [0, 0]])).backward()\n"
    "import json; print(json.dumps({'warnings': msgs, 'info': pimm_fast.build_info()}))\n"
)


def run_isolated(package_dir: Path, env_extra: dict, tmp_path: Path) -> dict:
    """Import a copy of the package in a fresh interpreter.

    -S skips site's .pth files, so an editable install's import hook cannot find the original.
    """
    env = {**os.environ, **env_extra}
    paths = [str(package_dir), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    result = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {paths!r}\n" + SMOKE],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def copy_package(tmp_path: Path, with_library: bool, meta_patch: dict | None = None) -> Path:
    root = tmp_path / "site"
    shutil.copytree(PACKAGE, root / "pimm_fast",
                    ignore=shutil.ignore_patterns("__pycache__", *(() if with_library else ("_C*.so", "_build.json"))))
    if meta_patch is not None:
        meta_path = root / "pimm_fast" / "_build.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **meta_patch}))
    return root


def test_build_info_reports_versions_and_backends():
    info = pimm_fast.build_info()
    for key in ("torch", "torch_built_against", "cpp", "cuda", "cuda_device", "triton", "auto_backend"):
        assert key in info
    assert info["torch"] == torch.__version__
    assert info["auto_backend"]["cpu"] in ("cpp", "reference")


def test_imports_and_trains_without_the_compiled_library(tmp_path):
    out = run_isolated(copy_package(tmp_path, with_library=False), {}, tmp_path)
    assert out["info"]["cpp"] is False and out["info"]["auto_backend"]["cpu"] == "reference"
    assert len(out["warnings"]) == 1 and "not built" in out["warnings"][0]


def test_library_built_for_another_torch_is_reported_not_loaded(tmp_path):
    if not pimm_fast.build_info()["cpp"]:
        pytest.skip("no compiled library to copy")
    out = run_isolated(copy_package(tmp_path, True, {"torch_version": "1.0.0"}), {}, tmp_path)
    assert out["info"]["cpp"] is False
    assert "built against torch 1.0.0" in out["info"]["extension_error"]
    assert len(out["warnings"]) == 1 and "rebuild" in out["warnings"][0]


@pytest.mark.parametrize("meta_patch, reason", [
    ({"schemas_sha256": "0" * 64}, "other op schemas"),  # a library left from before a schema change
    ({"schemas_sha256": None}, "older pimm_fast"),
])
def test_library_built_from_other_schemas_is_reported_not_loaded(tmp_path, meta_patch, reason):
    # Loading it would define ops that clash with the schemas Python defines: import used to fail.
    if not pimm_fast.build_info()["cpp"]:
        pytest.skip("no compiled library to copy")
    out = run_isolated(copy_package(tmp_path, True, meta_patch), {}, tmp_path)
    assert out["info"]["cpp"] is False and reason in out["info"]["extension_error"]
    assert len(out["warnings"]) == 1 and "rebuild" in out["warnings"][0]


def test_library_older_than_the_csrc_beside_it_is_reported_not_loaded(tmp_path):
    if not pimm_fast.build_info()["cpp"]:
        pytest.skip("no compiled library to copy")
    site = copy_package(tmp_path, True)
    shutil.copytree(PACKAGE.parent / "csrc", site / "csrc")
    assert run_isolated(site, {}, tmp_path)["info"]["cpp"] is True  # the sources it was built from
    with open(site / "csrc" / "ops.h", "a") as f:
        f.write("\n// edited after the build\n")
    out = run_isolated(site, {}, tmp_path)
    assert out["info"]["cpp"] is False and "csrc/ changed" in out["info"]["extension_error"]


def test_loading_can_be_disabled_without_a_warning(tmp_path):
    if not pimm_fast.build_info()["cpp"]:
        pytest.skip("no compiled library to copy")
    out = run_isolated(copy_package(tmp_path, True), {"PIMM_FAST_NO_EXTENSION": "1"}, tmp_path)
    assert out["info"]["cpp"] is False and out["warnings"] == []


def test_copied_library_loads(tmp_path):
    if not pimm_fast.build_info()["cpp"]:
        pytest.skip("no compiled library to copy")
    out = run_isolated(copy_package(tmp_path, True), {}, tmp_path)
    assert out["info"]["cpp"] is True and out["warnings"] == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_builds_a_loadable_library(tmp_path):
    """CMakeLists.txt builds the same kernels through torch's CMake package (CPU part here)."""
    root = PACKAGE.parent
    build, prefix = tmp_path / "build", tmp_path / "site"
    env = {**os.environ, "MAX_JOBS": "2"}
    configure = subprocess.run(
        ["cmake", "-S", str(root), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], capture_output=True, text=True, env=env)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    for command in (["cmake", "--build", str(build), "-j2"], ["cmake", "--install", str(build), "--prefix", str(prefix)]):
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shutil.copytree(PACKAGE, prefix / "pimm_fast", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "_C*.so", "_build.json"))
    assert json.loads((prefix / "pimm_fast" / "_build.json").read_text())["built_by"] == "cmake"
    out = run_isolated(prefix, {}, tmp_path)
    assert out["info"]["cpp"] is True and out["warnings"] == []
