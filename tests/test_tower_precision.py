"""Tower precision: bf16 GEMMs in training where the CPU multiplies bf16 natively, float32 elsewhere;
float32 parameters, gradients and outputs in every case; the AUC of a bf16-trained PIMM within noise
of float32."""
import pytest
import torch

from pimm_fast import MLP, PIMM
from pimm_fast.modules.tower import NATIVE_BF16, cpu_has_native_bf16, set_tower_precision


def test_which_precision_runs():
    mlp = MLP(12, (16, 8))
    x = torch.randn(4, 12)
    assert cpu_has_native_bf16() == NATIVE_BF16
    assert mlp.compute_dtype(x) == (torch.bfloat16 if NATIVE_BF16 else torch.float32)  # auto, training
    with torch.no_grad():
        assert mlp.compute_dtype(x) == torch.float32
    assert mlp.eval().compute_dtype(x) == torch.float32  # evaluation and inference are exact
    mlp.precision = "bf16"
    assert mlp.compute_dtype(x) == torch.bfloat16
    assert mlp.compute_dtype(x.double()) == torch.float64  # float64 (gradcheck) is never lowered
    mlp.train().precision = "fp32"
    assert mlp.compute_dtype(x) == torch.float32


def test_bf16_keeps_float32_outputs_and_gradients_close_to_fp32():
    torch.manual_seed(0)
    mlp = MLP(90, (128, 64, 32))
    x = torch.randn(256, 90)
    ref = set_tower_precision(mlp, "fp32")(x)
    ref.square().sum().backward()
    ref_grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    out = set_tower_precision(mlp, "bf16")(x)
    assert out.dtype == torch.float32
    out.square().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in mlp.parameters())
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)
    for g, r in zip((p.grad for p in mlp.parameters()), ref_grads):
        assert (g - r).norm() <= 0.05 * r.norm() + 1e-3


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="unknown tower precision 'fp16'"):
        MLP(4, (4,), precision="fp16")
    with pytest.raises(ValueError, match="unknown tower precision 'half'"):
        set_tower_precision(MLP(4, (4,)), "half")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "demo3"])
def test_bf16_towers_train_as_well_as_fp32(preset):
    """Same data, seed and schedule; the held-out AUC of every task within 0.01 of float32 training
    (seed-to-seed spread of float32 alone on this data: see docs/performance.md)."""
    from pimm_fast.data.synthetic import load_synthetic
    from pimm_fast.train import TrainConfig, evaluate, fit

    train, test = load_synthetic(preset, 40_000, seed=0)
    aucs = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = set_tower_precision(PIMM(train.field_dims, num_tasks=train.num_tasks),
                                    precision)
        fit(model, train, TrainConfig(epochs=2, batch_size=1024, seed=0, progress=False))
        aucs[precision] = evaluate(model, test)["auc"]
    for t, (a32, a16) in enumerate(zip(aucs["fp32"], aucs["bf16"])):
        assert a32 > 0.6, f"task {t}: float32 did not learn ({a32:.3f})"
        assert abs(a16 - a32) < 0.01, f"task {t}: bf16 AUC {a16:.4f} vs float32 {a32:.4f}"
