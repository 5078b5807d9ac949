"""The curriculum of PIMM's sampling probability (paper eq. 4)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Curriculum:
    """p(E) = max(alpha - E * step, floor): the probability that PIM feeds the true label y_{t-1}
    (instead of the prediction) to task t, at epoch E = 0, 1, 2, ...

    E may be fractional (epoch + batch / batches_per_epoch) for a per-step schedule.
    The paper uses alpha=0.5, step=0.25, floor=0.25 on Ali-CCP and alpha=2/3, step=1/3, floor=0 on
    its industrial data (``Curriculum.aliccp()`` / ``Curriculum.industrial()``).
    """

    alpha: float = 0.5
    step: float = 0.25
    floor: float = 0.25

    def __post_init__(self):
        for name in ("alpha", "step", "floor"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Curriculum.{name} must be a finite number, got {value!r}")
        if not 0.0 <= self.floor <= self.alpha <= 1.0:
            raise ValueError(f"Curriculum needs 0 <= floor <= alpha <= 1, got alpha={self.alpha}, floor={self.floor}")
        if self.step < 0:
            raise ValueError(f"Curriculum.step must be >= 0, got {self.step}")

    def __call__(self, epoch: float) -> float:
        if not isinstance(epoch, (int, float)) or not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"epoch must be a finite number >= 0, got {epoch!r}")
        return max(self.alpha - epoch * self.step, self.floor)

    @classmethod
    def aliccp(cls) -> "Curriculum":
        return cls(alpha=0.5, step=0.25, floor=0.25)

    @classmethod
    def industrial(cls) -> "Curriculum":
        return cls(alpha=2 / 3, step=1 / 3, floor=0.0)

    @classmethod
    def constant(cls, p: float) -> "Curriculum":
        return cls(alpha=p, step=0.0, floor=p)
