"""pim_attention forward + backward, per provider (issue target: cpp >= 3x reference at B=4096, d=32)."""
import pytest
import torch

from pimm_fast import reference as R
from pimm_fast.ops import op

from tests.helpers import make_pim_inputs, pim_args

from .conftest import provider_device

GRAD = ("v", "h_prev", "w_prior", "w_q", "w_k", "w_v")


def make_step(provider: str, batch: int, d: int):
    inp = make_pim_inputs(batch, d, device=provider_device(provider))
    for name in GRAD:
        inp[name].requires_grad_(True)
    grad_u = torch.randn_like(inp["v"])
    if provider in ("reference", "compile"):
        fn = R.pim_attention if provider == "reference" else torch.compile(R.pim_attention, dynamic=False)
        run = lambda: fn(**inp)[0]  # noqa: E731
    else:
        kernel = op("pim_attention", provider)
        run = lambda: kernel(*pim_args(inp))[0]  # noqa: E731

    def step():
        u = run()
        u.backward(grad_u)
        if inp["v"].is_cuda:
            torch.cuda.synchronize()

    return step


@pytest.mark.parametrize("batch", [1024, 4096, 16384])
@pytest.mark.parametrize("d", [32])
def test_pim_attention_fwd_bwd(benchmark, provider, batch, d):
    benchmark.group = f"pim_attention fwd+bwd B={batch} d={d}"
    step = make_step(provider, batch, d)
    step()  # warm-up (and compilation for the compile provider)
    benchmark(step)
