"""Fused-optimizer embedding: the update ops and FusedEmbedding against PyTorch's own optimizers."""
import pytest
import torch
import torch.nn.functional as F

import pimm_fast
from pimm_fast import FieldEmbedding, FusedEmbedding, JaggedIds, PIMM
from pimm_fast import reference as R
from pimm_fast.ops import backends, op

from .conftest import requires_cuda
from .helpers import make_embedding_inputs

FIELD_DIMS = (50, 1, 7, 300)
UPDATE_BACKENDS = [
    pytest.param("cpp", marks=pytest.mark.skipif(not backends.is_available("cpp", "cpu"), reason="no C++ kernels")),
    pytest.param("cuda", marks=requires_cuda),
]
HPARAMS = {"sgd": (0.1,), "rowwise_adagrad": (0.1, 1e-10), "adam": (0.01, 0.9, 0.999, 1e-8)}


def device_of(backend):
    return "cuda" if backend == "cuda" or (backend == "triton" and not backends.triton_interpreted()) else "cpu"


# Triton runs in the interpreter on CPU tensors, and compiled on CUDA tensors where there is a GPU.
TRITON = pytest.param("triton", marks=pytest.mark.skipif(
    not (backends.is_available("triton", "cpu") or backends.is_available("triton", "cuda")),
    reason="triton not installed / not interpreted and no GPU"))


def make_state(optimizer, weight):
    ct = torch.float64 if weight.dtype == torch.float64 else torch.float32
    if optimizer == "sgd":
        return ()
    if optimizer == "rowwise_adagrad":
        return (torch.rand(weight.shape[0], dtype=ct, device=weight.device),)
    return (torch.zeros(weight.shape, dtype=ct, device=weight.device),
            torch.zeros(weight.shape, dtype=ct, device=weight.device),
            torch.zeros((), dtype=torch.int64, device=weight.device))


def batch_ids(batch, field_dims=FIELD_DIMS):
    return torch.stack([torch.randint(0, n, (batch,)) for n in field_dims], dim=1)


def as_values(grad, indices):
    """The update ops take field-major values: (grad_values, values, value_offsets) of dense ids."""
    values, value_offsets, grad_values = R.dense_as_values(indices, grad)
    return grad_values, values, value_offsets


def random_bags(batch, field_dims=FIELD_DIMS, max_len=4, device="cpu"):
    """JaggedIds with bags of 0..max_len ids per (field, sample), empty bags included."""
    fields = []
    for n in field_dims:
        lengths = torch.randint(0, max_len + 1, (batch,))
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        fields.append((torch.randint(0, n, (int(offsets[-1]),)), offsets))
    return JaggedIds.from_fields(fields).to(device)


# ---------------------------------------------------------------------------------------------
# the update ops
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
@pytest.mark.parametrize("optimizer", list(HPARAMS))
def test_opcheck_update_ops(backend, optimizer):
    indices, weight, offsets = make_embedding_inputs(17, FIELD_DIMS, 4, device=device_of(backend))
    grad = torch.randn(17, 16, device=weight.device)
    state = make_state(optimizer, weight)
    torch.library.opcheck(op(f"embedding_update_{optimizer}", backend),
                          (*as_values(grad, indices), offsets, weight, *state, *HPARAMS[optimizer]))


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
@pytest.mark.parametrize("optimizer", list(HPARAMS))
@pytest.mark.parametrize("batch", [1, 3, 1025])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_update_ops_match_reference(backend, optimizer, batch, dtype, index_dtype):
    indices, weight, offsets = make_embedding_inputs(batch, FIELD_DIMS, 5, dtype, index_dtype, device_of(backend))
    indices[-1] = indices[0]  # a row hit twice in one batch gets one update with the summed gradient
    state_ref = make_state(optimizer, weight)
    state_got = tuple(s.clone() for s in state_ref)
    w_ref, w_got = weight.clone(), weight.clone()
    for _ in range(3):
        grad = torch.randn(batch, 20, dtype=torch.float64, device=weight.device).to(dtype)
        args = (*as_values(grad, indices), offsets)
        getattr(R, f"embedding_update_{optimizer}")(*args, w_ref, *state_ref, *HPARAMS[optimizer])
        op(f"embedding_update_{optimizer}", backend)(*args, w_got, *state_got, *HPARAMS[optimizer])
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(w_got, w_ref, atol=tol, rtol=tol)
    for got, ref in zip(state_got, state_ref):
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
    untouched = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
    untouched[(indices.long() + offsets).reshape(-1)] = False
    assert torch.equal(w_got[untouched], weight[untouched])  # rows the batch did not touch stay as they were


@pytest.mark.parametrize("backend", UPDATE_BACKENDS + [TRITON])
def test_update_errors_leave_the_table_untouched(backend):
    indices, weight, offsets = make_embedding_inputs(8, FIELD_DIMS, 4, device=device_of(backend))
    grad = torch.randn(8, 16, device=weight.device)
    state = make_state("adam", weight)
    before = weight.clone()
    bad = indices.clone()
    bad[5, 3] = 300
    update = {name: op(f"embedding_update_{name}", backend) for name in HPARAMS}
    with pytest.raises(IndexError, match=r"id 300 out of range for field 3 \(size 300\) at position 5"):
        update["adam"](*as_values(grad, bad), offsets, weight, *state, *HPARAMS["adam"])
    assert torch.equal(weight, before) and int(state[2]) == 0
    grad_values, values, value_offsets = as_values(grad, indices)
    with pytest.raises(ValueError, match=r"grad_values must be \[n, D\]"):
        update["sgd"](grad_values[:, :2], values, value_offsets, offsets, weight, 0.1)
    with pytest.raises(ValueError, match="value offsets must run from 0"):
        update["sgd"](grad_values, values, value_offsets.flip(0), offsets, weight, 0.1)
    with pytest.raises(TypeError, match="exp_avg must have dtype torch.float32"):
        update["adam"](grad_values, values, value_offsets, offsets, weight, state[0].double(), state[1], state[2],
                       *HPARAMS["adam"])
    with pytest.raises(ValueError, match="state_sum must have shape"):
        update["rowwise_adagrad"](grad_values, values, value_offsets, offsets, weight, state[0], 0.1, 1e-10)
    with pytest.raises(ValueError, match="step must be a 0-dim int64 tensor"):
        update["adam"](grad_values, values, value_offsets, offsets, weight, state[0], state[1],
                       torch.zeros(1, dtype=torch.int64, device=weight.device), *HPARAMS["adam"])
    with pytest.raises(ValueError, match="weight must be contiguous"):
        update["sgd"](grad_values, values, value_offsets, offsets, weight.t().contiguous().t(), 0.1)
    assert torch.equal(weight, before) and int(state[2]) == 0


# ---------------------------------------------------------------------------------------------
# FusedEmbedding against torch.optim on sparse gradients
# ---------------------------------------------------------------------------------------------
FUSED_BACKENDS = ["reference"] + (["cpp"] if backends.is_available("cpp", "cpu") else [])


def torch_optimizer_run(optimizer, weight, offsets, batches):
    """The table after the same steps with PyTorch's optimizer on F.embedding(sparse=True) gradients."""
    param = torch.nn.Parameter(weight.clone())
    opt = {"sgd": lambda: torch.optim.SGD([param], lr=0.1),
           "adam": lambda: torch.optim.SparseAdam([param], lr=0.01, betas=(0.9, 0.999), eps=1e-8)}[optimizer]()
    for ids, grad in batches:
        opt.zero_grad()
        F.embedding(ids + offsets, param, sparse=True).flatten(1).backward(grad)
        opt.step()
    return param.detach()


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fused_embedding_equals_torch_sparse_optimizer(backend, optimizer):
    lr = HPARAMS[optimizer][0]
    emb = FusedEmbedding(FIELD_DIMS, 4, optimizer=optimizer, lr=lr, backend=backend)
    start = emb.weight.detach().clone()
    batches = []
    for _ in range(4):
        ids = batch_ids(64)
        ids[1] = ids[0]
        batches.append((ids, torch.randn(64, 16)))
    for ids, grad in batches:
        emb(ids).backward(grad)
    expected = torch_optimizer_run(optimizer, start, emb.field_offsets, batches)
    torch.testing.assert_close(emb.weight.detach(), expected, atol=2e-6, rtol=1e-5)
    assert emb.weight.grad is None


def test_rowwise_adagrad_follows_its_formula():
    emb = FusedEmbedding((4,), 2, optimizer="rowwise_adagrad", lr=0.5, eps=0.0, backend=FUSED_BACKENDS[-1])
    w0 = emb.weight.detach().clone()
    ids = torch.tensor([[1], [1], [3]])
    grad = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, -2.0]])
    emb(ids).backward(grad)
    g1, g3 = torch.tensor([4.0, 2.0]), torch.tensor([0.0, -2.0])  # row 1 sums its two samples
    assert torch.allclose(emb.state_sum, torch.tensor([0.0, 10.0, 0.0, 2.0]))  # mean of g^2 per row
    assert torch.allclose(emb.weight[1], w0[1] - 0.5 * g1 / 10.0 ** 0.5)
    assert torch.allclose(emb.weight[3], w0[3] - 0.5 * g3 / 2.0 ** 0.5)
    assert torch.equal(emb.weight[0], w0[0]) and torch.equal(emb.weight[2], w0[2])


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_pimm_with_fused_embedding_trains_and_saves_its_state(backend, tmp_path):
    emb = FusedEmbedding(FIELD_DIMS, 4, optimizer="adam", lr=0.01, backend=backend)
    model = PIMM(FIELD_DIMS, embed_dim=4, tower_dims=(16, 8), embedding=emb, backend=backend)
    dense = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = batch_ids(32), torch.zeros(32, 2)
    y[:8, 0] = 1
    y[:3, 1] = 1
    before = emb.weight.detach().clone()
    for _ in range(2):
        loss = model.loss(model(x, labels=y), y)
        dense.zero_grad()
        loss.backward()
        dense.step()
    assert not torch.equal(emb.weight, before) and int(emb.step) == 2
    assert emb.weight.grad is None and emb.weight not in dense.state  # the dense optimizer skips the table
    state = model.state_dict()
    assert {"embedding.exp_avg", "embedding.exp_avg_sq", "embedding.step"} <= set(state)
    torch.save(state, tmp_path / "model.pt")
    clone = PIMM(FIELD_DIMS, embed_dim=4, tower_dims=(16, 8), backend=backend,
                 embedding=FusedEmbedding(FIELD_DIMS, 4, optimizer="adam", lr=0.01, backend=backend))
    clone.load_state_dict(torch.load(tmp_path / "model.pt"))
    assert torch.equal(clone.embedding.exp_avg, emb.exp_avg) and int(clone.embedding.step) == 2


def _pimm_with_fused_table(backend, seed=0):
    torch.manual_seed(seed)
    emb = FusedEmbedding(FIELD_DIMS, 4, optimizer="adam", lr=0.01, backend=backend)
    # p = 1: PIM always reads the true label, so no Bernoulli draw (whose seed torch.compile draws
    # from its own generator) separates the compiled run from the eager one.
    return PIMM(FIELD_DIMS, embed_dim=4, tower_dims=(16, 8), embedding=emb, backend=backend,
                curriculum=pimm_fast.Curriculum(alpha=1.0, step=0.0, floor=1.0))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fused_embedding_under_torch_compile_matches_eager(backend):
    # torch 2.11's AOT autograd refused an in-place table update in the backward while the table
    # required grad; the table now does not, and step_trigger calls the update.
    x, y = batch_ids(32), torch.zeros(32, 2)
    y[:8, 0] = 1
    y[:3, 1] = 1
    compiled, eager = _pimm_with_fused_table(backend), _pimm_with_fused_table(backend)
    torch._dynamo.reset()
    step = torch.compile(lambda x, y: compiled.loss(compiled(x, labels=y), y), fullgraph=True)
    for _ in range(2):
        step(x, y).backward()
        eager.loss(eager(x, labels=y), y).backward()
    assert int(compiled.embedding.step) == 2
    assert not torch.equal(compiled.embedding.weight, _pimm_with_fused_table(backend).embedding.weight)
    torch.testing.assert_close(compiled.embedding.weight, eager.embedding.weight, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(compiled.embedding.exp_avg_sq, eager.embedding.exp_avg_sq, atol=1e-9, rtol=1e-5)


def test_fused_table_is_trained_by_its_update_not_by_autograd():
    emb = FusedEmbedding(FIELD_DIMS, 4, optimizer="sgd", lr=0.1, backend=FUSED_BACKENDS[-1])
    assert not emb.weight.requires_grad and emb.step_trigger.requires_grad and emb.step_trigger.numel() == 0
    before = emb.weight.detach().clone()
    emb(batch_ids(8)).sum().backward()
    assert not torch.equal(emb.weight, before) and emb.weight.grad is None and emb.step_trigger.grad is None
    emb.requires_grad_(False)  # freezes the table: the lookup no longer requires grad
    frozen = emb.weight.detach().clone()
    out = emb(batch_ids(8))
    assert not out.requires_grad
    (out.sum() + torch.ones((), requires_grad=True)).backward()
    assert torch.equal(emb.weight, frozen)


def test_fused_state_dict_without_step_trigger_still_loads():
    emb = FusedEmbedding(FIELD_DIMS, 4, optimizer="adam", lr=0.01)
    state = emb.state_dict()
    assert "step_trigger" in state
    del state["step_trigger"]  # a checkpoint written before the trigger existed
    clone = FusedEmbedding(FIELD_DIMS, 4, optimizer="adam", lr=0.01)
    clone.load_state_dict(state)
    assert torch.equal(clone.weight, emb.weight)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(optimizer="lamb"), ValueError, "unknown fused optimizer 'lamb'"),
    (dict(lr=0.0), ValueError, "lr must be > 0"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas must be two numbers"),
    (dict(eps=-1.0), ValueError, "eps must be >= 0"),
])
def test_fused_embedding_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        FusedEmbedding(FIELD_DIMS, 4, **kwargs)


# ---------------------------------------------------------------------------------------------
# multi-hot fields (bags)
# ---------------------------------------------------------------------------------------------
BAG_BACKENDS = ["reference"] + UPDATE_BACKENDS


@pytest.mark.parametrize("backend", BAG_BACKENDS)
@pytest.mark.parametrize("batch", [1, 3, 257])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_bags_pool_sum_and_mean(backend, batch, dtype):
    device = device_of(backend) if backend != "reference" else "cpu"
    emb = FieldEmbedding(FIELD_DIMS, 3, backend=backend, pooling=("sum", "mean", "mean", "sum"), dtype=dtype).to(device)
    x = random_bags(batch, device=device)
    out = emb(x)
    bo, vals, w = x.bag_offsets.cpu(), x.values.cpu(), emb.weight.detach().cpu().double()
    offsets = emb.field_offsets.cpu()
    for b in range(batch):
        for f, mode in enumerate(emb.pooling):
            k = f * batch + b
            rows = w[offsets[f] + vals[bo[k]:bo[k + 1]]]
            expected = torch.zeros(3, dtype=torch.float64) if len(rows) == 0 else (
                rows.sum(0) if mode == "sum" else rows.mean(0))
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
            torch.testing.assert_close(out[b, 3 * f:3 * f + 3].cpu().double(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", UPDATE_BACKENDS)
def test_bags_op_opcheck_gradcheck_and_parity(backend):
    device = device_of(backend)
    x = random_bags(9, device=device)
    _, weight, offsets = make_embedding_inputs(1, FIELD_DIMS, 3, torch.float64, device=device)
    weight.requires_grad_(True)
    pooling = [0, 1, 1, 0]
    kernel = op("embedding_bags_concat", backend)
    torch.library.opcheck(kernel, (x.values, x.bag_offsets, weight, offsets, pooling))
    assert torch.autograd.gradcheck(lambda w: kernel(x.values, x.bag_offsets, w, offsets, pooling), (weight,))
    grad = torch.randn(9, 12, dtype=torch.float64, device=device)
    got = op("embedding_bags_concat_backward", backend)(grad, x.values, x.bag_offsets, offsets, pooling, weight.shape[0])
    expected = R.embedding_bags_concat_backward(grad, x.values, x.bag_offsets, offsets, pooling, weight.shape[0])
    torch.testing.assert_close(got, expected)
    torch.library.opcheck(op("embedding_bags_concat_backward", backend),
                          (grad, x.values, x.bag_offsets, offsets, pooling, weight.shape[0]))


@pytest.mark.parametrize("backend", BAG_BACKENDS)
def test_bag_errors(backend):
    device = device_of(backend) if backend != "reference" else "cpu"
    emb = FieldEmbedding(FIELD_DIMS, 3, backend=backend).to(device)
    fields = [torch.tensor([1, 2]), (torch.tensor([0, 0, 0]), torch.tensor([0, 1, 3])), torch.tensor([0, 6]),
              (torch.tensor([299, 300]), torch.tensor([0, 2, 2]))]
    with pytest.raises(IndexError, match="id 300 out of range for field 3"):
        emb(JaggedIds.from_fields(fields).to(device))
    with pytest.raises(ValueError, match="field 1 has 3 samples, field 0 has 2"):
        JaggedIds.from_fields([torch.tensor([1, 2]), (torch.tensor([0, 0]), torch.tensor([0, 1, 1, 2]))])
    with pytest.raises(ValueError, match="offsets must run from 0 to len"):
        JaggedIds.from_fields([(torch.tensor([0, 0]), torch.tensor([0, 1]))])
    with pytest.raises(ValueError, match=r"expected ids of shape \[B, 4\]"):
        emb(JaggedIds.from_dense(batch_ids(3)[:, :2]).to(device))
    with pytest.raises(ValueError, match="pooling must be 'sum' or 'mean'"):
        FieldEmbedding(FIELD_DIMS, 3, pooling=("sum", "max", "sum", "sum"))


def test_dense_ids_and_length_one_bags_agree():
    x = batch_ids(33)
    emb = FieldEmbedding(FIELD_DIMS, 3, backend=FUSED_BACKENDS[-1])
    torch.testing.assert_close(emb(JaggedIds.from_dense(x)), emb(x))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fused_bags_equal_torch_sparse_optimizer(backend, optimizer):
    """Multi-hot sum/mean bags: EmbeddingBag(sparse=True) + torch's optimizer give the same table."""
    lr = HPARAMS[optimizer][0]
    pooling = ("sum", "mean", "mean", "sum")
    emb = FusedEmbedding(FIELD_DIMS, 4, optimizer=optimizer, lr=lr, backend=backend, pooling=pooling)
    param = torch.nn.Parameter(emb.weight.detach().clone())
    opt = {"sgd": lambda: torch.optim.SGD([param], lr=lr),
           "adam": lambda: torch.optim.SparseAdam([param], lr=lr)}[optimizer]()
    for _ in range(3):
        x = random_bags(16)
        grad = torch.randn(16, 16)
        emb(x).backward(grad)
        outs = []
        for f, mode in enumerate(pooling):
            start, stop = f * 16, (f + 1) * 16 + 1
            offsets = x.bag_offsets[start:stop] - x.bag_offsets[start]
            ids = x.values[int(x.bag_offsets[start]):int(x.bag_offsets[stop - 1])] + emb.field_offsets[f]
            outs.append(F.embedding_bag(ids, param, offsets, mode=mode, sparse=True, include_last_offset=True))
        opt.zero_grad()
        torch.cat(outs, 1).backward(grad)
        opt.step()
    torch.testing.assert_close(emb.weight.detach(), param.detach(), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad", "adam"])
def test_fused_embedding_backward_on_an_empty_batch(optimizer):
    emb = FusedEmbedding([5, 3], 4, optimizer=optimizer, lr=0.1)
    before = emb.weight.detach().clone()
    out = emb(torch.zeros(0, 2, dtype=torch.int64))
    assert out.shape == (0, 8)
    out.sum().backward()  # touches no row: nothing changes, nothing crashes
    assert torch.equal(emb.weight.detach(), before)
