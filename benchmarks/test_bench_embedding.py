"""Embedding forward + backward + optimizer update on the Ali-CCP configuration.

reference: dense table gradient + torch.optim.Adam(fused=True) over the whole table (what plain
PyTorch does); compile: the same with the lookup compiled; cpp / cuda / triton: FusedEmbedding with lazy
Adam applied to the touched rows in the backward. Issue target: cpp >= 4x reference at batch 1024.
The hot-row case (aliccp.hot_ids: one field with one value, one with two) makes runs of the whole batch and
of half of it in the fused update, the case the Triton kernels' two-level reduction is for.
"""
import pytest
import torch

from pimm_fast import FusedEmbedding, FieldEmbedding
from pimm_fast import reference as R
from pimm_fast.ops import backends

from .aliccp import EMBED_DIM, FIELD_DIMS, hot_ids, zipf_ids
from .conftest import provider_device


def make_step(provider: str, batch: int, hot: bool = False):
    device = provider_device(provider)
    ids = (hot_ids if hot else zipf_ids)(batch, device=device)
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
    benchmark.group = f"embedding fwd+bwd+adam Ali-CCP 18 fields B={batch}"
    step = make_step(provider, batch)
    step()  # warm-up: optimizer state, compilation
    benchmark(step)


@pytest.mark.parametrize("batch", [4096, 65536])
def test_embedding_fwd_bwd_update_hot_rows(benchmark, provider, batch):
    """One row in every sample and two rows in half of them each: the longest runs of equal rows."""
    benchmark.group = f"embedding fwd+bwd+adam Ali-CCP 18 fields, hot rows, B={batch}"
    step = make_step(provider, batch, hot=True)
    step()
    benchmark(step)


# ----------------------------------------------------------------------------------------------------------
# fbgemm: TorchRec's FBGEMM table-batched embedding, optimizer fused in the backward (pimm_fast.distributed),
# one table per field, D = 5 stored as 8 columns (FBGEMM needs D % 4 == 0). FBGEMM fuses Adam only on GPU,
# so on CPU it is compared with FusedEmbedding on row-wise Adagrad, the optimizer both fuse there.
# ----------------------------------------------------------------------------------------------------------
def _fbgemm_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_fused_step(impl: str, optimizer: str, batch: int):
    device = _fbgemm_device() if impl == "fbgemm" else "cpu"
    ids = zipf_ids(batch, device=device)
    grad = torch.randn(batch, len(FIELD_DIMS) * EMBED_DIM, device=device)
    if impl == "fbgemm":
        from pimm_fast.distributed import torchrec_embedding

        table = torchrec_embedding(FIELD_DIMS, EMBED_DIM, optimizer=optimizer, lr=1e-3, device=device)
    else:
        table = FusedEmbedding(FIELD_DIMS, EMBED_DIM, optimizer=optimizer, lr=1e-3, backend=impl).to(device)

    def timed():
        table(ids).backward(grad)
        if device == "cuda":
            torch.cuda.synchronize()

    return timed


def _skip_without_torchrec():
    from pimm_fast import distributed

    if not distributed.is_available():
        pytest.skip(distributed.INSTALL_HINT)


@pytest.mark.parametrize("batch", [1024, 4096, 16384])
def test_embedding_fwd_bwd_update_fbgemm(benchmark, batch):
    """fbgemm beside reference / cpp / cuda in the Adam group (GPU only: FBGEMM has no fused Adam on CPU)."""
    _skip_without_torchrec()
    if _fbgemm_device() != "cuda":
        pytest.skip("fbgemm: FBGEMM fuses Adam only on GPU (CPU: see the rowwise_adagrad group)")
    benchmark.group = f"embedding fwd+bwd+adam Ali-CCP 18 fields B={batch}"
    step = make_fused_step("fbgemm", "adam", batch)
    step()
    benchmark(step)


@pytest.mark.parametrize("impl", ["fbgemm", "cpp"])
@pytest.mark.parametrize("batch", [1024, 4096, 16384])
def test_embedding_fwd_bwd_rowwise_adagrad(benchmark, impl, batch):
    """FBGEMM (TorchRec) and FusedEmbedding, both with fused row-wise Adagrad, side by side."""
    if impl == "fbgemm":
        _skip_without_torchrec()
    elif not backends.is_available("cpp", "cpu"):
        pytest.skip("cpp: C++ kernels not built")
    benchmark.group = f"embedding fwd+bwd+rowwise_adagrad Ali-CCP 18 fields B={batch}"
    step = make_fused_step(impl, "rowwise_adagrad", batch)
    step()
    benchmark(step)
