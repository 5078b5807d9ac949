"""Every kernel backend against pimm_fast.reference: registration, parity, gradients, errors."""
import pytest
import torch

import pimm_fast
from pimm_fast import reference as R
from pimm_fast.ops import backends, op

from .conftest import KERNEL_BACKENDS_HERE, requires_cuda
from .helpers import PIM_ARGS, make_embedding_inputs, make_pim_inputs, pim_args

TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=2e-5, rtol=2e-5),
       torch.bfloat16: dict(atol=3e-2, rtol=3e-2), torch.float16: dict(atol=5e-3, rtol=5e-3)}
GRAD_NAMES = ("v", "h_prev", "w_prior", "w_q", "w_k", "w_v", "b_q", "b_k", "b_v")


def dtypes_for(backend):
    # bf16 / fp16 are wrong in Triton's interpreter (ARCHITECTURE.md section 6): fp32/fp64 there.
    if backend == "triton" and backends.triton_interpreted():
        return [torch.float32, torch.float64]
    return [torch.float32, torch.float64, torch.bfloat16]


def device_of(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and not backends.triton_interpreted()) else "cpu"


BACKENDS = KERNEL_BACKENDS_HERE + [pytest.param("cuda", marks=requires_cuda)]


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
def test_every_backend_overload_is_defined_with_one_schema():
    for name in ("embedding_concat", "embedding_concat_backward", "pim_attention", "pim_attention_backward"):
        schemas = {str(op(name, b)._schema).split("(", 1)[1] for b in pimm_fast.ops.KERNEL_BACKENDS}
        assert len(schemas) == 1, name


def test_extension_is_loaded_here():
    """The test environment builds the library: a silent fallback would skip every C++ test."""
    info = pimm_fast.build_info()
    assert info["cpp"], info["extension_error"]
    assert info["torch_built_against"] == torch.__version__


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_embedding_concat(backend):
    device = device_of(backend)
    for index_dtype in (torch.int32, torch.int64):
        indices, weight, offsets = make_embedding_inputs(9, (5, 3, 7), 4, index_dtype=index_dtype, device=device)
        weight.requires_grad_(True)
        torch.library.opcheck(op("embedding_concat", backend), (indices, weight, offsets))
        grad = torch.randn(9, 12, device=device)
        torch.library.opcheck(op("embedding_concat_backward", backend), (grad, indices, offsets, weight.shape[0]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("with_label", [False, True])
def test_opcheck_pim_attention(backend, bias, with_label):
    inp = make_pim_inputs(19, 8, bias=bias, device=device_of(backend))
    if not with_label:
        inp["label_prev"] = None
    for name in GRAD_NAMES:
        if inp[name] is not None:
            inp[name].requires_grad_(True)
    torch.library.opcheck(op("pim_attention", backend), pim_args(inp))
    select = R.pim_attention(**inp)[1]
    grad_args = (torch.randn_like(inp["v"]),) + tuple(
        select if k == "p" else inp[k] for k in PIM_ARGS if k != "seed")
    detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in grad_args)
    torch.library.opcheck(op("pim_attention_backward", backend), detached)


def test_opcheck_validate_labels():
    for dtype in (torch.float32, torch.int64, torch.bool):
        labels = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]]).to(dtype)
        torch.library.opcheck(torch.ops.pimm_fast.validate_labels.default, (labels, 3))


# ---------------------------------------------------------------------------------------------
# parity with the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 3, 1025])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_embedding_concat_parity(backend, batch, index_dtype):
    device = device_of(backend)
    for dtype in dtypes_for(backend):
        indices, weight, offsets = make_embedding_inputs(batch, (50, 1, 7, 300), 5, dtype, index_dtype, device)
        indices[batch // 2] = indices[0]  # duplicates accumulate in the backward
        out = pimm_fast.ops.embedding_concat(indices, weight, offsets, backend=backend)
        assert torch.equal(out, R.embedding_concat(indices, weight, offsets))  # a gather is exact
        grad = torch.randn(batch, 20, dtype=torch.float64, device=device).to(dtype)
        got = op("embedding_concat_backward", backend)(grad, indices, offsets, weight.shape[0])
        expected = R.embedding_concat_backward(grad, indices, offsets, weight.shape[0])
        assert got.dtype == dtype
        torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch, d", [(1, 8), (3, 32), (1025, 8), (1025, 32), (1025, 64), (37, 5)])
@pytest.mark.parametrize("bias", [False, True])
def test_pim_attention_parity(backend, batch, d, bias):
    device = device_of(backend)
    for dtype in dtypes_for(backend):
        inp = make_pim_inputs(batch, d, dtype, bias=bias, device=device)
        u_ref, sel_ref = R.pim_attention(**inp)
        u, sel = pimm_fast.ops.pim_attention(*pim_args(inp)[:10], b_q=inp["b_q"], b_k=inp["b_k"], b_v=inp["b_v"],
                                             backend=backend)
        assert torch.equal(sel, sel_ref)  # bit-identical draws
        assert u.dtype == dtype
        torch.testing.assert_close(u, u_ref, **TOL[dtype])
        grad_u = torch.randn(batch, d, dtype=torch.float64, device=device).to(dtype)
        kwargs = {k: inp[k] for k in PIM_ARGS if k not in ("p", "seed")}
        expected = R.pim_attention_backward(grad_u, select=sel_ref, **kwargs)
        got = op("pim_attention_backward", backend)(grad_u, *(sel_ref if k == "p" else inp[k]
                                                               for k in PIM_ARGS if k != "seed"))
        for name, a, b in zip(GRAD_NAMES, got, expected):
            scale = max(1.0, b.abs().max().item())  # weight gradients are sums over the batch
            torch.testing.assert_close(a.float() / scale, b.float() / scale, **TOL[dtype], msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_select_is_bit_identical_across_backends(backend):
    device = device_of(backend)
    for seed in (0, 1, 2**31 + 3, 2**62 - 7):
        for p in (0.0, 0.1, 0.5, 0.999, 1.0):
            inp = make_pim_inputs(2051, 8, seed=seed, p=p, device=device)
            sel = op("pim_attention", backend)(*pim_args(inp))[1]
            assert torch.equal(sel.cpu(), R.philox_uniform(seed, 2051) < p)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [False, True])
def test_pim_attention_gradcheck_fp64(backend, bias):
    inp = make_pim_inputs(9, 6, torch.float64, bias=bias, device=device_of(backend))
    names = [n for n in GRAD_NAMES if inp[n] is not None]
    leaves = [inp[n].requires_grad_(True) for n in names]

    def fn(*tensors):
        merged = {**inp, **dict(zip(names, tensors))}
        return op("pim_attention", backend)(*pim_args(merged))[0]

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embedding_concat_gradcheck_fp64(backend):
    indices, weight, offsets = make_embedding_inputs(7, (3, 4, 2), 3, torch.float64, device=device_of(backend))
    indices[2] = indices[1]
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: op("embedding_concat", backend)(indices, w, offsets), (weight,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gradient_to_label_prev_or_pred_prev(backend):
    inp = make_pim_inputs(16, 8, device=device_of(backend))
    inp["pred_prev"].requires_grad_(True)
    inp["v"].requires_grad_(True)
    u, _ = op("pim_attention", backend)(*pim_args(inp))
    u.sum().backward()
    assert inp["pred_prev"].grad is None
    assert inp["v"].grad is not None and inp["v"].grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------
# bad input: clear Python errors from every backend, never a crash
# ---------------------------------------------------------------------------------------------
ALL = ["reference"] + BACKENDS


def call_embedding(backend, indices, weight, offsets):
    return pimm_fast.ops.embedding_concat(indices, weight, offsets, backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_embedding_errors(backend):
    device = device_of(backend) if backend != "reference" else "cpu"
    indices, weight, offsets = make_embedding_inputs(6, (4, 3, 5), 2, device=device)
    bad = indices.clone()
    bad[4, 1] = 3  # field 1 has 3 ids: 0..2
    with pytest.raises(IndexError, match=r"id 3 out of range for field 1 \(size 3\) at sample 4"):
        call_embedding(backend, bad, weight, offsets)
    bad = indices.clone()
    bad[2, 0] = -1
    with pytest.raises(IndexError, match=r"id -1 out of range for field 0 \(size 4\) at sample 2"):
        call_embedding(backend, bad, weight, offsets)
    bad = indices.clone()
    bad[5, 2] = 2**40 if indices.dtype == torch.int64 else 2**30
    with pytest.raises(IndexError, match="out of range for field 2"):
        call_embedding(backend, bad, weight, offsets)
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        call_embedding(backend, indices.float(), weight, offsets)
    with pytest.raises(TypeError, match="weight must be a floating tensor"):
        call_embedding(backend, indices, weight.long(), offsets)
    with pytest.raises(ValueError, match=r"field_offsets must be \[F\]"):
        call_embedding(backend, indices, weight, offsets[:2])
    with pytest.raises(ValueError, match=r"indices must be \[B, F\]"):
        call_embedding(backend, indices[0], weight, offsets)
    with pytest.raises(ValueError, match="field_offsets must start at 0, be non-decreasing"):
        call_embedding(backend, indices, weight, torch.tensor([0, 5, 4], device=device))


def call_pim(backend, inp):
    return pimm_fast.ops.pim_attention(*pim_args(inp)[:10], b_q=inp["b_q"], b_k=inp["b_k"], b_v=inp["b_v"],
                                       backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_pim_attention_errors(backend):
    device = device_of(backend) if backend != "reference" else "cpu"
    base = make_pim_inputs(12, 8, device=device)

    def expect(error, match, **changes):
        with pytest.raises(error, match=match):
            call_pim(backend, {**base, **changes})

    nan_pred = base["pred_prev"].clone()
    nan_pred[7] = float("nan")
    expect(ValueError, r"pred_prev contains NaN \(.*sample 7\)", pred_prev=nan_pred)
    bad_label = base["label_prev"].clone()
    bad_label[3] = 0.5
    expect(ValueError, "label_prev must be 0 or 1, got 0.5 at sample 3", label_prev=bad_label)
    expect(ValueError, r"h_prev must have shape \[12, 8\]", h_prev=base["h_prev"][:5])
    expect(ValueError, r"w_q must have shape \[8, 8\]", w_q=base["w_q"][:, :4])
    expect(ValueError, r"pred_prev must have shape \[12\]", pred_prev=base["pred_prev"][:3])
    expect(ValueError, r"v must be \[B, d\]", v=base["v"][0])
    expect(TypeError, "w_k has dtype torch.float64 but v has torch.float32", w_k=base["w_k"].double())
    expect(TypeError, "pred_prev must be a floating tensor", pred_prev=base["pred_prev"].long())
    expect(ValueError, r"p must lie in \[0, 1\]", p=torch.tensor(1.5))
    expect(ValueError, "seed must be non-negative", seed=torch.tensor(-3))
    expect(ValueError, "p must be a 0-dim tensor", p=torch.tensor([0.5]))
    expect(TypeError, "seed must have dtype", seed=torch.tensor(3.0))
    # without labels p and seed are unused, and still checked (the CUDA kernel once skipped them)
    expect(ValueError, r"p must lie in \[0, 1\]", label_prev=None, p=torch.tensor(1.5))
    expect(TypeError, "seed must have dtype", label_prev=None, seed=torch.tensor(3.0))


def test_unavailable_backend_is_an_error_not_a_fallback():
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available for cpu tensors"):
        pimm_fast.ops.resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        pimm_fast.ops.resolve_backend("fast", "cpu")
    assert pimm_fast.ops.resolve_backend("auto", "cpu") == ("cpp" if backends.cpp_available() else "reference")
    assert pimm_fast.ops.resolve_backend("reference", "cuda") == "reference"


@pytest.mark.skipif(not backends.is_available("cpp", "cpu"), reason="C++ kernels not built")
def test_cpp_kernels_agree_across_thread_counts():
    """The C++ kernels split batches over OpenMP threads: per-sample outputs are identical, sums over the
    batch (weight gradients) differ only by rounding."""
    inp = make_pim_inputs(3000, 32, bias=True)
    grad_u = torch.randn(3000, 32)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            u, sel = op("pim_attention", "cpp")(*pim_args(inp))
            grads = op("pim_attention_backward", "cpp")(grad_u, *(sel if k == "p" else inp[k]
                                                                  for k in PIM_ARGS if k != "seed"))
            results.append((u, sel, grads))
    finally:
        torch.set_num_threads(previous)
    (u1, s1, g1), (u2, s2, g2) = results
    assert torch.equal(u1, u2) and torch.equal(s1, s2)
    assert torch.equal(g1[0], g2[0]) and torch.equal(g1[1], g2[1])  # per-sample gradients
    for a, b in zip(g1[2:], g2[2:]):
        scale = b.abs().max()  # sums over 3000 samples: compare relative to their magnitude
        torch.testing.assert_close(a / scale, b / scale, rtol=1e-5, atol=1e-5)
