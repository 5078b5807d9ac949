"""GPU probes of benchmarks/gpu_check.sh: host syncs per op, side stream, tensors past 2^31 elements, the
CUDA context after a bad id, PIMM training steps (eager and torch.compile) and the GPU benchmarks.

``python -m benchmarks.gpu_probe --out probe.json [--sections a,b] [--small]``. Every section records
its result or its error in the JSON and the run goes on (one GPU run must say everything). Needs a
CUDA device; ``--small`` runs tiny shapes (used under compute-sanitizer).
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
import warnings

import torch

import pimm_fast
from pimm_fast import FusedEmbedding
from pimm_fast import reference as R
from pimm_fast.ops import op

from .aliccp import EMBED_DIM, FIELD_DIMS, hot_ids, zipf_ids
from .gpu_summary import embedding_step_bytes, hbm_bound_ms

BACKENDS = ("cuda", "triton")
DEV = "cuda"


def use_cpu() -> None:
    """``--cpu``: a dry run of the probe itself on the CPU (the cpp kernels stand in for the GPU's), so a
    mistake in this script shows before GPU time is spent on it; its timings mean nothing for the GPU."""
    global BACKENDS, DEV
    BACKENDS, DEV = ("cpp",), "cpu"


def _sync() -> None:
    if DEV == "cuda":
        torch.cuda.synchronize()


def _providers(*base: str) -> tuple:
    """base providers, then each kernel backend eager and under torch.compile."""
    return base + BACKENDS + tuple(f"{b}+compile" for b in BACKENDS)


def _pim_inputs(batch, d, dtype=torch.float32):
    from tests.helpers import make_pim_inputs

    return make_pim_inputs(batch, d, dtype, device=DEV)


def _emb_inputs(batch, dim, dtype=torch.float32):
    from tests.helpers import make_embedding_inputs

    return make_embedding_inputs(batch, FIELD_DIMS, dim, dtype, device=DEV)


def _op_calls(backend: str, batch: int = 4096):
    """name -> zero-argument callable of each op on `backend` (inputs built once, outside the count)."""
    indices, weight, offsets = _emb_inputs(batch, 16)
    F = len(FIELD_DIMS)
    grad = torch.randn(batch, F * 16, device=DEV)
    values, value_offsets, grad_values = R.dense_as_values(indices, grad)
    bag_offsets = torch.arange(F * batch + 1, device=DEV)
    pooling = [1] * F
    state = (torch.zeros_like(weight), torch.zeros_like(weight), torch.zeros((), dtype=torch.int64, device=DEV))
    adagrad = torch.zeros(weight.shape[0], device=DEV)
    inp = _pim_inputs(batch, 32)
    from tests.helpers import PIM_ARGS, pim_args

    args = pim_args(inp)
    sel = op("pim_attention", backend)(*args)[1]
    gu = torch.randn(batch, 32, device=DEV)
    bw_args = [sel if k == "p" else inp[k] for k in PIM_ARGS if k != "seed"]
    return {
        "embedding_concat": lambda: op("embedding_concat", backend)(indices, weight, offsets),
        "embedding_concat_backward": lambda: op("embedding_concat_backward", backend)(grad, indices, offsets,
                                                                                      weight.shape[0]),
        "embedding_bags_concat": lambda: op("embedding_bags_concat", backend)(values, bag_offsets, weight, offsets,
                                                                              pooling),
        "embedding_bags_concat_backward": lambda: op("embedding_bags_concat_backward", backend)(
            grad, values, bag_offsets, offsets, pooling, weight.shape[0]),
        "embedding_update_sgd": lambda: op("embedding_update_sgd", backend)(grad_values, values, value_offsets,
                                                                            offsets, weight, 0.01),
        "embedding_update_rowwise_adagrad": lambda: op("embedding_update_rowwise_adagrad", backend)(
            grad_values, values, value_offsets, offsets, weight, adagrad, 0.01, 1e-8),
        "embedding_update_adam": lambda: op("embedding_update_adam", backend)(
            grad_values, values, value_offsets, offsets, weight, *state, 1e-3, 0.9, 0.999, 1e-8),
        "pim_attention": lambda: op("pim_attention", backend)(*args),
        "pim_attention_backward": lambda: op("pim_attention_backward", backend)(gu, *bw_args),
    }


def syncs(small: bool) -> dict:
    """Host-device synchronisations per op call, counted by torch.cuda.set_sync_debug_mode('warn')."""
    out = {}
    for backend in BACKENDS:
        calls = _op_calls(backend, 256 if small else 4096)
        counts = {}
        for name, call in calls.items():
            call()  # warm-up (Triton compiles on the first call)
            torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    call()
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            counts[name] = sum("synchronizing" in str(w.message) for w in caught)
        out[backend] = counts
    return out


def side_stream(small: bool) -> dict:
    """Each op's result computed on a side stream equals the default stream's."""
    out = {}
    for backend in BACKENDS:
        calls = _op_calls(backend, 256 if small else 4096)
        for name in ("embedding_concat", "embedding_bags_concat", "pim_attention", "pim_attention_backward",
                     "embedding_concat_backward"):
            expected = calls[name]()
            torch.cuda.synchronize()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                got = calls[name]()
            torch.cuda.current_stream().wait_stream(s)
            got, expected = (got if isinstance(got, tuple) else (got,)), (expected if isinstance(expected, tuple)
                                                                          else (expected,))
            out[f"{backend}.{name}"] = all(torch.equal(a, b) for a, b in zip(got, expected))
    return out


def large(small: bool) -> dict:
    """A table and an output past 2^31 elements (int64 offsets): the last rows come back right."""
    out = {}
    D = 64
    rows = (2 ** 31) // D + 4096  # table > 2^31 elements (fp16: 4 GiB)
    weight = torch.randn(rows, D, device=DEV, dtype=torch.float16)
    offsets = torch.tensor([0], device=DEV)
    batch = (2 ** 31) // D + 1024  # output > 2^31 elements
    ids = torch.randint(rows - 2048, rows, (batch, 1), device=DEV)
    for backend in BACKENDS:
        got = op("embedding_concat", backend)(ids, weight, offsets)
        tail = slice(batch - 4096, batch)
        out[f"{backend}.embedding_concat"] = bool(torch.equal(got[tail], weight[ids[tail, 0]]))
        del got
        grad = torch.ones(4096, D, device=DEV, dtype=torch.float16)
        g = op("embedding_concat_backward", backend)(grad, ids[-4096:], offsets, rows)
        out[f"{backend}.embedding_concat_backward"] = bool(
            torch.equal(g.float().sum(0), torch.full((D,), 4096.0, device=DEV)))
        del g
    return out


def bad_id_context(small: bool) -> dict:
    """A bad id raises IndexError and the CUDA context stays usable."""
    out = {}
    indices, weight, offsets = _emb_inputs(64, 8)
    for backend in BACKENDS:
        bad = indices.clone()
        bad[3, 0] = FIELD_DIMS[0]
        try:
            op("embedding_concat", backend)(bad, weight, offsets)
            out[backend] = "no error raised"
        except IndexError as exc:
            ok = float(torch.ones(4, device=DEV).sum()) == 4.0
            out[backend] = f"IndexError ({exc}); context usable: {ok}"
    return out


def _time(fn, reps: int) -> float:
    fn()
    fn()
    _sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync()
    return (time.perf_counter() - start) / reps * 1e3


def _pimm_step(provider: str, batch: int):
    """One PIMM training step of ``provider`` on the GPU, the reference included (benchmarks/test_bench_step.py)."""
    from .test_bench_step import make_step

    return make_step(provider, batch, device=DEV)


def training(small: bool) -> dict:
    """Loss after a few PIMM steps per provider: finite, and decreasing from the first step."""
    out = {}
    for provider in _providers("reference"):
        try:
            step = _pimm_step(provider, 256 if small else 4096)
            losses = [float(step().detach()) for _ in range(5)]
            out[provider] = {"losses": losses, "finite": all(l == l and abs(l) < 1e9 for l in losses)}
        except Exception:  # noqa: BLE001  (recorded per provider; the others still run)
            out[provider] = {"error": traceback.format_exc()[-1500:]}
    return out


def benchmarks(small: bool) -> dict:
    out = {"embedding_step": {}, "pim": {}, "pimm_step": {}}
    batches = [4096] if small else [4096, 16384, 65536, 262144]
    reps = 3 if small else 20
    # and batch 65536 with hot rows (aliccp.hot_ids: runs of the whole batch and of half of it in the update)
    for batch, hot in [(b, False) for b in batches] + [(4096 if small else 65536, True)]:
        x = (hot_ids if hot else zipf_ids)(batch, device=DEV)
        F = x.shape[1]
        dims = torch.tensor(FIELD_DIMS)
        rows = (x.long() + (dims.cumsum(0) - dims).to(DEV)).unique()
        for dim in (EMBED_DIM, 64) if batch == 65536 and not hot else (EMBED_DIM,):
            nbytes = embedding_step_bytes(batch, F, dim, int(rows.numel()))
            entry = {"dim": dim, "unique_rows": int(rows.numel()), "bytes": nbytes, "bound_ms": hbm_bound_ms(nbytes),
                     "ms": {}}
            for backend in ("reference",) + BACKENDS:
                emb = FusedEmbedding(FIELD_DIMS, dim, optimizer="adam", lr=1e-3, backend=backend).to(DEV)
                grad = torch.randn(batch, F * dim, device=DEV)
                entry["ms"][backend] = _time(lambda: emb(x).backward(grad), reps)
            key = str(batch) + ("" if dim == EMBED_DIM else f"_d{dim}") + ("_hot" if hot else "")
            out["embedding_step"][key] = entry
    batch = 4096 if small else 65536
    d = 32
    inp = _pim_inputs(batch, d)
    leaves = {k: v.requires_grad_(True) for k, v in inp.items() if k in ("v", "h_prev", "w_prior", "w_q", "w_k",
                                                                         "w_v")}
    times = {}
    for backend in ("reference",) + BACKENDS:
        def fwd_bwd():
            u, _ = pimm_fast.ops.pim_attention(*[inp[k] for k in ("v", "h_prev", "label_prev", "pred_prev",
                                                                  "w_prior", "w_q", "w_k", "w_v", "p", "seed")],
                                               backend=backend)
            u.sum().backward()
        times[backend] = _time(fwd_bwd, reps)
    del leaves
    out["pim"] = {"batch": batch, "d": d, "ms": times,
                  "speedup": {b: times["reference"] / times[b] for b in BACKENDS}}
    step_batch = 4096 if small else 65536
    step_ms, errors = {}, {}
    for p in _providers("reference+compile", "reference"):
        try:
            step_ms[p] = _time(_pimm_step(p, step_batch), reps)
        except Exception:  # noqa: BLE001
            errors[p] = traceback.format_exc()[-1500:]
    base = step_ms.get("reference+compile", step_ms.get("reference"))
    out["pimm_step"] = {"batch": step_batch, "ms": step_ms, "errors": errors,
                        "baseline": "reference+compile" if "reference+compile" in step_ms else "reference (eager)",
                        "speedup_vs_compiled_reference": {
                            b: base / min(v for k, v in step_ms.items() if k.split("+")[0] == b)
                            for b in BACKENDS if any(k.split("+")[0] == b for k in step_ms)}}
    return out


SECTIONS = {"syncs": syncs, "side_stream": side_stream, "bad_id_context": bad_id_context, "training": training,
            "benchmarks": benchmarks, "large": large}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--cpu", action="store_true", help=use_cpu.__doc__.split(":", 1)[1].strip())
    args = parser.parse_args(argv)
    if args.cpu:
        use_cpu()
    elif not torch.cuda.is_available():
        raise SystemExit("gpu_probe: needs a CUDA device")
    result = {"device": "cpu (dry run)" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            result[name] = SECTIONS[name](args.small)
        except Exception:  # noqa: BLE001  (recorded; the other sections still run)
            result[name] = {"error": traceback.format_exc()[-3000:]}
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        if DEV == "cuda":
            torch.cuda.empty_cache()
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
