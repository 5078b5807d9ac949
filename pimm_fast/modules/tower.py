"""Multi-layer perceptron towers, with their GEMMs in bf16 where the CPU multiplies bf16 natively."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "identity": nn.Identity,
}
PRECISIONS = ("auto", "fp32", "bf16")


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _probe_native_bf16() -> bool:
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            found = caps()
            return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
        except Exception:  # noqa: BLE001 - the probe failed: read the kernel's flags instead
            pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


NATIVE_BF16 = _probe_native_bf16()  # probed once: a plain constant is what torch.compile reads best


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX-BF16), with which
    oneDNN runs bf16 GEMMs at about twice the fp32 rate or more. Without them bf16 is emulated and slower."""
    return NATIVE_BF16


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown tower precision {precision!r}; choose one of {PRECISIONS}")
    return precision


class MLP(nn.Sequential):
    """Linear -> [BatchNorm] -> activation -> [Dropout], for each width in ``dims``.

    ``precision`` is how the layers compute on a float32 CPU input; parameters, gradients, optimizer
    state and the output stay float32 in every case:

    * ``"auto"`` (default): ``"bf16"`` in training mode when the CPU has native bf16 dot products
      (:func:`cpu_has_native_bf16`: AVX-512 BF16 or AMX), else ``"fp32"``. Evaluation and inference
      (``model.eval()`` or no grad) compute in float32, so predictions and exports are exact.
    * ``"fp32"``: float32 throughout.
    * ``"bf16"``: the GEMMs and activations in bfloat16 (``torch.autocast``), on any CPU.

    On the Ali-CCP towers (90 -> 128 -> 64 -> 32) bf16 makes the tower forward + backward about 3x
    faster on a Zen 4 and leaves the AUC within noise (docs/performance.md; tests/test_tower_precision.py).
    Other devices and dtypes (CUDA, float64) always compute as given.
    """

    def __init__(self, in_dim: int, dims: Sequence[int], dropout: float = 0.0, batch_norm: bool = False,
                 activation: str = "relu", precision: str = "auto"):
        dims = tuple(dims)
        if not dims or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in dims):
            raise ValueError(f"tower dims must be a non-empty sequence of positive ints, got {dims!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        width = in_dim
        for out in dims:
            layers.append(nn.Linear(width, out))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = out
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = width
        self.precision = check_precision(precision)

    def compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """The dtype the layers compute in for input ``x`` (see the class docstring)."""
        if x.dtype != torch.float32 or x.device.type != "cpu" or self.precision == "fp32":
            return x.dtype
        if self.precision == "bf16":
            return torch.bfloat16
        if self.training and torch.is_grad_enabled() and NATIVE_BF16:
            return torch.bfloat16
        return x.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype(x) != torch.bfloat16:
            return super().forward(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = super().forward(x)
        return out.float()

    def extra_repr(self) -> str:
        return f"precision={self.precision!r}"


def set_tower_precision(model: nn.Module, precision: str) -> nn.Module:
    """Set ``precision`` ("auto", "fp32" or "bf16") on every :class:`MLP` in ``model``; returns ``model``."""
    check_precision(precision)
    for module in model.modules():
        if isinstance(module, MLP):
            module.precision = precision
    return model
