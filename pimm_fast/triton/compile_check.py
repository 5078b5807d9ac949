"""Compile every Triton kernel of pimm_fast for a GPU architecture without a GPU, and report its resources.

``python -m pimm_fast.triton.compile_check [--arch 90] [--quick] [--json PATH]`` compiles each kernel with
Triton's own compiler (``triton.compile`` to PTX and cubin with the bundled ptxas; no GPU or driver
needed) at the dtypes and block sizes the ops launch with, then asks ptxas for registers and spills.
Exit status 1 when a kernel fails to compile or spills. Must run with TRITON_INTERPRET unset (the
interpreter replaces the kernels by Python functions).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

KINDS = {"fp32": "fp32", "fp64": "fp64", "bf16": "bf16", "fp16": "fp16"}
ACC = {"fp32": "fp32", "fp64": "fp64", "bf16": "fp32", "fp16": "fp32"}


@dataclass
class Result:
    kernel: str
    config: str
    ok: bool
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    seconds: float = 0.0
    error: str = ""


def _cases(quick: bool):
    """(name, fn, signature, constexprs) for every kernel at the configurations the ops use."""
    from . import embedding, pim, update
    from ._common import MAX_BLOCK_D

    dtypes = ["fp32", "fp64"] if quick else ["fp32", "fp64", "bf16", "fp16"]
    bds = [8, MAX_BLOCK_D] if not quick else [MAX_BLOCK_D]
    for t in dtypes:
        for bd in bds:
            yield (f"_gather_kernel", embedding._gather_kernel,
                   dict(ids_ptr="*i64", w_ptr=f"*{t}", off_ptr="*i64", out_ptr=f"*{t}", B="i32", F="i32", D="i32"),
                   dict(BLOCK_B=embedding.BLOCK_B, BLOCK_D=bd))
            yield (f"_scatter_add_kernel", embedding._scatter_add_kernel,
                   dict(grad_ptr=f"*{t}", ids_ptr="*i32", off_ptr="*i64", acc_ptr=f"*{ACC[t]}", B="i32", F="i32",
                        D="i32"),
                   dict(BLOCK_B=embedding.BLOCK_B, BLOCK_D=bd))
            for backward in (False, True):
                yield (f"_bags_kernel[{'backward' if backward else 'forward'}]", embedding._bags_kernel,
                       dict(values_ptr="*i64", bag_off_ptr="*i64", w_ptr=f"*{t}", off_ptr="*i64", mean_ptr="*i32",
                            out_ptr=f"*{t}", grad_ptr=f"*{t}", acc_ptr=f"*{ACC[t]}", B="i32", F="i32", D="i32"),
                       dict(BACKWARD=backward, BLOCK_B=embedding.BLOCK_B, BLOCK_D=bd))
            for opt, name in ((update.SGD, "sgd"), (update.ADAGRAD, "adagrad"), (update.ADAM, "adam")):
                a = ACC[t]
                yield (f"_chunk_kernel[{name}]", update._chunk_kernel,
                       dict(rows_ptr="*i64", perm_ptr="*i64", end_ptr="*i64", grad_ptr=f"*{a}", hp_ptr=f"*{a}",
                            w_ptr=f"*{t}", s1_ptr=f"*{a}", s2_ptr=f"*{a}", tail_ptr=f"*{a}", head_ptr=f"*{a}", n="i32",
                            D="i32"),
                       dict(OPT=opt, CHUNK=update.CHUNK, BLOCK_D=bd))
                yield (f"_combine_kernel[{name}]", update._combine_kernel,
                       dict(rows_ptr="*i64", end_ptr="*i64", hp_ptr=f"*{a}", w_ptr=f"*{t}", s1_ptr=f"*{a}",
                            s2_ptr=f"*{a}", tail_ptr=f"*{a}", head_ptr=f"*{a}", chunks="i32", D="i32"),
                       dict(OPT=opt, CHUNK=update.CHUNK, BOUNDS=update.BOUNDS, BLOCK_C=update.BLOCK_C, BLOCK_D=bd))
    for t in ("fp32", "fp64"):  # pim computes in fp32 (16-bit inputs are cast) or fp64
        bd = MAX_BLOCK_D
        for draw, has_label in ((True, True), (True, False), (False, True)):
            yield (f"_prior_kernel[draw={draw},label={has_label}]", pim._prior_kernel,
                   dict(h_ptr=f"*{t}", label_ptr=f"*{t}", pred_ptr=f"*{t}", sel_ptr="*i1", p_ptr="*fp32",
                        seed_ptr="*i64", wp_ptr=f"*{t}", ystar_ptr=f"*{t}", zm_ptr=f"*{t}", B="i32", d="i32"),
                   dict(DRAW=draw, HAS_LABEL=has_label, BLOCK_B=pim.BLOCK_B, BLOCK_D=bd))
        yield ("_mix_kernel", pim._mix_kernel,
               dict(v_ptr=f"*{t}", zm_ptr=f"*{t}", Sv_ptr=f"*{t}", Szm_ptr=f"*{t}", c_ptr=f"*{t}", w0_ptr=f"*{t}",
                    m_ptr=f"*{t}", B="i32", d="i32"),
               dict(BLOCK_B=pim.BLOCK_B, BLOCK_D=bd))
        yield ("_grad_kernel", pim._grad_kernel,
               {**{k: f"*{t}" for k in ("g_ptr", "gm_ptr", "v_ptr", "zm_ptr", "Sv_ptr", "Szm_ptr", "c_ptr", "w0_ptr",
                                        "ystar_ptr", "wp_ptr", "gv_ptr", "gzm_ptr", "p_ptr", "q_ptr", "wprow_ptr")},
                "B": "i32", "d": "i32"},
               dict(BLOCK_B=pim.BLOCK_B, BLOCK_D=bd))


def _ptxas_stats(ptx: str, arch: int) -> tuple[int, int, int]:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    suffix = "a" if arch == 90 else ""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([ptxas, "-v", f"--gpu-name=sm_{arch}{suffix}", "-o", os.devnull, f.name],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    return (int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0,
            int(spills.group(2)) if spills else 0)


def run(arch: int = 90, quick: bool = False) -> list[Result]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("compile_check: unset TRITON_INTERPRET (the interpreter does not compile kernels)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    results = []
    for name, fn, signature, constexprs in _cases(quick):
        sig = {**signature, **{k: "constexpr" for k in constexprs}}
        config = ",".join(f"{k}={v}" for k, v in {**{k: v for k, v in signature.items() if k.endswith("ptr")},
                                                    **constexprs}.items()
                          if not k.endswith("ptr") or k in ("w_ptr", "grad_ptr", "v_ptr", "h_ptr", "g_ptr"))
        start = time.perf_counter()
        try:
            kernel = triton.compile(ASTSource(fn, signature=sig, constexprs=constexprs), target=target)
            regs, st, ld = _ptxas_stats(kernel.asm["ptx"], arch)
            results.append(Result(name, config, True, regs, st, ld, time.perf_counter() - start))
        except Exception as exc:  # noqa: BLE001  (reported, and the run fails)
            results.append(Result(name, config, False, seconds=time.perf_counter() - start,
                                  error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="fp32/fp64 at the widest block only")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = run(args.arch, args.quick)
    for r in results:
        status = "ok  " if r.ok else "FAIL"
        print(f"{status} sm_{args.arch} {r.kernel:38s} {r.config:60s} regs={r.registers:4d} "
              f"spill={r.spill_stores}/{r.spill_loads} B {r.seconds:5.1f}s {r.error}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=1)
    bad = [r for r in results if not r.ok or r.spill_stores > 0]
    print(f"{len(results) - len(bad)} compiled without spills, {len(bad)} failed or spilled")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
