"""Builds pimm_fast._C: the C++ CPU kernels and, where a CUDA toolkit and a CUDA build of torch are
present, the CUDA kernels.

Switches (environment):
  PIMM_FAST_CUDA=auto|1|0   build the CUDA kernels when possible (default) / always (fail if impossible) / never
  CUDA_HOME                 the toolkit; found from `nvcc` on PATH otherwise, also through a wrapper script
  TORCH_CUDA_ARCH_LIST      GPU architectures; "8.0;9.0" when unset and no GPU is visible
  MAX_JOBS                  parallel compile jobs (ninja)
Use `pip install --no-build-isolation .` after installing torch: the build compiles against that torch.
"""
import json
import os
import re
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _load_digest_module():
    """pimm_fast/_digest.py, loaded by path: pimm_fast itself is not importable before the build."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pimm_fast_digest", ROOT / "pimm_fast" / "_digest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
DEFAULT_ARCH_LIST = "8.0;9.0"


def find_cuda_home():
    """CUDA_HOME / CUDA_PATH, else the toolkit of the `nvcc` on PATH.

    torch guesses the toolkit as the grandparent of `nvcc`; when `nvcc` is a wrapper script (here
    /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc) that guess is wrong and linking fails on
    -lcudart, so a script is read for the absolute path of the compiler it runs.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "/usr/local/cuda" if Path("/usr/local/cuda/bin/nvcc").exists() else None
    real = Path(nvcc).resolve()
    try:
        head = real.read_bytes()[:4096]
    except OSError:
        head = b""
    if head.startswith(b"#!"):
        match = re.search(rb"(/[^\s'\"]+/bin/nvcc)(?![\w.-])", head)
        if match:
            real = Path(match.group(1).decode()).resolve()
    return str(real.parent.parent)


def cuda_wanted(torch):
    mode = os.environ.get("PIMM_FAST_CUDA", "auto").lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"PIMM_FAST_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return False, "skipped (PIMM_FAST_CUDA=0)"
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build")
    cuda_home = find_cuda_home()
    if cuda_home is None or not Path(cuda_home, "bin", "nvcc").exists():
        problems.append("no CUDA toolkit found (set CUDA_HOME)")
    if problems:
        if mode == "1":
            raise SystemExit("PIMM_FAST_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    os.environ["CUDA_HOME"] = cuda_home  # before torch.utils.cpp_extension reads it
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    return True, f"toolkit {cuda_home}, archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPU')}"


def extensions():
    import torch

    with_cuda, cuda_note = cuda_wanted(torch)
    print(f"pimm_fast: CUDA kernels: {'yes' if with_cuda else 'no'} ({cuda_note})")
    from torch.utils import cpp_extension

    sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("**/*.cpp"))
    # -fopenmp: at::parallel_for is an inline template whose OpenMP pragma is compiled here; without the
    # flag every kernel silently runs on one thread.
    cxx = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    kwargs = dict(name="pimm_fast._C", extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    if with_cuda:
        sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-DPIMM_FAST_WITH_CUDA", "-Xcompiler", "-fopenmp"]
        kwargs["define_macros"] = [("PIMM_FAST_WITH_CUDA", None)]
        ext = cpp_extension.CUDAExtension(sources=sources, **kwargs)
    else:
        ext = cpp_extension.CppExtension(sources=sources, **kwargs)

    class BuildWithMeta(cpp_extension.BuildExtension):
        """Writes _build.json beside the library: what it was built against (checked at import).

        Editable installs build in a temporary folder and copy the library into the source tree; the
        JSON file travels with it (copy_extensions_to_source / _get_output_mapping).
        """

        def _meta_paths(self):
            build_py = self.get_finalized_command("build_py")
            inplace, regular = self._get_inplace_equivalent(build_py, self.extensions[0])
            return Path(regular).with_name("_build.json"), Path(inplace).with_name("_build.json")

        def build_extensions(self):
            digest = _load_digest_module()
            super().build_extensions()
            meta = {
                "torch_version": torch.__version__,
                "torch_cuda": torch.version.cuda,
                "cuda": with_cuda,
                "cuda_note": cuda_note,
                "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
                "built_by": "setup.py",
                "schemas_sha256": digest.schemas_sha256(),
                "sources_sha256": digest.sources_sha256(ROOT / "csrc"),
            }
            self._meta_paths()[0].write_text(json.dumps(meta, indent=2) + "\n")

        def copy_extensions_to_source(self):
            super().copy_extensions_to_source()
            regular, inplace = self._meta_paths()
            self.copy_file(str(regular), str(inplace), level=self.verbose)

        def _get_output_mapping(self):
            yield from super()._get_output_mapping()
            if self.inplace:
                regular, inplace = self._meta_paths()
                yield str(regular), str(inplace)

        def get_outputs(self):
            outputs = super().get_outputs()
            return outputs if self.inplace else sorted(outputs + [str(self._meta_paths()[0])])

    return [ext], {"build_ext": BuildWithMeta.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = extensions()
# schemas.def: the op schema list, read by the C++ build (register.cpp includes it) and by Python when the
# compiled library is not loaded (pimm_fast/ops/schemas.py), so it ships with the package.
setup(ext_modules=ext_modules, cmdclass=cmdclass, package_data={"pimm_fast": ["ops/schemas.def"]})
