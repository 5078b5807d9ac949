"""Triton kernels against the reference: the ops added for bags and fused updates, and the defects of
issue 11 that the interpreter can show (non-contiguous inputs, wide d, fp64, direct calls with bad ids,
deterministic mode). On a GPU machine (no interpreter) the same tests run on CUDA tensors."""
import pytest
import torch

from pimm_fast import FusedEmbedding
from pimm_fast import reference as R
from pimm_fast.ops import backends, op

from .helpers import PIM_ARGS, make_embedding_inputs, make_pim_inputs, pim_args
from .test_embedding import FIELD_DIMS, HPARAMS, as_values, batch_ids, make_state, random_bags

pytestmark = pytest.mark.skipif(not (backends.is_available("triton", "cpu") or backends.is_available("triton", "cuda")),
                                reason="triton not installed / not interpreted and no GPU")
DEVICE = "cpu" if backends.triton_interpreted() else "cuda"
TOL = {torch.float64: dict(atol=1e-10, rtol=1e-10), torch.float32: dict(atol=1e-5, rtol=1e-5),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=2e-3, rtol=2e-3)}
DTYPES = [torch.float32, torch.float64] + ([] if DEVICE == "cpu" else [torch.bfloat16, torch.float16])
POOLING = [0, 1, 1, 0]
# opcheck without its torch.compile (aot_dispatch) pass: minutes in the interpreter; tests/test_ops.py covers
# torch.compile of the Triton ops on the whole model.
OPCHECK = dict(test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---------------------------------------------------------------------------------------------
# multi-hot bags
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch, dim", [(1, 5), (9, 8), (70, 70)])
def test_bags_match_reference(dtype, batch, dim):
    x = random_bags(batch, device=DEVICE)
    _, weight, offsets = make_embedding_inputs(1, FIELD_DIMS, dim, dtype, device=DEVICE)
    got = op("embedding_bags_concat", "triton")(x.values, x.bag_offsets, weight, offsets, POOLING)
    expected = R.embedding_bags_concat(x.values, x.bag_offsets, weight, offsets, POOLING)
    assert got.dtype == dtype and got.is_contiguous()
    torch.testing.assert_close(got, expected, **TOL[dtype])
    grad = torch.randn(batch, 4 * dim, dtype=torch.float64, device=DEVICE).to(dtype)
    got = op("embedding_bags_concat_backward", "triton")(grad, x.values, x.bag_offsets, offsets, POOLING,
                                                          weight.shape[0])
    expected = R.embedding_bags_concat_backward(grad, x.values, x.bag_offsets, offsets, POOLING, weight.shape[0])
    torch.testing.assert_close(got, expected, **TOL[dtype])


def test_bags_opcheck_and_gradcheck():
    x = random_bags(5, device=DEVICE)
    _, weight, offsets = make_embedding_inputs(1, FIELD_DIMS, 3, torch.float64, device=DEVICE)
    weight.requires_grad_(True)
    kernel = op("embedding_bags_concat", "triton")
    torch.library.opcheck(kernel, (x.values, x.bag_offsets, weight, offsets, POOLING), **OPCHECK)
    assert torch.autograd.gradcheck(lambda w: kernel(x.values, x.bag_offsets, w, offsets, POOLING), (weight,),
                                    fast_mode=True)


def test_bags_errors():
    x = random_bags(4, device=DEVICE)
    _, weight, offsets = make_embedding_inputs(1, FIELD_DIMS, 3, device=DEVICE)
    values = x.values.clone()
    values[-1] = 300  # the last value belongs to field 3 (size 300)
    with pytest.raises(IndexError, match="id 300 out of range for field 3"):
        op("embedding_bags_concat", "triton")(values, x.bag_offsets, weight, offsets, POOLING)
    grad = torch.randn(4, 12, device=DEVICE)
    with pytest.raises(IndexError, match="id 300 out of range for field 3"):  # a direct backward call too
        op("embedding_bags_concat_backward", "triton")(grad, values, x.bag_offsets, offsets, POOLING, weight.shape[0])
    with pytest.raises(ValueError, match=r"grad_out must be \[B, F\*D\] with B = 4"):
        op("embedding_bags_concat_backward", "triton")(grad[:3], x.values, x.bag_offsets, offsets, POOLING,
                                                        weight.shape[0])
    bad_offsets = x.bag_offsets.clone()
    bad_offsets[1] = bad_offsets[2] + 1
    with pytest.raises(ValueError, match="bag_offsets must run from 0 to the number of values"):
        op("embedding_bags_concat", "triton")(x.values, bad_offsets, weight, offsets, POOLING)


# ---------------------------------------------------------------------------------------------
# fused updates
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", list(HPARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("batch, dim", [(1, 5), (67, 8), (33, 70)])
def test_updates_match_reference(optimizer, dtype, batch, dim):
    indices, weight, offsets = make_embedding_inputs(batch, FIELD_DIMS, dim, dtype, device=DEVICE)
    indices[-1] = indices[0]  # a row hit twice in one batch gets one update with the summed gradient
    state_ref = make_state(optimizer, weight)
    state_got = tuple(s.clone() for s in state_ref)
    w_ref, w_got = weight.clone(), weight.clone()
    for _ in range(3):
        grad = torch.randn(batch, 4 * dim, dtype=torch.float64, device=DEVICE).to(dtype)
        args = (*as_values(grad, indices), offsets)
        getattr(R, f"embedding_update_{optimizer}")(*args, w_ref, *state_ref, *HPARAMS[optimizer])
        op(f"embedding_update_{optimizer}", "triton")(*args, w_got, *state_got, *HPARAMS[optimizer])
    # bf16: the table is rounded after every step; one rounding apart in a step grows to a few ulps (2^-8)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(w_got, w_ref, atol=tol, rtol=tol)
    for got, ref in zip(state_got, state_ref):
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    untouched = torch.ones(weight.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[(indices.long() + offsets).reshape(-1)] = False
    assert torch.equal(w_got[untouched], weight[untouched])


def test_update_sums_duplicates_and_is_deterministic():
    """Many hits of one row (a run over several chunks): the kernels' sum equals the reference, bit for bit
    across runs and with torch.use_deterministic_algorithms on (the update has no atomics)."""
    indices, weight, offsets = make_embedding_inputs(200, FIELD_DIMS, 6, device=DEVICE)
    indices[:, 0] = 7
    grad = torch.randn(200, 24, device=DEVICE)
    results = []
    for deterministic in (False, True, False):
        w = weight.clone()
        state = make_state("adam", w)
        torch.use_deterministic_algorithms(deterministic)
        try:
            op("embedding_update_adam", "triton")(*as_values(grad, indices), offsets, w, *state, *HPARAMS["adam"])
        finally:
            torch.use_deterministic_algorithms(False)
        results.append(w)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    w_ref = weight.clone()
    R.embedding_update_adam(*as_values(grad, indices), offsets, w_ref, *make_state("adam", w_ref), *HPARAMS["adam"])
    torch.testing.assert_close(results[0], w_ref)


# The two-level reduction of pimm_fast/triton/update.py: stage 1 sums runs cut into chunks of CHUNK sorted
# positions, stage 2 adds the partials of the runs that cross a chunk end (BLOCK_C at a time, BOUNDS chunk
# ends per program). The row layouts below put run boundaries on and around every case of that split.
def _run_lengths(case: str) -> list[int]:
    from pimm_fast.triton.update import BLOCK_C, BOUNDS, CHUNK

    if case == "distinct":
        return [1] * (3 * CHUNK + 5)
    if case == "hot":  # one row takes most of the batch: a run over many chunks, with a few rows around it
        return [1, 2, 1] + [BLOCK_C * CHUNK + 2 * CHUNK + 7] + [1, 3]
    # runs that fill a chunk exactly, cross one chunk end, end on one, start on one, span whole chunks;
    # more crossing runs than BOUNDS chunk ends in a row (one stage-2 program updates several of them)
    return ([CHUNK, CHUNK + 1, CHUNK - 1, 2 * CHUNK, 1, 3 * CHUNK + 2, 2, CHUNK - 3]
            + [CHUNK + 3] * (BOUNDS + 2) + [1, 1, 5 * CHUNK - 1, 2])


def _rows_batch(case: str, dim: int, dtype, seed: int):
    """(grad_values, values, value_offsets, field_offsets, weight) for one field whose rows form runs of the
    case's lengths, rows in random order (the stable sort's permutation then orders each run's sum)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = _run_lengths(case)
    num_rows = 2 * len(lengths) + 1
    rows = torch.randperm(num_rows, generator=gen)[:len(lengths)]  # runs in random row order, some rows unused
    values = rows.repeat_interleave(torch.tensor(lengths))
    values = values[torch.randperm(values.numel(), generator=gen)]
    n = values.numel()
    grad = torch.randn(n, dim, dtype=torch.float64, generator=gen).to(dtype)
    weight = torch.randn(num_rows, dim, dtype=torch.float64, generator=gen).to(dtype)
    offsets = torch.tensor([0, n], dtype=torch.int64)
    return (grad.to(DEVICE), values.to(DEVICE), offsets.to(DEVICE), torch.zeros(1, dtype=torch.int64, device=DEVICE),
            weight.to(DEVICE))


@pytest.mark.parametrize("case", ["distinct", "hot", "mixed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("optimizer", list(HPARAMS))
def test_update_runs_across_chunks_match_reference_bit_identical(optimizer, dtype, case):
    """All rows distinct, one hot row over more than BLOCK_C chunks (stage 2 adds several blocks of
    partials) and runs on and across chunk ends: the reference's update, and bit-identical on a rerun."""
    dim = 37 if case == "mixed" else 5  # 37: two column blocks (kept to the shorter batch: the interpreter is slow)
    grad, values, value_offsets, field_offsets, weight = _rows_batch(case, dim, dtype, seed=len(case))
    state = make_state(optimizer, weight)
    results = []
    for kernel in (getattr(R, f"embedding_update_{optimizer}"), op(f"embedding_update_{optimizer}", "triton"),
                   op(f"embedding_update_{optimizer}", "triton")):
        w, st = weight.clone(), tuple(x.clone() for x in state)
        kernel(grad, values, value_offsets, field_offsets, w, *st, *HPARAMS[optimizer])
        results.append((w, st))
    (w_ref, st_ref), (w_got, st_got), (w_again, st_again) = results
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(w_got, w_ref, atol=tol, rtol=tol)
    for got, ref, again in zip(st_got, st_ref, st_again):
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        assert torch.equal(got, again)
    assert torch.equal(w_got, w_again)
    untouched = torch.ones(weight.shape[0], dtype=torch.bool, device=DEVICE)
    untouched[values.long()] = False
    assert torch.equal(w_got[untouched], weight[untouched])


@pytest.mark.parametrize("optimizer", list(HPARAMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3, 1025])
def test_update_odd_batches_match_reference(optimizer, dtype, batch):
    """Dense ids of three fields (1 value: one run of the whole batch, at 1025 a tail of exactly BLOCK_C
    chunks; 7 values: runs over several chunks; 50: many short runs crossing chunk ends) at batch sizes that
    fill no chunk exactly."""
    indices, weight, offsets = make_embedding_inputs(batch, (50, 1, 7), 5, dtype, device=DEVICE)
    grad = torch.randn(batch, 3 * 5, dtype=torch.float64, device=DEVICE).to(dtype)
    args = (*as_values(grad, indices), offsets)
    state_ref = make_state(optimizer, weight)
    state_got = tuple(s.clone() for s in state_ref)
    w_ref, w_got = weight.clone(), weight.clone()
    getattr(R, f"embedding_update_{optimizer}")(*args, w_ref, *state_ref, *HPARAMS[optimizer])
    op(f"embedding_update_{optimizer}", "triton")(*args, w_got, *state_got, *HPARAMS[optimizer])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(w_got, w_ref, atol=tol, rtol=tol)
    for got, ref in zip(state_got, state_ref):
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


def test_update_refuses_rows_too_wide_for_int32_block_offsets():
    from pimm_fast.triton.update import BLOCK_C

    D = 2**31 // BLOCK_C  # the stage-2 offsets k * D + column would pass 2^31
    weight = torch.empty(1, D, device=DEVICE)  # never written: the check comes first
    grad_values = torch.zeros(1, 1, device=DEVICE).expand(1, D)
    values = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    offsets = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match=f"rows of {D} columns are too wide for the Triton kernels"):
        op("embedding_update_sgd", "triton")(grad_values, values, torch.tensor([0, 1], device=DEVICE), offsets,
                                             weight, 0.1)


@pytest.mark.parametrize("optimizer", list(HPARAMS))
def test_opcheck_update_ops(optimizer):
    indices, weight, offsets = make_embedding_inputs(17, FIELD_DIMS, 4, device=DEVICE)
    grad = torch.randn(17, 16, device=DEVICE)
    torch.library.opcheck(op(f"embedding_update_{optimizer}", "triton"),
                          (*as_values(grad, indices), offsets, weight, *make_state(optimizer, weight),
                           *HPARAMS[optimizer]), **OPCHECK)


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad", "adam"])
def test_fused_embedding_on_triton_equals_reference(optimizer):
    """FusedEmbedding's training step through the Triton kernels, dense ids and bags."""
    tables = {b: FusedEmbedding(FIELD_DIMS, 4, optimizer=optimizer, lr=HPARAMS[optimizer][0], backend=b,
                                pooling=("sum", "mean", "mean", "sum")).to(DEVICE) for b in ("reference", "triton")}
    tables["triton"].load_state_dict(tables["reference"].state_dict())
    for step in range(3):
        x = batch_ids(16).to(DEVICE) if step % 2 == 0 else random_bags(16, device=DEVICE)
        grad = torch.randn(16, 16, device=DEVICE)
        for emb in tables.values():
            emb(x).backward(grad)
    torch.testing.assert_close(tables["triton"].weight.detach(), tables["reference"].weight.detach())


# ---------------------------------------------------------------------------------------------
# dense lookup and PIM: issue 11 defects
# ---------------------------------------------------------------------------------------------
def test_embedding_backward_direct_call_checks_ids_and_deterministic_mode_agrees():
    indices, weight, offsets = make_embedding_inputs(40, FIELD_DIMS, 3, device=DEVICE)
    grad = torch.randn(40, 12, device=DEVICE)
    backward = op("embedding_concat_backward", "triton")
    bad = indices.clone()
    bad[3, 2] = 7
    with pytest.raises(IndexError, match=r"id 7 out of range for field 2 \(size 7\) at sample 3"):
        backward(grad, bad, offsets, weight.shape[0])
    with pytest.raises(ValueError, match=r"grad_out must be \[B, F\*D\]"):
        backward(grad[:, :5], indices, offsets, weight.shape[0])
    fast = backward(grad, indices, offsets, weight.shape[0])
    torch.use_deterministic_algorithms(True)
    try:
        deterministic = backward(grad, indices, offsets, weight.shape[0])
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(fast, deterministic)
    torch.testing.assert_close(fast, R.embedding_concat_backward(grad, indices, offsets, weight.shape[0]))


@pytest.mark.skipif(not backends.is_available("cpp", "cpu"), reason="C++ kernels not built")
def test_cpp_embedding_backward_direct_call_checks_ids():
    """The same defect on the C++ backward (issue 11, item 12): a bad id raised nothing and wrote out of bounds."""
    indices, weight, offsets = make_embedding_inputs(40, FIELD_DIMS, 3)
    bad = indices.clone()
    bad[3, 2] = 7
    with pytest.raises(IndexError, match=r"id 7 out of range for field 2 \(size 7\) at sample 3"):
        op("embedding_concat_backward", "cpp")(torch.randn(40, 12), bad, offsets, weight.shape[0])


def test_embedding_grid_is_one_dimensional():
    """F on grid axis 1 was limited to 65535 fields; every launch now uses axis 0 only."""
    from pimm_fast.triton import embedding

    assert embedding._programs(3, 100_000) == (100_000,)


@pytest.mark.parametrize("d", [5, 70, 256])
def test_pim_wide_d_and_fp64_match_reference(d):
    """d beyond one column block (the kernels loop over d) in fp32 and fp64, forward and backward."""
    for dtype in (torch.float32, torch.float64):
        inp = make_pim_inputs(37, d, dtype, bias=True, device=DEVICE)
        u, sel = op("pim_attention", "triton")(*pim_args(inp))
        u_ref, sel_ref = R.pim_attention(**inp)
        assert torch.equal(sel, sel_ref)
        torch.testing.assert_close(u, u_ref, **TOL[dtype])
        grad_u = torch.randn(37, d, dtype=torch.float64, device=DEVICE).to(dtype)
        kwargs = {k: inp[k] for k in PIM_ARGS if k not in ("p", "seed")}
        expected = R.pim_attention_backward(grad_u, select=sel_ref, **kwargs)
        got = op("pim_attention_backward", "triton")(grad_u, *(sel_ref if k == "p" else inp[k]
                                                               for k in PIM_ARGS if k != "seed"))
        for a, b in zip(got, expected):
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(a / scale, b / scale, **TOL[dtype])


def test_pim_non_contiguous_v_gives_contiguous_correct_output():
    """u = empty_like(v) kept a transposed v's strides while the kernel wrote row-major (off by up to 4.5)."""
    inp = make_pim_inputs(24, 8, device=DEVICE)
    inp["v"] = inp["v"].t().contiguous().t()
    assert not inp["v"].is_contiguous()
    u, _ = op("pim_attention", "triton")(*pim_args(inp))
    u_ref, _ = R.pim_attention(**inp)
    torch.testing.assert_close(u, u_ref)


def test_pim_backward_checks_select():
    inp = make_pim_inputs(6, 8, device=DEVICE)
    grad_u = torch.randn(6, 8, device=DEVICE)
    args = [inp[k] for k in PIM_ARGS if k not in ("p", "seed")]
    backward = op("pim_attention_backward", "triton")
    with pytest.raises(ValueError, match=r"select must be bool \[B\]"):
        backward(grad_u, *args[:8], torch.zeros(5, dtype=torch.bool, device=DEVICE), *args[8:])
    with pytest.raises(ValueError, match="grad_u must have the shape of v"):
        backward(grad_u[:3], *args[:8], torch.zeros(6, dtype=torch.bool, device=DEVICE), *args[8:])
