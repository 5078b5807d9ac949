"""CUDA (and Triton without the interpreter) kernels on a GPU: parity in every dtype and width, error
cases, non-contiguous inputs, deterministic mode, the update's checks (issue 11). Skipped without a GPU;
benchmarks/gpu_check.sh runs them on one."""
import pytest
import torch

from pimm_fast import reference as R
from pimm_fast.ops import backends, op

from .helpers import PIM_ARGS, make_embedding_inputs, make_pim_inputs, pim_args
from .test_embedding import FIELD_DIMS, HPARAMS, as_values, make_state, random_bags

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and backends.cuda_compiled()),
                                reason="needs a CUDA device and the CUDA kernels")
GPU_BACKENDS = ["cuda", pytest.param("triton", marks=pytest.mark.skipif(
    backends.triton_interpreted(), reason="Triton on the GPU needs TRITON_INTERPRET unset"))]
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=3e-3, rtol=3e-3)}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [5, 8, 32, 64, 128])
def test_embedding_and_bags_parity(backend, dtype, dim):
    indices, weight, offsets = make_embedding_inputs(513, FIELD_DIMS, dim, dtype, device="cuda")
    torch.testing.assert_close(op("embedding_concat", backend)(indices, weight, offsets),
                               R.embedding_concat(indices, weight, offsets))
    grad = torch.randn(513, 4 * dim, device="cuda").to(dtype)
    torch.testing.assert_close(op("embedding_concat_backward", backend)(grad, indices, offsets, weight.shape[0]),
                               R.embedding_concat_backward(grad, indices, offsets, weight.shape[0]), **TOL[dtype])
    x = random_bags(257, device="cuda")
    pooling = [0, 1, 1, 0]
    torch.testing.assert_close(op("embedding_bags_concat", backend)(x.values, x.bag_offsets, weight, offsets, pooling),
                               R.embedding_bags_concat(x.values, x.bag_offsets, weight, offsets, pooling), **TOL[dtype])
    g = torch.randn(257, 4 * dim, device="cuda").to(dtype)
    torch.testing.assert_close(
        op("embedding_bags_concat_backward", backend)(g, x.values, x.bag_offsets, offsets, pooling, weight.shape[0]),
        R.embedding_bags_concat_backward(g, x.values, x.bag_offsets, offsets, pooling, weight.shape[0]), **TOL[dtype])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [5, 8, 32, 64, 128])
def test_pim_parity(backend, dtype, d):
    inp = make_pim_inputs(1031, d, dtype, bias=True, device="cuda")
    inp["v"] = inp["v"].t().contiguous().t()  # non-contiguous v
    u, sel = op("pim_attention", backend)(*pim_args(inp))
    u_ref, sel_ref = R.pim_attention(**inp)
    assert torch.equal(sel, sel_ref) and u.is_contiguous()
    torch.testing.assert_close(u, u_ref, **TOL[dtype])
    grad_u = torch.randn(1031, d, device="cuda").to(dtype)
    kwargs = {k: inp[k] for k in PIM_ARGS if k not in ("p", "seed")}
    expected = R.pim_attention_backward(grad_u, select=sel_ref, **kwargs)
    got = op("pim_attention_backward", backend)(grad_u, *(sel_ref if k == "p" else inp[k]
                                                          for k in PIM_ARGS if k != "seed"))
    for a, b in zip(got, expected):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a.float() / scale, b.float() / scale, **TOL[dtype])


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("optimizer", list(HPARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_updates_parity_and_determinism(backend, optimizer, dtype):
    indices, weight, offsets = make_embedding_inputs(2049, FIELD_DIMS, 40, dtype, device="cuda")
    grad = torch.randn(2049, 160, device="cuda").to(dtype)
    results, state0 = [], make_state(optimizer, weight)
    for _ in range(2):
        w, state = weight.clone(), tuple(s.clone() for s in state0)
        op(f"embedding_update_{optimizer}", backend)(*as_values(grad, indices), offsets, w, *state, *HPARAMS[optimizer])
        results.append(w)
    assert torch.equal(results[0], results[1])  # no atomics in the update: bit-identical runs
    w_ref, state = weight.clone(), tuple(s.clone() for s in state0)
    getattr(R, f"embedding_update_{optimizer}")(*as_values(grad, indices), offsets, w_ref, *state, *HPARAMS[optimizer])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(results[0], w_ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_direct_backward_with_bad_id_raises_and_context_survives(backend):
    indices, weight, offsets = make_embedding_inputs(64, FIELD_DIMS, 8, device="cuda")
    bad = indices.clone()
    bad[9, 2] = 7
    with pytest.raises(IndexError, match=r"id 7 out of range for field 2 \(size 7\) at sample 9"):
        op("embedding_concat_backward", backend)(torch.randn(64, 32, device="cuda"), bad, offsets, weight.shape[0])
    with pytest.raises(IndexError, match="out of range for field 2"):
        op("embedding_concat", backend)(bad, weight, offsets)
    assert float(torch.ones(3, device="cuda").sum()) == 3.0


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_deterministic_backward(backend):
    indices, weight, offsets = make_embedding_inputs(4096, (3, 2, 5, 4), 16, device="cuda")
    grad = torch.randn(4096, 64, device="cuda")
    torch.use_deterministic_algorithms(True)
    try:
        a = op("embedding_concat_backward", backend)(grad, indices, offsets, weight.shape[0])
        b = op("embedding_concat_backward", backend)(grad, indices, offsets, weight.shape[0])
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a, b)
