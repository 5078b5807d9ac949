"""Process-wide CPU runtime defaults: how OpenMP threads wait, and how many torch uses.

torch's CPU kernels (and MKL / oneDNN under them) run on GNU OpenMP. Between two parallel regions an
idle OpenMP thread spins for a while before it sleeps; with ``OMP_WAIT_POLICY`` unset libgomp spins
300 000 rounds (about 3 ms by libgomp's own estimate), with ``ACTIVE`` practically forever. On a machine to itself that
is the fastest setting; next to one other busy process a spinning thread takes the core that the thread
it waits for needs, and a training step becomes several times slower (docs/performance.md).

pimm_fast's defaults (:data:`DEFAULT_ENV`): spin briefly (``GOMP_SPINCOUNT``), then sleep. libgomp reads
these variables once, when torch is imported, so they must be in the environment before
``import torch``:

* the ``pimm-fast`` command and ``python -m pimm_fast`` set them (re-starting the interpreter once when
  torch was already imported), unless the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``;
* library users export them before starting Python, or set them first thing in the script::

      import os
      os.environ.setdefault("GOMP_SPINCOUNT", "300")   # pimm_fast.runtime.DEFAULT_ENV
      import torch, pimm_fast

:func:`configure_threads` sets the thread count: one per physical core this process may use (its
affinity mask and cgroup CPU quota), unless ``OMP_NUM_THREADS`` says otherwise; :func:`describe` reports
what is in effect.

The functions import torch only when they need it (importing the pimm_fast package imports it anyway),
and this file imports nothing from the package: benchmarks/conftest.py loads it by path, before torch.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, MutableMapping, Optional, Sequence

# The user's own choice of waiting behaviour: any of these set means pimm_fast sets none of them.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Spin 300 rounds (microseconds: the gap between back-to-back ops of a step), then sleep. Under load
# 1 000 rounds (libgomp's own spin when it sees more threads than cores) fell behind PASSIVE in 2 of 4
# runs; 100-300 held up like PASSIVE. Measured in docs/performance.md (python -m benchmarks.load); the
# quiet-machine cost against longer spins is to be confirmed there.
DEFAULT_ENV: Mapping[str, str] = {"GOMP_SPINCOUNT": "300"}
# Set in the environment of a process that pimm_fast re-started with its defaults (guards a loop).
RELAUNCH_MARKER = "PIMM_FAST_RUNTIME_DEFAULTS"


def openmp_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The variables pimm_fast would add to ``environ`` (default ``os.environ``): :data:`DEFAULT_ENV`,
    or nothing when the user chose a wait policy or spin count, or disabled the defaults with
    ``PIMM_FAST_RUNTIME_DEFAULTS=0``."""
    env = os.environ if environ is None else environ
    if env.get(RELAUNCH_MARKER) == "0" or any(name in env for name in WAIT_VARIABLES):
        return {}
    return dict(DEFAULT_ENV)


def torch_imported() -> bool:
    return "torch" in sys.modules


def apply_openmp_defaults(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Put :func:`openmp_env` into the environment. Returns True when OpenMP will see the result: torch
    (hence libgomp) not imported yet, or nothing needed setting. Call it before ``import torch``."""
    env = os.environ if environ is None else environ
    missing = openmp_env(env)
    env.update(missing)
    return not missing or not torch_imported()


def relaunch_with_defaults(argv: Sequence[str], command: Optional[Sequence[str]] = None) -> None:
    """When torch is already imported and the environment lacks pimm_fast's defaults, replace this
    process by ``command`` (default ``python -m pimm_fast *argv``) with them set (same pid, stdin,
    stdout, stderr and exit status); otherwise set what is missing, if anything, and return."""
    if os.environ.get(RELAUNCH_MARKER) or not openmp_env():
        return
    if not torch_imported():  # nothing read the environment yet: setting it is enough
        apply_openmp_defaults()
        return
    env = dict(os.environ, **openmp_env())
    env[RELAUNCH_MARKER] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    if command is None:
        command = [sys.executable, "-m", "pimm_fast", *argv]
    os.execve(command[0], list(command), env)


def available_cores() -> int:
    """The CPUs this process may use: its affinity mask (taskset, cpusets), capped by a cgroup CPU
    quota (``docker --cpus``, Kubernetes limits) where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, quota)
    return max(1, cores)


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> Optional[int]:
    """CPUs granted by a cgroup v2 quota, rounded up; None when unlimited or unknown."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, -(-int(quota) // int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def _threads_per_core() -> int:
    """SMT ways (2 with hyper-threading): GEMMs gain nothing from a core's second hardware thread."""
    try:
        import torch

        caps = torch.cpu.get_capabilities()
        return max(1, int(caps["num_logical_cores"]) // max(1, int(caps["num_physical_cores"])))
    except Exception:  # noqa: BLE001 - an older torch without the probe
        return 1


def default_threads(environ: Optional[Mapping[str, str]] = None) -> int:
    """``OMP_NUM_THREADS`` when the user set it (its first value), else one thread per physical core
    this process may use (:func:`available_cores` divided by the SMT ways)."""
    env = os.environ if environ is None else environ
    text = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if text:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS must be a positive int, got {text!r}") from None
        if value < 1:
            raise ValueError(f"OMP_NUM_THREADS must be a positive int, got {text!r}")
        return value
    return max(1, available_cores() // _threads_per_core())


# Samples of a training batch per thread. A second thread pays only on large batches: on 2 Zen 4 cores the
# Ali-CCP PIMM step ran 291k samples/s on 1 thread and 308k on 2 at batch 1024, 359k / 375k at 4096, but
# 368k / 524k at 16384; and 2 threads next to one busy process fell to 0.26x (1024, libgomp default) where
# 1 thread kept 0.98x (docs/performance.md, python -m benchmarks.load).
SAMPLES_PER_THREAD = 8192


def threads_for_batch(batch_size: int, environ: Optional[Mapping[str, str]] = None) -> int:
    """:func:`default_threads`, capped at one thread per :data:`SAMPLES_PER_THREAD` samples of the batch
    (at least one); ``OMP_NUM_THREADS``, when set, is taken as it is."""
    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS", "").strip():
        return default_threads(env)
    return max(1, min(default_threads(env), int(batch_size) // SAMPLES_PER_THREAD))


def configure_threads(threads: Optional[int] = None, batch_size: Optional[int] = None) -> int:
    """Set torch's intra-op thread count: ``threads``; else :func:`threads_for_batch` of ``batch_size``;
    else :func:`default_threads`. Returns it.

    ``pimm-fast train`` calls this with its batch size; library users may call it once before training."""
    import torch

    if threads is None:
        threads = default_threads() if batch_size is None else threads_for_batch(batch_size)
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def wait_policy(environ: Optional[Mapping[str, str]] = None) -> str:
    """A one-line description of the OpenMP waiting behaviour the environment asks for."""
    env = os.environ if environ is None else environ
    parts = [f"{name}={env[name]}" for name in WAIT_VARIABLES if name in env]
    return ", ".join(parts) if parts else "libgomp default (spin 300000 rounds, ~3 ms, then sleep)"


def describe() -> dict:
    """What is in effect: the wait policy, torch's thread count, the cores available."""
    import torch

    return {"openmp_wait": wait_policy(), "threads": torch.get_num_threads(), "cores": available_cores()}

