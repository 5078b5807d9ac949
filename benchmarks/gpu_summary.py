"""Summary of one benchmarks/gpu_check.sh run: summary.json and summary.md from the files in OUTDIR.

Reads (each optional, a missing one is reported as such): steps.txt (name, exit code, seconds per
step), tests.xml (pytest's JUnit report), probe.json (benchmarks/gpu_probe.py), compile.json
(pimm_fast.triton.compile_check). Pure Python: tested on the CPU (tests/test_cuda_gpu_check.py).
``python -m benchmarks.gpu_summary OUTDIR``.
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HBM_BYTES_PER_S = 4.8e12  # H200


def embedding_step_bytes(batch: int, fields: int, dim: int, unique_rows: int, elem: int = 4,
                         index: int = 8) -> int:
    """Bytes that embedding forward + backward + fused lazy-Adam update must move at least.

    forward: read the ids and one row per (sample, field), write the output;
    backward: read the output gradient (the fused update consumes it, no table-sized gradient);
    update: read and write each touched row and its two Adam moments (fp32 state).
    """
    lookups = batch * fields
    forward = lookups * index + lookups * dim * elem + lookups * dim * elem
    backward = lookups * dim * elem
    update = unique_rows * dim * (2 * elem + 2 * 2 * 4)
    return forward + backward + update


def hbm_bound_ms(nbytes: int, bandwidth: float = HBM_BYTES_PER_S) -> float:
    return nbytes / bandwidth * 1e3


# Exit codes of gpu_check.sh's steps that mean more than "failed".
STEP_CODES = {0: "ok", 124: "time limit", 125: "not run: time budget spent", 127: "tool missing", 137: "killed"}


def read_steps(path: Path) -> list[dict]:
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            steps.append({"step": parts[0], "exit_code": int(parts[1]), "seconds": int(parts[2])})
    return steps


def read_junit(path: Path) -> dict:
    if not path.exists():
        return {"present": False}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {"present": True, **counts, "passed": counts["tests"] - counts["failures"] - counts["errors"]
            - counts["skipped"], "failed_tests": failed}


def _load_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def targets(probe: dict | None) -> list[dict]:
    """The three GPU targets of issue 11, from the probe's benchmark section."""
    out = []
    bench = (probe or {}).get("benchmarks", {})
    emb = bench.get("embedding_step", {}).get("65536")
    if emb:
        for backend in ("cuda", "triton"):
            if backend in emb.get("ms", {}):
                ratio = emb["ms"][backend] / emb["bound_ms"]
                out.append({"target": f"embedding fwd+bwd+update B=65536 ({backend}) within 2x of the HBM bound",
                            "measured": f"{emb['ms'][backend]:.3f} ms vs bound {emb['bound_ms']:.3f} ms "
                                        f"({ratio:.2f}x)", "met": ratio <= 2.0})
    pim = bench.get("pim", {})
    for backend in ("cuda", "triton"):
        if backend in pim.get("speedup", {}):
            s = pim["speedup"][backend]
            out.append({"target": f"pim_attention fwd+bwd ({backend}) >= 3x eager reference",
                        "measured": f"{s:.2f}x", "met": s >= 3.0})
    step = bench.get("pimm_step", {})
    for backend in ("cuda", "triton"):
        if backend in step.get("speedup_vs_compiled_reference", {}):
            s = step["speedup_vs_compiled_reference"][backend]
            out.append({"target": f"PIMM training step ({backend}) >= 2x torch.compile(reference)",
                        "measured": f"{s:.2f}x", "met": s >= 2.0})
    return out


def summarize(outdir: Path) -> dict:
    probe = _load_json(outdir / "probe.json")
    compile_results = _load_json(outdir / "compile.json")
    summary = {
        "steps": read_steps(outdir / "steps.txt"),
        "tests": read_junit(outdir / "tests.xml"),
        "probe": probe,
        "compile": compile_results,
        "targets": targets(probe),
        "hbm_bytes_per_s": HBM_BYTES_PER_S,
    }
    return summary


def _table(rows: list[list], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def to_markdown(s: dict) -> str:
    md = ["# GPU check", ""]
    md += ["## Steps", ""] + _table([[x["step"], x["exit_code"], STEP_CODES.get(x["exit_code"], "failed"), x["seconds"]]
                                     for x in s["steps"]], ["step", "exit code", "result", "seconds"]) + [""]
    t = s["tests"]
    if t.get("present"):
        md += ["## Tests", "", f"{t['passed']} passed, {t['failures'] + t['errors']} failed, {t['skipped']} skipped", ""]
        md += [f"- FAILED {name}" for name in t["failed_tests"]] + [""]
    else:
        md += ["## Tests", "", "no JUnit report (the test step did not run or did not finish)", ""]
    md += ["## Targets", ""]
    md += _table([[x["target"], x["measured"], "yes" if x["met"] else "NO"] for x in s["targets"]],
                 ["target", "measured", "met"]) if s["targets"] else ["no benchmark results"]
    md += [""]
    probe = s["probe"] or {}
    emb = probe.get("benchmarks", {}).get("embedding_step", {})
    if emb:
        md += ["## Embedding fwd+bwd+fused Adam (Ali-CCP fields, D=5 and D=64)", "",
               f"HBM bound = bytes / {s['hbm_bytes_per_s'] / 1e12:.1f} TB/s; bytes = ids + rows read + output "
               "written + output gradient read + touched rows and Adam moments read and written.", ""]
        rows = []
        for batch, r in sorted(emb.items(), key=lambda kv: (int(kv[0].split("_")[0]), kv[0])):  # 65536_d64, _hot
            rows.append([batch, r["dim"], r["unique_rows"], f"{r['bytes'] / 1e6:.1f}", f"{r['bound_ms']:.3f}"]
                        + [f"{r['ms'].get(b, float('nan')):.3f}" for b in ("reference", "cuda", "triton")])
        md += _table(rows, ["batch", "D", "unique rows", "MB", "bound ms", "reference ms", "cuda ms", "triton ms"])
        md += [""]
    for section in ("syncs", "side_stream", "large", "bad_id_context", "training", "memcheck"):
        if section in probe:
            md += [f"## {section}", "", "```", json.dumps(probe[section], indent=1)[:4000], "```", ""]
    if s["compile"]:
        bad = [r for r in s["compile"] if not r["ok"] or r["spill_stores"] > 0]
        md += ["## Triton compile (sm_90)", "", f"{len(s['compile']) - len(bad)} kernels compiled without spills, "
               f"{len(bad)} failed or spilled; max registers {max(r['registers'] for r in s['compile'])}", ""]
    return "\n".join(md) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.gpu_summary OUTDIR", file=sys.stderr)
        return 2
    outdir = Path(argv[0])
    s = summarize(outdir)
    (outdir / "summary.json").write_text(json.dumps(s, indent=1))
    (outdir / "summary.md").write_text(to_markdown(s))
    print(to_markdown(s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
