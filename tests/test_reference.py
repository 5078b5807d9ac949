"""The specification itself: Philox draws, gradients, semantics of pimm_fast.reference."""
import math

import pytest
import torch

from pimm_fast import reference as R
from pimm_fast.ops import backends

from .helpers import make_embedding_inputs, make_pim_inputs


# ---------------------------------------------------------------------------------------------
# Philox
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("counter, key, expected", [
    # Known-answer vectors published with Random123 (kat_vectors, philox4x32_10).
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(counter, key, expected):
    word = lambda v: torch.tensor([v], dtype=torch.int64)  # noqa: E731
    out = R.philox4x32_10(tuple(map(word, counter)), tuple(map(word, key)))
    assert tuple(int(o) for o in out) == expected


SEEDS = [0, 1, 7, 123456789, 2**31 - 1, 2**31, 2**32 + 5, 2**62 - 1]


@pytest.mark.skipif(not backends.triton_available("cpu"), reason="needs triton (interpreter on CPU)")
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [1, 3, 1025, 4099])
def test_philox_uniform_matches_triton_tl_rand(seed, n):
    from pimm_fast.triton import philox

    device = "cuda" if torch.cuda.is_available() else "cpu"
    expected = philox.uniform(seed, n, device).cpu()
    got = R.philox_uniform(seed, n)
    assert got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))  # bit for bit


def test_philox_uniform_is_uniform_and_deterministic():
    u = R.philox_uniform(42, 200_000)
    assert torch.equal(u, R.philox_uniform(torch.tensor(42), 200_000))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.all((hist - 0.1).abs() < 0.005)
    assert not torch.equal(u[:1000], R.philox_uniform(43, 1000))


def test_philox_uniform_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed must be non-negative"):
        R.philox_uniform(-1, 4)


# ---------------------------------------------------------------------------------------------
# embedding_concat
# ---------------------------------------------------------------------------------------------
def test_embedding_concat_is_lookup_then_concat():
    field_dims = (4, 1, 6)
    indices, weight, offsets = make_embedding_inputs(5, field_dims, 3, torch.float64)
    out = R.embedding_concat(indices, weight, offsets)
    for b in range(5):
        expected = torch.cat([weight[offsets[f] + indices[b, f]] for f in range(3)])
        assert torch.equal(out[b], expected)


def test_embedding_concat_gradcheck_fp64():
    indices, weight, offsets = make_embedding_inputs(6, (3, 5, 2), 4, torch.float64)
    indices[1] = indices[0]  # repeated rows must accumulate
    weight.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: R.embedding_concat(indices, w, offsets), (weight,))


def test_embedding_concat_backward_matches_autograd():
    indices, weight, offsets = make_embedding_inputs(33, (7, 3, 9, 2), 5, torch.float64)
    weight.requires_grad_(True)
    grad = torch.randn(33, 20, dtype=torch.float64)
    (auto,) = torch.autograd.grad(R.embedding_concat(indices, weight, offsets), weight, grad)
    assert torch.allclose(R.embedding_concat_backward(grad, indices, offsets, weight.shape[0]), auto)


# ---------------------------------------------------------------------------------------------
# pim_attention
# ---------------------------------------------------------------------------------------------
def test_pim_attention_matches_the_papers_equations():
    """Eqs. 1-3, 5-6 written out sample by sample, with Q, K, V as explicit matrices."""
    inp = make_pim_inputs(5, 4, torch.float64, bias=True)
    u, select = R.pim_attention(**inp)
    for i in range(5):
        y_star = inp["label_prev"][i] if select[i] else inp["pred_prev"][i]
        z = torch.sigmoid(y_star * inp["w_prior"])
        zm = z + inp["h_prev"][i]
        tokens = [inp["v"][i], zm]
        Q = lambda a: inp["w_q"] @ a + inp["b_q"]  # noqa: E731
        K = lambda a: inp["w_k"] @ a + inp["b_k"]  # noqa: E731
        V = lambda a: inp["w_v"] @ a + inp["b_v"]  # noqa: E731
        scores = torch.stack([Q(a) @ K(a) / math.sqrt(4) for a in tokens])
        w = torch.softmax(scores, 0)
        expected = inp["v"][i] + w[0] * V(tokens[0]) + w[1] * V(tokens[1])
        assert torch.allclose(u[i], expected, atol=1e-12)


def test_select_follows_philox_and_p():
    inp = make_pim_inputs(4096, 8, torch.float32)
    for p in (0.0, 0.25, 0.5, 1.0):
        inp["p"] = torch.tensor(p)
        _, select = R.pim_attention(**inp)
        assert torch.equal(select, R.philox_uniform(inp["seed"], 4096) < p)
        assert abs(select.float().mean().item() - p) < 0.03
    inp["label_prev"] = None
    assert not R.pim_attention(**inp)[1].any()  # inference: no labels, prediction always


def test_label_and_prediction_are_used_where_selected():
    inp = make_pim_inputs(64, 8, torch.float64)
    inp["p"] = torch.tensor(1.0)
    with_labels, _ = R.pim_attention(**inp)
    inp["pred_prev"] = inp["label_prev"].clone()
    inp["p"] = torch.tensor(0.0)
    with_preds_equal_labels, _ = R.pim_attention(**inp)
    assert torch.allclose(with_labels, with_preds_equal_labels)


@pytest.mark.parametrize("bias", [False, True])
def test_pim_attention_gradcheck_fp64(bias):
    inp = make_pim_inputs(7, 5, torch.float64, bias=bias)
    names = ["v", "h_prev", "w_prior", "w_q", "w_k", "w_v"] + (["b_q", "b_k", "b_v"] if bias else [])
    leaves = [inp[n].requires_grad_(True) for n in names]

    def fn(*tensors):
        return R.pim_attention(**{**inp, **dict(zip(names, tensors))})[0]

    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("with_label", [False, True])
def test_pim_attention_backward_matches_autograd(bias, with_label):
    inp = make_pim_inputs(37, 6, torch.float64, bias=bias)
    if not with_label:
        inp["label_prev"] = None
    names = ["v", "h_prev", "w_prior", "w_q", "w_k", "w_v", "b_q", "b_k", "b_v"]
    leaves = {n: inp[n].requires_grad_(True) for n in names if inp[n] is not None}
    u, select = R.pim_attention(**inp)
    grad_u = torch.randn_like(u)
    auto = dict(zip(leaves, torch.autograd.grad(u, list(leaves.values()), grad_u)))
    manual = dict(zip(names, R.pim_attention_backward(grad_u, **{k: inp[k] for k in (
        "v", "h_prev", "label_prev", "pred_prev", "w_prior", "w_q", "w_k", "w_v")}, select=select,
        b_q=inp["b_q"], b_k=inp["b_k"], b_v=inp["b_v"])))
    for name, value in auto.items():
        assert torch.allclose(manual[name], value, atol=1e-12), name


def test_no_gradient_reaches_label_prev_or_pred_prev():
    inp = make_pim_inputs(16, 4, torch.float64)
    inp["pred_prev"].requires_grad_(True)
    inp["label_prev"].requires_grad_(True)
    inp["v"].requires_grad_(True)
    u, _ = R.pim_attention(**inp)
    u.sum().backward()
    assert inp["pred_prev"].grad is None and inp["label_prev"].grad is None
    assert inp["v"].grad is not None


def test_bf16_is_computed_in_fp32():
    inp = make_pim_inputs(32, 8, torch.float32)
    u32, s32 = R.pim_attention(**inp)
    bf = {k: (v.bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0 else v)
          for k, v in inp.items()}
    u16, s16 = R.pim_attention(**bf)
    assert u16.dtype == torch.bfloat16 and torch.equal(s16, s32)
    assert torch.allclose(u16.float(), u32, atol=0.1, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------------------------
def test_validate_labels_returns_float32():
    y = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.int64)
    out = R.validate_labels(y, 2)
    assert out.dtype == torch.float32 and torch.equal(out, y.float())


@pytest.mark.parametrize("labels, num_tasks, error, match", [
    (torch.tensor([[1.0, 0.0, 0.0]]), 2, ValueError, r"labels must be \[B, T\] with T = 2"),
    (torch.tensor([1.0, 0.0]), 2, ValueError, r"labels must be \[B, T\]"),
    (torch.tensor([[1.0, 0.5]]), 2, ValueError, r"got 0.5 at row 0, task 1"),
    (torch.tensor([[1.0, 1.0], [float("nan"), 0.0]]), 2, ValueError, r"got nan at row 1, task 0"),
    (torch.tensor([[2, 0]]), 2, ValueError, "must be 0 or 1"),
    (torch.tensor([[1, 1, 0], [1, 0, 1]]), 3, ValueError, r"break the cascade at row 1: task 2 is 1 but task 1"),
    (torch.tensor([[0, 1]]), 2, ValueError, r"break the cascade at row 0"),
    (torch.tensor([[1, 0]], dtype=torch.complex64), 2, TypeError, "labels must be a float, integer or bool"),
])
def test_validate_labels_errors(labels, num_tasks, error, match):
    with pytest.raises(error, match=match):
        R.validate_labels(labels, num_tasks)
