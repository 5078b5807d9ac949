"""PIMM: shapes, curriculum, gradient truncation, inference without labels, validation, training."""
import math

import pytest
import torch

import pimm_fast
from pimm_fast import Curriculum, PIMM
from pimm_fast.data import generate, load_synthetic
from pimm_fast.train import TrainConfig, evaluate, fit

FIELD_DIMS = (10, 3, 7, 25)


def cascade_labels(batch, num_tasks, rate=0.6):
    y = torch.ones(batch, num_tasks)
    for t in range(num_tasks):
        y[:, t] = (torch.rand(batch) < rate).float() * (y[:, t - 1] if t else 1)
    return y


def random_ids(batch, field_dims=FIELD_DIMS):
    return torch.stack([torch.randint(0, n, (batch,)) for n in field_dims], dim=1)


BACKENDS = ["reference"] + (["cpp"] if pimm_fast.ops.is_available("cpp", "cpu") else [])


# ---------------------------------------------------------------------------------------------
# curriculum
# ---------------------------------------------------------------------------------------------
def test_schedule_paper_settings():
    aliccp = Curriculum.aliccp()
    assert [aliccp(e) for e in range(4)] == [0.5, 0.25, 0.25, 0.25]
    industrial = Curriculum.industrial()
    assert [industrial(e) for e in range(4)] == pytest.approx([2 / 3, 1 / 3, 0.0, 0.0])
    assert aliccp(0.5) == pytest.approx(0.375)  # per-step variant: fractional epochs
    assert Curriculum.constant(0.3)(10) == 0.3


@pytest.mark.parametrize("kwargs, match", [
    (dict(alpha=1.5), "0 <= floor <= alpha <= 1"),
    (dict(alpha=0.2, floor=0.3), "0 <= floor <= alpha <= 1"),
    (dict(step=-0.1), "step must be >= 0"),
    (dict(alpha=float("nan")), "finite"),
])
def test_curriculum_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Curriculum(**kwargs)


def test_curriculum_rejects_negative_epoch():
    with pytest.raises(ValueError, match="epoch must be"):
        Curriculum()(-1)


def test_set_epoch_moves_p():
    model = PIMM(FIELD_DIMS, curriculum=Curriculum.industrial())
    assert model.p == pytest.approx(2 / 3)
    assert model.set_epoch(1) == pytest.approx(1 / 3) and model.p == pytest.approx(1 / 3)
    model.set_epoch(5)
    assert model.p == 0.0


# ---------------------------------------------------------------------------------------------
# forward contract
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_tasks", [2, 3, 4])
def test_output_shapes(backend, num_tasks):
    model = PIMM(FIELD_DIMS, num_tasks=num_tasks, embed_dim=4, tower_dims=(16, 8), backend=backend)
    x = random_ids(5)
    probs = model(x)
    assert probs.shape == (5, num_tasks)
    assert torch.all((probs > 0) & (probs < 1))
    train_probs = model(x, labels=cascade_labels(5, num_tasks))
    assert train_probs.shape == (5, num_tasks)
    model.loss(train_probs, cascade_labels(5, num_tasks)).backward()


def test_backends_agree_on_a_whole_model():
    if "cpp" not in BACKENDS:
        pytest.skip("C++ kernels not built")
    ref = PIMM(FIELD_DIMS, num_tasks=3, tower_dims=(16, 8), backend="reference").double()
    fast = PIMM(FIELD_DIMS, num_tasks=3, tower_dims=(16, 8), backend="cpp").double()
    fast.load_state_dict(ref.state_dict())
    x, y = random_ids(64), cascade_labels(64, 3)
    torch.manual_seed(3)
    out_ref = ref(x, labels=y)
    ref.loss(out_ref, y).backward()
    torch.manual_seed(3)
    out_fast = fast(x, labels=y)
    fast.loss(out_fast, y).backward()
    torch.testing.assert_close(out_fast, out_ref)
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_inference_needs_no_labels_and_eval_ignores_them():
    model = PIMM(FIELD_DIMS, num_tasks=3, tower_dims=(16, 8))
    x, y = random_ids(32), cascade_labels(32, 3)
    model.eval()
    assert torch.equal(model(x), model(x, labels=y))  # eval: p = 0, labels only checked
    model.train()
    model.set_epoch(0)
    assert not torch.equal(model(x), model(x, labels=y))  # training: labels are fed with p = 0.5


def test_training_forward_is_reproducible_under_manual_seed():
    model = PIMM(FIELD_DIMS, tower_dims=(16, 8))
    x, y = random_ids(64), cascade_labels(64, 2)
    torch.manual_seed(11)
    a = model(x, labels=y)
    torch.manual_seed(11)
    b = model(x, labels=y)
    assert torch.equal(a, b)


def test_gradient_truncation_at_model_level():
    """Task 1 sees yhat_0 only through y* (truncated) and H_0 (not truncated)."""
    model = PIMM(FIELD_DIMS, tower_dims=(16, 8))
    model.set_epoch(10)  # p = floor = 0.25: mostly predictions
    x, y = random_ids(64), cascade_labels(64, 2)
    probs = model(x, labels=y)
    probs[:, 1].sum().backward()
    head0 = model.heads[0].weight.grad
    assert head0 is None or torch.count_nonzero(head0) == 0  # no gradient through yhat_0 into task 0's head
    assert torch.count_nonzero(model.transfers[0][0].weight.grad) > 0  # H_0 carries gradient back
    assert torch.count_nonzero(model.towers[0][0].weight.grad) > 0


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([[1.0, 0.0, 0.0]] * 4), ValueError, r"labels must be \[B, T\] with T = 2"),
    (torch.tensor([[1.0, 0.0]] * 3), ValueError, "labels have 3 rows but the batch has 4"),
    (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]]), ValueError, "break the cascade at row 1"),
    (torch.tensor([[1.0, 0.0], [0.3, 0.0], [0.0, 0.0], [1.0, 1.0]]), ValueError, "got 0.3.* at row 1, task 0"),
    (torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 0.0], [1.0, 1.0]]), ValueError, "got nan at row 1"),
])
def test_label_errors(labels, error, match):
    model = PIMM(FIELD_DIMS, tower_dims=(8,))
    with pytest.raises(error, match=match):
        model(random_ids(4), labels=labels)
    with pytest.raises(error, match=match):
        model.loss(torch.full((4, 2), 0.5), labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_id_errors_raise_before_any_kernel(backend):
    model = PIMM(FIELD_DIMS, tower_dims=(8,), backend=backend)
    x = random_ids(6)
    x[2, 3] = 25
    with pytest.raises(IndexError, match=r"id 25 out of range for field 3 \(size 25\) at sample 2"):
        model(x)
    x[2, 3] = -2
    with pytest.raises(IndexError, match="id -2 out of range for field 3"):
        model(x)
    with pytest.raises(ValueError, match=r"expected ids of shape \[B, 4\]"):
        model(random_ids(6)[:, :3])
    with pytest.raises(TypeError, match="indices must be int32 or int64"):
        model(random_ids(6).float())


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_tasks=1), "num_tasks must be an int >= 2"),
    (dict(field_dims=()), "at least one field"),
    (dict(field_dims=(3, 0)), r"field_dims\[1\] must be a positive int"),
    (dict(tower_dims=()), "tower dims"),
    (dict(backend="gpu"), "unknown backend"),
    (dict(task_names=("a",)), "1 names for 2 tasks"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PIMM(**{"field_dims": FIELD_DIMS, **kwargs})


def test_loss_is_sum_of_task_bces_plus_optional_calibrator():
    model = PIMM(FIELD_DIMS, tower_dims=(8,))
    probs = torch.tensor([[0.9, 0.2], [0.3, 0.6]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = sum(torch.nn.functional.binary_cross_entropy(probs[:, t], y[:, t]) for t in range(2))
    assert torch.allclose(model.loss(probs, y), expected)
    model.calibrator_weight = 0.6
    # batch mean of relu(yhat_1 - yhat_0): (0 + 0.3) / 2
    assert torch.allclose(model.loss(probs, y), expected + 0.6 * 0.15)


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_fullgraph_forward_backward(backend):
    model = PIMM(FIELD_DIMS, num_tasks=3, tower_dims=(16, 8), backend=backend)
    x, y = random_ids(32), cascade_labels(32, 3)

    def forward_loss(x, y):
        return model.loss(model(x, labels=y), y)

    torch._dynamo.reset()
    compiled = torch.compile(forward_loss, fullgraph=True)  # AOTAutograd compiles the backward graph
    loss = compiled(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.set_epoch(1)  # p changes: a buffer, not a guard, so no recompile is needed
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled(x, y).backward()
    with pytest.raises(Exception, match="break the cascade"):
        compiled(x, torch.tensor([[0.0, 1.0, 0.0]] * 32))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("num_tasks", [2, 3])
def test_training_on_synthetic_data_learns_the_last_task(num_tasks):
    torch.manual_seed(0)
    train, test = load_synthetic("demo" if num_tasks == 2 else "demo3", num_samples=60_000, seed=1)
    model = PIMM(train.field_dims, num_tasks=num_tasks, embed_dim=5, tower_dims=(64, 32))
    fit(model, train, TrainConfig(epochs=2, batch_size=512, lr=3e-3, progress=False))
    result = evaluate(model, test)
    last = result["auc"][-1]
    assert last > 0.75, result  # 0.5 is chance; the oracle is about 0.9
    assert last <= result["oracle_auc"][-1] + 0.02
    assert all(math.isfinite(v) for v in result["logloss"])


def test_generated_data_obeys_the_cascade():
    data = generate(5000, seed=3)
    assert torch.all(data.y[:, 1] <= data.y[:, 0])
    assert torch.all(data.probs[:, 1] <= data.probs[:, 0])


def test_a_given_embedding_module_is_shared():
    embedding = pimm_fast.FieldEmbedding(FIELD_DIMS, 3)
    model = PIMM(FIELD_DIMS, embed_dim=3, tower_dims=(8,), embedding=embedding)
    assert model.embedding is embedding
    with pytest.raises(ValueError, match="differ from field_dims"):
        PIMM((1, 2), tower_dims=(8,), embedding=embedding)
    with pytest.raises(TypeError, match="must have a 'field_dims' attribute"):
        PIMM(FIELD_DIMS, tower_dims=(8,), embedding=torch.nn.Linear(3, 3))
