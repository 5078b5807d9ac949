"""A whole PIMM training step (forward, loss, backward, optimizer) on the Ali-CCP configuration.

reference: PIMM(backend="reference") + torch.optim.Adam(fused=True) over every parameter (dense
embedding gradient); compile: the same model's forward + loss through torch.compile; cpp: the C++
kernels with FusedEmbedding (lazy Adam in the backward) + Adam(fused=True) for the dense towers;
cpp+compile: that model with its towers compiled around the opaque custom ops.
Issue targets: cpp >= 3x reference at batch 1024; cpp (+compile) >= 1.3x compile at batch 4096.
"""
import pytest
import torch

from pimm_fast import FusedEmbedding, PIMM

from .aliccp import EMBED_DIM, FIELD_DIMS, TOWER_DIMS, cascade_labels, zipf_ids
from .conftest import PROVIDERS, provider_device, skip_unless_available

STEP_PROVIDERS = PROVIDERS + ("cpp+compile",)


def make_model(provider: str, device: str):
    backend = provider.split("+")[0]
    if backend in ("reference", "compile"):
        return PIMM(FIELD_DIMS, num_tasks=2, embed_dim=EMBED_DIM, tower_dims=TOWER_DIMS, backend="reference")
    embedding = FusedEmbedding(FIELD_DIMS, EMBED_DIM, optimizer="adam", lr=1e-3, backend=backend)
    return PIMM(FIELD_DIMS, num_tasks=2, embed_dim=EMBED_DIM, tower_dims=TOWER_DIMS, backend=backend,
                embedding=embedding).to(device)


def make_step(provider: str, batch: int):
    device = provider_device(provider.split("+")[0])
    model = make_model(provider, device).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters()], lr=1e-3, fused=True)
    x, y = zipf_ids(batch, device=device), cascade_labels(batch, device=device)

    def forward_loss(x, y):
        return model.loss(model(x, labels=y), y)

    if provider in ("compile", "cpp+compile"):
        forward_loss = torch.compile(forward_loss, fullgraph=True, dynamic=False)

    def step():
        loss = forward_loss(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("step_provider", STEP_PROVIDERS)
@pytest.mark.parametrize("batch", [1024, 4096, 16384])
def test_pimm_training_step(benchmark, step_provider, batch):
    skip_unless_available(step_provider.split("+")[0])
    benchmark.group = f"PIMM training step Ali-CCP B={batch}"
    step = make_step(step_provider, batch)
    step()
    step()  # warm-up: optimizer state, compilation
    benchmark(step)
