"""Dense (numerical) input of every model: standardised values and missing-value flags.

Raw values x [B, K] (float, NaN or +-inf = missing) become [B, 2K]:
``[(x - mean) / std with a missing value imputed as the mean (0 after standardising), missing flags]``.
``mean`` and ``std`` are buffers fitted on the training split only (:meth:`DenseInput.fit`), so every
checkpoint (``state_dict``) and exported package carries them with the model.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

MIN_STD = 1e-6  # a column with (almost) no spread in training is centred, not divided by ~0


class DenseInput(nn.Module):
    """Standardise K numerical features with training statistics and flag the missing ones.

    ``fit(dense)`` computes per column the mean and the (population) standard deviation over the
    finite values; a column with no finite value gets mean 0, a column with spread below ``MIN_STD``
    gets std 1. Until fitted, mean is 0 and std 1 (``fitted`` is False).
    """

    def __init__(self, num_dense: int, names: Optional[Sequence[str]] = None):
        super().__init__()
        if isinstance(num_dense, bool) or not isinstance(num_dense, int) or num_dense < 1:
            raise ValueError(f"num_dense must be a positive int, got {num_dense!r}")
        self.num_dense = num_dense
        self.names = tuple(names) if names is not None else tuple(f"dense{k}" for k in range(num_dense))
        if len(self.names) != num_dense:
            raise ValueError(f"{len(self.names)} dense names for num_dense={num_dense}")
        self.register_buffer("mean", torch.zeros(num_dense))
        self.register_buffer("std", torch.ones(num_dense))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def out_dim(self) -> int:
        return 2 * self.num_dense

    @torch.no_grad()
    def fit(self, dense: torch.Tensor) -> "DenseInput":
        """Fit mean and std on the training split's raw values [N, K] (NaN = missing)."""
        self._check(dense)
        x = dense.detach().to(device=self.mean.device, dtype=torch.float64)
        finite = torch.isfinite(x)
        count = finite.sum(0)
        filled = torch.where(finite, x, 0.0)
        mean = filled.sum(0) / count.clamp(min=1)
        var = (torch.where(finite, x - mean, 0.0) ** 2).sum(0) / count.clamp(min=1)
        std = var.sqrt()
        std = torch.where((count > 0) & (std >= MIN_STD), std, torch.ones_like(std))
        self.mean.copy_(torch.where(count > 0, mean, 0.0))
        self.std.copy_(std)
        self.fitted.fill_(True)
        return self

    def _check(self, dense: torch.Tensor) -> None:
        if not isinstance(dense, torch.Tensor) or dense.dim() != 2 or dense.shape[1] != self.num_dense:
            shape = list(dense.shape) if isinstance(dense, torch.Tensor) else type(dense).__name__
            raise ValueError(f"dense must be a float tensor [B, {self.num_dense}], got {shape}")
        if not dense.is_floating_point():
            raise TypeError(f"dense must hold floats (NaN = missing), got {dense.dtype}")

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        self._check(dense)
        if dense.device != self.mean.device:
            raise ValueError(f"dense is on {dense.device} but the model is on {self.mean.device}")
        x = dense.to(self.mean.dtype)
        finite = torch.isfinite(x)
        z = torch.where(finite, (x - self.mean) / self.std, torch.zeros_like(x))
        return torch.cat([z, (~finite).to(z.dtype)], dim=1)

    def extra_repr(self) -> str:
        return f"num_dense={self.num_dense}, fitted={bool(self.fitted)}"
