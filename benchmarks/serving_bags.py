"""Inference latency of a model with bag fields: eager, the exported package from Python, and the package
from C++ (examples/score_csv), PIMM on Ali-CCP's 23-field layout (``aliccp-raw`` ``variant=full``), CPU.

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.serving_bags [--rounds N] [--score-csv BUILD/score_csv]

17 single-valued fields (AITM's vocabulary sizes, 853 moved to the bags) and 6 mean-pooled bags with the
lengths of ``pimm_fast.data.aliccp.write_synthetic_raw``: 210 (1-8 ids per row), 853 (0-3, empty bags
included) and the four user-history fields 109_14, 110_14, 127_14, 150_14 (40-300 ids each, ~570 per
row in all). The bag vocabulary sizes are chosen (BAG_VOCAB), not Ali-CCP's. Embedding dim 5, towers
[128, 64, 32], 2 tasks. The Python providers take turns call by call (benchmarks.test_bench_serving._measure);
the C++ program runs after them in its own process. The package's time includes its input checks.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.aliccp import AITM_VOCAB, EMBED_DIM, TOWER_DIMS
from benchmarks.test_bench_serving import _measure, latency_args, print_export_time, score_csv_latency

SINGLE_VOCAB = {name: size for name, size in AITM_VOCAB.items() if name != "853"}
BAG_VOCAB = {"210": 100_000, "853": 37_148, "109_14": 100_000, "110_14": 200_000, "127_14": 100_000, "150_14": 50_000}
BAG_LENGTHS = {"210": (1, 8), "853": (0, 3), "109_14": (40, 200), "110_14": (60, 300), "127_14": (40, 250),
               "150_14": (40, 200)}
BATCHES = (1, 1024)


def make_model() -> torch.nn.Module:
    import pimm_fast

    torch.manual_seed(0)
    dims = list(SINGLE_VOCAB.values()) + list(BAG_VOCAB.values())
    pooling = ["sum"] * len(SINGLE_VOCAB) + ["mean"] * len(BAG_VOCAB)
    embedding = pimm_fast.FieldEmbedding(dims, EMBED_DIM, pooling=pooling)
    return pimm_fast.PIMM(dims, num_tasks=2, embed_dim=EMBED_DIM, tower_dims=TOWER_DIMS, embedding=embedding,
                          task_names=("click", "purchase")).eval()


def make_batch(batch: int, seed: int = 0):
    """(ids [B, 17], bag_values, bag_offsets, the same batch as JaggedIds over all 23 fields, rows of text
    for score_csv). Ids uniform over each field's vocabulary."""
    from pimm_fast.modules import JaggedIds

    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in SINGLE_VOCAB.values()], 1)
    bags = []
    for name, n in BAG_VOCAB.items():
        lo, hi = BAG_LENGTHS[name]
        lengths = torch.randint(lo, hi + 1, (batch,), generator=gen)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        bags.append((torch.randint(0, n, (int(offsets[-1]),), generator=gen), offsets))
    packed = JaggedIds.from_fields(bags)
    full = JaggedIds.from_fields([ids[:, f] for f in range(ids.shape[1])] + bags)
    rows = [",".join([str(int(v)) for v in ids[b]] + ["|".join(map(str, values[offsets[b]:offsets[b + 1]].tolist()))
                                                       for values, offsets in bags]) for b in range(batch)]
    return ids, packed.values, packed.bag_offsets, full, rows


def main(argv=None) -> int:
    import pimm_fast.export as px

    args = latency_args(argv, "timed calls per case (a fifth at B=1024)")
    model = make_model()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        package = px.save(model, Path(tmp) / "pimm_aliccp_bags.pt2")
        print_export_time(started, args.threads)
        fn = px.load(package)
        print("| batch | ids per row (bags) | provider | p50 ms | p99 ms | rows/s |\n|---:|---:|---|---:|---:|---:|")
        for batch in BATCHES:
            ids, values, offsets, full, rows = make_batch(batch)
            with torch.no_grad():
                worst = (fn(ids, values, offsets) - model(full)).abs().max().item()
            assert worst <= 1e-5, worst
            runners = {"eager": lambda _, x=full: model(x), "package": lambda _, a=(ids, values, offsets): fn(*a)}
            rounds = max(20, args.rounds // (1 + batch // 256))
            per_row = values.numel() / batch
            for provider, (p50, p99) in _measure(runners, None, rounds).items():
                print(f"| {batch} | {per_row:.0f} | {provider} | {p50:.3f} | {p99:.3f} | {batch / (p50 / 1e3):,.0f} |",
                      flush=True)
            if args.score_csv is not None:
                csv = Path(tmp) / f"bags{batch}.csv"
                csv.write_text("\n".join(rows) + "\n")
                latency = score_csv_latency(args.score_csv, package, csv, args.threads, rounds)
                if latency is None:
                    return 1
                p50, p99 = latency
                print(f"| {batch} | {per_row:.0f} | C++ (score_csv) | {p50:.3f} | {p99:.3f} | "
                      f"{batch / (p50 / 1e3):,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
