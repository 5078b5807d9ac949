"""Embedding forward + backward + optimizer update on the Ali-CCP configuration.

reference: dense table gradient + torch.optim.Adam(fused=True) over the whole table (what plain
PyTorch does); compile: the same with the lookup compiled; cpp / cuda: FusedEmbedding with lazy Adam
applied to the touched rows in the backward. Issue target: cpp >= 4x reference at batch 1024.
"""
import pytest
import torch

from pimm_fast import FusedEmbedding, FieldEmbedding
from pimm_fast import reference as R

from .aliccp import EMBED_DIM, FIELD_DIMS, zipf_ids
from .conftest import provider_device


def make_step(provider: str, batch: int):
    device = provider_device(provider)
    ids = zipf_ids(batch, device=device)
    grad = torch.randn(batch, len(FIELD_DIMS) * EMBED_DIM, device=device)
    if provider in ("reference", "compile"):
        table = FieldEmbedding(FIELD_DIMS, EMBED_DIM, backend="reference").to(device)
        optimizer = torch.optim.Adam(table.parameters(), lr=1e-3, fused=True)
        lookup = R.embedding_concat if provider == "reference" else torch.compile(R.embedding_concat, dynamic=False)

        def step():
            out = lookup(ids, table.weight, table.field_offsets)
            out.backward(grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        table = FusedEmbedding(FIELD_DIMS, EMBED_DIM, optimizer="adam", lr=1e-3, backend=provider).to(device)

        def step():
            table(ids).backward(grad)

    def timed():
        step()
        if device == "cuda":
            torch.cuda.synchronize()

    return timed


@pytest.mark.parametrize("batch", [1024, 4096, 16384])
def test_embedding_fwd_bwd_update(benchmark, provider, batch):
    if provider == "triton":
        pytest.skip("triton: no fused-update kernel (FusedEmbedding uses cuda or cpp)")
    benchmark.group = f"embedding fwd+bwd+adam Ali-CCP 18 fields B={batch}"
    step = make_step(provider, batch)
    step()  # warm-up: optimizer state, compilation
    benchmark(step)
