"""The paper's baselines (Shared-Bottom, ESMM, MMoE, PLE, AITM, MNCM) and PIMM on expert backbones:
forward contract, where gradients go, AITM's attention and calibrator by hand, registry, training."""
import math

import pytest
import torch

import pimm_fast
from pimm_fast import AITM, ESMM, MMoE, MNCM, PIMM, PLE, SharedBottom
from pimm_fast.data import load_synthetic
from pimm_fast.models import MODELS, build_model
from pimm_fast.models.experts import CGCLevel, MMoEBottom, PLEBottom
from pimm_fast.models.transfer import AttentionTransfer
from pimm_fast.train import TrainConfig, evaluate, fit

from .test_models import FIELD_DIMS, cascade_labels, random_ids

# small widths so that each test runs in well under a second
SMALL = {
    "shared_bottom": dict(tower_dims=(16, 8)),
    "esmm": dict(tower_dims=(16, 8)),
    "aitm": dict(tower_dims=(16, 8)),
    "mmoe": dict(num_experts=3, expert_dims=(16,), tower_dims=(8,)),
    "ple": dict(expert_dims=(16,), tower_dims=(8,)),
    "mncm": dict(expert_dims=(16,), tower_dims=(8,)),
    "pimm": dict(tower_dims=(16, 8)),
    "pimm_mmoe": dict(backbone="mmoe", num_experts=3, expert_dims=(16,), tower_dims=(8,)),
    "pimm_ple": dict(backbone="ple", expert_dims=(16,), tower_dims=(8,)),
}
ALL = list(SMALL)
BASELINES = ["shared_bottom", "esmm", "mmoe", "ple", "aitm", "mncm"]


def make(name, num_tasks=2, field_dims=FIELD_DIMS, **overrides):
    model_name = "pimm" if name.startswith("pimm") else name
    return build_model(model_name, field_dims, num_tasks, **{**SMALL[name], **overrides})


# ---------------------------------------------------------------------------------------------
# forward contract
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_tasks", [2, 3])
@pytest.mark.parametrize("name", ALL)
def test_output_shapes_and_every_parameter_trains(name, num_tasks):
    model = make(name, num_tasks)
    x, y = random_ids(16), cascade_labels(16, num_tasks)
    probs = model(x)
    assert probs.shape == (16, num_tasks)
    assert torch.all((probs > 0) & (probs < 1))
    train_probs = model(x, labels=y)
    assert train_probs.shape == (16, num_tasks)
    model.loss(train_probs, y).backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
              or torch.count_nonzero(p.grad) == 0]
    assert not silent, f"parameters without gradient: {silent}"


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_validate_but_do_not_use_labels(name):
    model = make(name, 3)
    x, y = random_ids(8), cascade_labels(8, 3)
    assert torch.equal(model(x), model(x, labels=y))
    broken = y.clone()
    broken[0] = torch.tensor([0.0, 1.0, 0.0])
    if model.requires_cascade:
        with pytest.raises(ValueError, match="break the cascade at row 0"):
            model(x, labels=broken)
    else:  # Shared-Bottom, MMoE, PLE: independent per-task losses train on labels that break the cascade
        assert torch.equal(model(x, labels=broken), model(x))
        broken[1, 0] = 0.5
        with pytest.raises(ValueError, match="labels must be 0 or 1"):
            model(x, labels=broken)
    with pytest.raises(ValueError, match=r"labels must be \[B, T\] with T = 3"):
        model(x, labels=y[:, :2])


@pytest.mark.parametrize("name", ALL)
def test_a_given_embedding_module_is_used(name):
    embedding = pimm_fast.FieldEmbedding(FIELD_DIMS, 3)
    model = make(name, embedding=embedding)
    assert model.embedding is embedding
    assert model(random_ids(4)).shape == (4, 2)


@pytest.mark.parametrize("name", ALL)
def test_every_model_trains_its_table_with_the_fused_embedding(name):
    """Every model runs on the shared fused embedding: its backward updates the touched rows in place."""
    embedding = pimm_fast.FusedEmbedding(FIELD_DIMS, 3, optimizer="rowwise_adagrad", lr=0.1)
    model = make(name, embedding=embedding)
    before = embedding.weight.detach().clone()
    x = random_ids(16)
    y = torch.zeros(16, 2)
    y[:6, 0] = 1
    y[:2, 1] = 1
    model.loss(model(x, labels=y), y).backward()
    assert embedding.weight.grad is None
    touched = torch.zeros(embedding.weight.shape[0], dtype=torch.bool)
    touched[(x + embedding.field_offsets).reshape(-1)] = True
    changed = (embedding.weight.detach() != before).any(1)
    assert changed[touched].any() and not changed[~touched].any()


def test_top_level_exports_and_registry():
    for name in ("PIMM", "SharedBottom", "ESMM", "MMoE", "PLE", "AITM", "MNCM"):
        assert name in pimm_fast.__all__ and getattr(pimm_fast, name) is getattr(pimm_fast.models, name)
    assert MODELS == {"pimm": PIMM, "shared_bottom": SharedBottom, "esmm": ESMM, "mmoe": MMoE, "ple": PLE,
                      "aitm": AITM, "mncm": MNCM}
    model = build_model("Shared-Bottom", FIELD_DIMS, 3, tower_dims=(8,))
    assert type(model) is SharedBottom and model.num_tasks == 3
    with pytest.raises(ValueError, match="unknown model 'dcn'; choose one of pimm, shared_bottom"):
        build_model("dcn", FIELD_DIMS)
    with pytest.raises(TypeError, match="curriculum"):
        build_model("mmoe", FIELD_DIMS, curriculum=None)


@pytest.mark.parametrize("build, match", [
    (lambda: MMoE(FIELD_DIMS, num_experts=0), "num_experts must be an int >= 1, got 0"),
    (lambda: MMoE(FIELD_DIMS, expert_dims=()), r"expert_dims must be a non-empty sequence of positive ints, got \(\)"),
    (lambda: PLE(FIELD_DIMS, num_shared_experts=0, expert_dims=(8, 0)), "expert_dims must be a non-empty"),
    (lambda: PLE(FIELD_DIMS, num_levels=0), "num_levels must be an int >= 1, got 0"),
    (lambda: PLE(FIELD_DIMS, num_shared_experts=-1), "num_shared_experts must be an int >= 0, got -1"),
    (lambda: PLE(FIELD_DIMS, num_shared_experts=0, num_specific_experts=0), "needs at least one expert"),
    (lambda: PLE(FIELD_DIMS, num_specific_experts=1.5), "num_specific_experts must be an int"),
    (lambda: MNCM(FIELD_DIMS, num_specific_experts=0), "num_specific_experts must be an int >= 1, got 0"),
    (lambda: AITM(FIELD_DIMS, dropout=1.0), r"dropout must lie in \[0, 1\)"),
    (lambda: AITM(FIELD_DIMS, calibrator_weight=-0.1), "calibrator_weight must be >= 0"),
    (lambda: ESMM(FIELD_DIMS, num_tasks=1), "num_tasks must be an int >= 2"),
    (lambda: SharedBottom(FIELD_DIMS, task_names=("a", "b", "c")), "3 names for 2 tasks"),
    (lambda: PIMM(FIELD_DIMS, backbone="moe"), r"unknown backbone 'moe'; choose one of \('towers', 'mmoe', 'ple'\)"),
    (lambda: PIMM(FIELD_DIMS, num_experts=4), "num_experts does not apply to backbone 'towers'"),
    (lambda: PIMM(FIELD_DIMS, backbone="mmoe", num_levels=2), "num_levels does not apply to backbone 'mmoe'"),
    (lambda: PIMM(FIELD_DIMS, backbone="ple", num_levels=0), "num_levels must be an int >= 1"),
])
def test_constructor_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# ---------------------------------------------------------------------------------------------
# where gradients go
# ---------------------------------------------------------------------------------------------
def reached(model, x, task):
    """Names of the parameters that task ``task``'s output reaches with a nonzero gradient."""
    model.zero_grad(set_to_none=True)
    model(x)[:, task].sum().backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and torch.count_nonzero(p.grad) > 0}


def expectations(name, t, T):
    """(prefixes that task t's output must reach, prefixes it must not reach) for T tasks."""
    before, after, others = range(t + 1), range(t + 1, T), [s for s in range(T) if s != t]
    heads = ([f"heads.{t}"], [f"heads.{s}" for s in others])
    if name == "shared_bottom":
        return ["embedding", f"towers.{t}", *heads[0]], [f"towers.{s}" for s in others] + heads[1]
    if name == "esmm":  # yhat_t = prod_{s <= t} q_s
        return ([f"towers.{s}" for s in before] + [f"heads.{s}" for s in before],
                [f"towers.{s}" for s in after] + [f"heads.{s}" for s in after])
    if name == "mmoe":
        return (["bottom.experts", f"bottom.gates.{t}", f"towers.{t}", *heads[0]],
                [f"bottom.gates.{s}" for s in others] + [f"towers.{s}" for s in others] + heads[1])
    if name == "ple":  # level 0's experts of every task reach task t through level 0's shared gate
        return ([f"bottom.levels.0.specific.{s}" for s in range(T)]
                + ["bottom.levels.0.shared_gate", "bottom.levels.1.shared", f"bottom.levels.1.specific.{t}",
                   f"bottom.levels.1.gates.{t}", f"towers.{t}", *heads[0]],
                [f"bottom.levels.1.specific.{s}" for s in others] + [f"bottom.levels.1.gates.{s}" for s in others]
                + [f"towers.{s}" for s in others] + heads[1])
    if name == "aitm":  # no stop-gradient: task t trains the towers of tasks 0..t through p_{t-1}
        return ([f"towers.{s}" for s in before] + [f"transfer.transfers.{s}" for s in range(t)]
                + (["transfer.attentions.0"] if t else []) + heads[0],
                [f"towers.{s}" for s in after] + [f"transfer.transfers.{s}" for s in range(t, T - 1)]
                + ([] if t else ["transfer.attentions.0"]) + heads[1])
    if name == "mncm":  # EITM links task-specific experts, TITM the towers, both along the funnel
        return ([f"bottom.cgc.{part}.{s}" for part in ("specific", "gates") for s in before]
                + [f"towers.{s}" for s in before] + ["bottom.cgc.shared"]
                + [f"bottom.eitm.transfers.{s}" for s in range(t)] + [f"transfer.transfers.{s}" for s in range(t)]
                + heads[0],
                [f"bottom.cgc.{part}.{s}" for part in ("specific", "gates") for s in after]
                + [f"towers.{s}" for s in after] + [f"bottom.eitm.transfers.{s}" for s in range(t, T - 1)]
                + [f"transfer.transfers.{s}" for s in range(t, T - 1)] + heads[1])
    # PIMM: y* carries no gradient (no earlier head is reached); H_{t-1} does (earlier towers are)
    bottom = {"pimm": [], "pimm_mmoe": ["bottom.gates"], "pimm_ple": ["bottom.levels.1.gates"]}[name]
    return ([f"towers.{s}" for s in before] + [f"transfers.{s}" for s in range(t)]
            + [f"{b}.{s}" for b in bottom for s in before] + ([f"pims.{t - 1}"] if t else []) + heads[0],
            [f"towers.{s}" for s in after] + [f"transfers.{s}" for s in range(t, T - 1)]
            + [f"{b}.{s}" for b in bottom for s in after] + [f"pims.{s}" for s in range(t, T - 1)] + heads[1])


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_exactly_the_parameters_they_should(name):
    T = 3
    model = make(name, T)
    names = [n for n, _ in model.named_parameters()]
    x = random_ids(64)
    for t in range(T):
        got = reached(model, x, t)
        must, must_not = expectations(name, t, T)
        for prefix in must + must_not:
            assert any(n.startswith(prefix + ".") for n in names), f"no parameter named {prefix}.*"
        missing = [p for p in must if not any(n.startswith(p + ".") for n in got)]
        leaked = sorted(n for n in got if any(n.startswith(p + ".") for p in must_not))
        assert not missing, f"task {t} does not reach {missing}"
        assert not leaked, f"task {t} reaches {leaked}"


def test_pimm_backbone_sees_no_gradient_through_y_star_even_with_labels():
    model = make("pimm_ple")
    model.set_epoch(10)  # p = 0.25: some labels, mostly predictions
    probs = model(random_ids(64), labels=cascade_labels(64, 2))
    probs[:, 1].sum().backward()
    head0 = model.heads[0].weight.grad
    assert head0 is None or torch.count_nonzero(head0) == 0
    assert torch.count_nonzero(model.transfers[0][0].weight.grad) > 0
    assert torch.count_nonzero(model.bottom.levels[1].gates[0].linear.weight.grad) > 0


# ---------------------------------------------------------------------------------------------
# ESMM
# ---------------------------------------------------------------------------------------------
def test_esmm_outputs_the_product_of_conditional_probabilities():
    model = make("esmm", 3)
    x = random_ids(32)
    q = model.conditional_probs(x)
    probs = model(x)
    torch.testing.assert_close(probs, torch.stack([q[:, 0], q[:, 0] * q[:, 1], q[:, 0] * q[:, 1] * q[:, 2]], 1))
    assert torch.all(probs[:, 1:] <= probs[:, :-1])  # the funnel holds by construction


def test_esmm_is_trained_on_entire_space_labels():
    model = make("esmm", 2)
    probs = torch.tensor([[0.8, 0.2], [0.1, 0.05]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    expected = sum(torch.nn.functional.binary_cross_entropy(probs[:, t], y[:, t]) for t in range(2))
    torch.testing.assert_close(model.loss(probs, y), expected)


# ---------------------------------------------------------------------------------------------
# AITM
# ---------------------------------------------------------------------------------------------
def test_ait_attention_against_hand_computed_values():
    ait = AttentionTransfer(2)
    with torch.no_grad():
        ait.query.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        ait.key.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
        ait.value.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    q, p = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    # scores <Qa, Ka> / sqrt(2): q -> <(1, 2), (2, 0)> / sqrt(2) = sqrt(2); p -> <(.5, 3), (1, 0)> / sqrt(2)
    # w_q = sigmoid(sqrt(2) - 0.5 / sqrt(2)) = 0.742817; V q = (3, 2), V p = (3.5, 3); no residual
    w_q = 0.742816684773193
    tokens = torch.stack([q, p]).unsqueeze(0)
    torch.testing.assert_close(ait.weights(tokens), torch.tensor([[w_q, 1 - w_q]]))
    expected = torch.tensor([[w_q * 3 + (1 - w_q) * 3.5, w_q * 2 + (1 - w_q) * 3]])
    torch.testing.assert_close(ait(tokens), expected)
    torch.testing.assert_close(expected, torch.tensor([[3.128592, 2.257183]]))
    assert ait.query.bias is None and ait.key.bias is None and ait.value.bias is None


def test_aitm_forward_follows_the_official_formula():
    """z_1 = sum_a w_a V a over a in [q_1, p_0], p_0 = relu(W q_0 + b), written out with the model's weights."""
    model = make("aitm", 2)
    x = random_ids(16)
    e = model.embedding(x)
    q0, q1 = model.towers[0](e), model.towers[1](e)
    dense = model.transfer.transfers[0][0]
    p0 = torch.relu(q0 @ dense.weight.T + dense.bias)
    ait = model.transfer.attentions[0]
    Wq, Wk, Wv = ait.query.weight, ait.key.weight, ait.value.weight
    score = lambda a: ((a @ Wq.T) * (a @ Wk.T)).sum(1) / math.sqrt(q0.shape[1])  # noqa: E731
    w = torch.softmax(torch.stack([score(q1), score(p0)], 1), dim=1)
    z1 = w[:, :1] * (q1 @ Wv.T) + w[:, 1:] * (p0 @ Wv.T)
    expected = torch.sigmoid(torch.cat([model.heads[0](q0), model.heads[1](z1)], 1))
    torch.testing.assert_close(model(x), expected)


def test_aitm_calibrator_is_a_batch_mean_with_weight_0_6():
    model = make("aitm", 3)
    assert model.calibrator_weight == 0.6
    probs = torch.tensor([[0.5, 0.7, 0.2], [0.4, 0.3, 0.6]])
    y = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    bce = sum(torch.nn.functional.binary_cross_entropy(probs[:, t], y[:, t]) for t in range(3))
    # row 0: relu(.7 - .5) + relu(.2 - .7) = .2; row 1: relu(.3 - .4) + relu(.6 - .3) = .3; mean .25
    torch.testing.assert_close(model.loss(probs, y) - bce, torch.tensor(0.6 * 0.25))


def test_aitm_attention_is_shared_by_tasks_unless_asked_otherwise():
    assert len(make("aitm", 4).transfer.attentions) == 1
    assert len(make("aitm", 4, share_attention=False).transfer.attentions) == 3
    assert len(make("aitm", 4).transfer.transfers) == 3


# ---------------------------------------------------------------------------------------------
# experts: MMoE, PLE, MNCM
# ---------------------------------------------------------------------------------------------
def test_mmoe_gates_are_distributions_over_the_experts():
    bottom = MMoEBottom(12, num_tasks=3, num_experts=5, expert_dims=(8,))
    e = torch.randn(20, 12)
    for gate in bottom.gates:
        w = gate(e)
        assert w.shape == (20, 5) and torch.all(w >= 0)
        torch.testing.assert_close(w.sum(1), torch.ones(20))
    experts = bottom.experts(e)
    torch.testing.assert_close(bottom(e)[1], (bottom.gates[1](e).unsqueeze(2) * experts).sum(1))


def test_ple_gates_and_levels():
    bottom = PLEBottom(12, num_tasks=3, num_shared_experts=2, num_specific_experts=3, num_levels=3,
                       expert_dims=(8, 4))
    assert len(bottom.levels) == 3 and bottom.out_dim == 4
    assert all(level.shared_gate is not None for level in bottom.levels[:-1])
    assert bottom.levels[-1].shared_gate is None  # the last level has no shared output
    e = torch.randn(20, 12)
    for level, width in zip(bottom.levels, (12, 4, 4)):
        x = torch.randn(20, width)
        for gate in level.gates:
            w = gate(x)
            assert w.shape == (20, 3 + 2) and torch.all(w >= 0)
            torch.testing.assert_close(w.sum(1), torch.ones(20))
    shared = bottom.levels[0].shared_gate(e)
    assert shared.shape == (20, 3 * 3 + 2)
    torch.testing.assert_close(shared.sum(1), torch.ones(20))
    assert [o.shape for o in bottom(e)] == [(20, 4)] * 3


def test_cgc_task_mixture_uses_own_and_shared_experts_only():
    level = CGCLevel(6, num_tasks=2, num_shared=1, num_specific=2, expert_dims=(5,), shared_output=False)
    e = torch.randn(7, 6)
    specific, shared = level.experts([e, e], e)
    assert [s.shape for s in specific] == [(7, 2, 5), (7, 2, 5)] and shared.shape == (7, 1, 5)
    tasks, shared_out = level([e, e], e)
    assert shared_out is None
    own = torch.cat([specific[0], shared], dim=1)
    torch.testing.assert_close(tasks[0], (level.gates[0](e).unsqueeze(2) * own).sum(1))


def test_mncm_eitm_links_expert_k_of_consecutive_tasks():
    model = make("mncm", 3, num_specific_experts=2)
    assert model.titm is model.transfer and model.eitm is model.bottom.eitm
    e = model.embedding(random_ids(10))
    specific, _ = model.bottom.cgc.experts([e] * 3, e)
    transferred = model.eitm(specific)
    assert [s.shape for s in transferred] == [(10, 2, 16)] * 3
    torch.testing.assert_close(transferred[0], specific[0])  # the first task has no predecessor
    # expert k of task 1 attends to [its own output, transfer(expert k of task 0)], pair by pair
    ait, dense = model.eitm.attention(0), model.eitm.transfers[0]
    for k in range(2):
        tokens = torch.stack([specific[1][:, k], dense(specific[0][:, k])], dim=1)
        torch.testing.assert_close(transferred[1][:, k], ait(tokens))


# ---------------------------------------------------------------------------------------------
# PIMM backbones
# ---------------------------------------------------------------------------------------------
def test_pimm_default_backbone_keeps_its_state_dict():
    model = PIMM(FIELD_DIMS, num_tasks=3, tower_dims=(16, 8))
    assert model.backbone == "towers"
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"embedding", "towers", "heads", "transfers", "pims"}
    assert "towers.0.0.weight" in model.state_dict() and "pims.1.w_prior" in model.state_dict()


@pytest.mark.parametrize("backbone, bottom", [("mmoe", MMoEBottom), ("ple", PLEBottom)])
def test_pimm_towers_read_the_expert_mixtures(backbone, bottom):
    model = make(f"pimm_{backbone}", 3)
    assert isinstance(model.bottom, bottom) and model.towers[0][0].in_features == 16
    x = random_ids(8)
    mixtures = model.bottom(model.embedding(x))
    torch.testing.assert_close(model.tower_outputs(x)[2], model.towers[2](mixtures[2]))


# ---------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aitm", "pimm_ple"])  # MNCM is made of the same blocks
def test_compile_fullgraph_forward_backward(name):
    # PIMM with p = 0: compiled code draws other random numbers than eager code, the loss must agree
    model = make(name, 3, **({"curriculum": pimm_fast.Curriculum.constant(0.0)} if name.startswith("pimm") else {}))
    x, y = random_ids(32), cascade_labels(32, 3)

    def forward_loss(x, y):
        return model.loss(model(x, labels=y), y)

    torch.manual_seed(4)
    eager = forward_loss(x, y)
    torch._dynamo.reset()
    compiled = torch.compile(forward_loss, fullgraph=True)
    torch.manual_seed(4)
    loss = compiled(x, y)
    loss.backward()
    torch.testing.assert_close(loss, eager)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
TRAIN_SIZES = {  # PIMM with its default backbone trains in tests/test_models.py
    "shared_bottom": dict(tower_dims=(64, 32)),
    "esmm": dict(tower_dims=(64, 32)),
    "aitm": dict(tower_dims=(64, 32)),
    "mmoe": dict(expert_dims=(64,), tower_dims=(32,)),
    "ple": dict(expert_dims=(64,), tower_dims=(32,)),
    "mncm": dict(expert_dims=(64,), tower_dims=(32,)),
    "pimm_mmoe": dict(backbone="mmoe", expert_dims=(64,), tower_dims=(32,)),
    "pimm_ple": dict(backbone="ple", expert_dims=(64,), tower_dims=(32,)),
}


@pytest.fixture(scope="module")
def demo_data():
    return load_synthetic("demo", num_samples=60_000, seed=1)


@pytest.fixture
def one_thread():
    """These small models train as fast on one thread, and then do not stall (by 10x and more) when
    other processes take the machine's second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRAIN_SIZES))
def test_training_on_synthetic_data_learns_the_last_task(name, demo_data, one_thread):
    train, test = demo_data
    torch.manual_seed(0)
    model = build_model("pimm" if name.startswith("pimm") else name, train.field_dims, 2, **TRAIN_SIZES[name])
    fit(model, train, TrainConfig(epochs=2, batch_size=512, lr=3e-3, progress=False))
    result = evaluate(model, test)
    last = result["auc"][-1]
    assert last > 0.85, result  # 0.5 is chance; the oracle is about 0.94
    assert last <= result["oracle_auc"][-1] + 0.02
    assert all(math.isfinite(v) for v in result["logloss"])
