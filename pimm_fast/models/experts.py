"""Bottoms: what each task's tower reads. Every bottom maps the embedding e [B, n] to one input per
task (a list of T tensors [B, out_dim]).

* ``EmbeddingBottom``: every tower reads e (Shared-Bottom, ESMM, AITM, PIMM's default);
* ``MMoEBottom``: n shared experts, one softmax gate per task (Ma et al., KDD 2018);
* ``PLEBottom``: stacked CGC levels of shared and task-specific experts (Tang et al., RecSys 2020).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..modules import MLP

DEFAULT_EXPERT_DIMS = (128, 64)
DEFAULT_NUM_EXPERTS = 4  # MMoE on Ali-CCP in the PIMM paper (6 on its industrial data)
DEFAULT_NUM_SHARED_EXPERTS = 2  # PLE / MNCM in the PIMM paper: 2 shared + 2 per task
DEFAULT_NUM_SPECIFIC_EXPERTS = 2
DEFAULT_NUM_LEVELS = 2


def check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class Gate(nn.Module):
    """softmax(Linear(x)): weights [B, n] over n experts, summing to 1."""

    def __init__(self, in_dim: int, num_experts: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """sum_k weights[:, k] * experts[:, k]: [B, n] x [B, n, d] -> [B, d]."""
    return torch.bmm(weights.unsqueeze(1), experts).squeeze(1)


class Experts(nn.ModuleList):
    """n MLP experts over the same input; forward stacks their outputs into [B, n, d]."""

    def __init__(self, count: int, in_dim: int, dims: Sequence[int], dropout: float, batch_norm: bool):
        dims = tuple(dims)
        if not dims or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in dims):
            raise ValueError(f"expert_dims must be a non-empty sequence of positive ints, got {dims!r}")
        super().__init__(MLP(in_dim, dims, dropout=dropout, batch_norm=batch_norm) for _ in range(count))
        self.out_dim = dims[-1]  # also when there are none: a CGC level may have no shared experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self) == 0:
            return x.new_empty(x.shape[0], 0, self.out_dim)
        return torch.stack([expert(x) for expert in self], dim=1)


class EmbeddingBottom(nn.Module):
    """No parameters: every task's tower reads the shared embedding."""

    def __init__(self, in_dim: int, num_tasks: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.out_dim = in_dim

    def forward(self, e: torch.Tensor) -> list[torch.Tensor]:
        return [e] * self.num_tasks


class MMoEBottom(nn.Module):
    """Task t reads sum_k g_t(e)_k expert_k(e), g_t = softmax(Linear_t(e))."""

    def __init__(self, in_dim: int, num_tasks: int, num_experts: int = DEFAULT_NUM_EXPERTS,
                 expert_dims: Sequence[int] = DEFAULT_EXPERT_DIMS, dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        check_count("num_experts", num_experts, 1)
        self.experts = Experts(num_experts, in_dim, expert_dims, dropout, batch_norm)
        self.gates = nn.ModuleList(Gate(in_dim, num_experts) for _ in range(num_tasks))
        self.out_dim = self.experts.out_dim

    def forward(self, e: torch.Tensor) -> list[torch.Tensor]:
        experts = self.experts(e)
        return [mix(gate(e), experts) for gate in self.gates]


class CGCLevel(nn.Module):
    """One Customized Gate Control level of PLE.

    Task t gates over [its own experts, shared experts] with its input; the shared gate (absent at
    the last level, which has no shared output) gates over every expert with the shared input.
    """

    def __init__(self, in_dim: int, num_tasks: int, num_shared: int, num_specific: int,
                 expert_dims: Sequence[int], dropout: float = 0.0, batch_norm: bool = False,
                 shared_output: bool = True):
        super().__init__()
        check_count("num_shared_experts", num_shared, 0)
        check_count("num_specific_experts", num_specific, 0)
        if num_shared + num_specific == 0:
            raise ValueError("a CGC level needs at least one expert: num_shared_experts + "
                             "num_specific_experts must be >= 1")
        self.specific = nn.ModuleList(Experts(num_specific, in_dim, expert_dims, dropout, batch_norm)
                                      for _ in range(num_tasks))
        self.shared = Experts(num_shared, in_dim, expert_dims, dropout, batch_norm)
        self.gates = nn.ModuleList(Gate(in_dim, num_specific + num_shared) for _ in range(num_tasks))
        self.shared_gate = Gate(in_dim, num_tasks * num_specific + num_shared) if shared_output else None
        self.out_dim = self.shared.out_dim

    def experts(self, task_inputs: Sequence[torch.Tensor], shared_input: torch.Tensor
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(task-specific expert outputs, one [B, num_specific, d] per task; shared [B, num_shared, d])."""
        return [experts(x) for experts, x in zip(self.specific, task_inputs)], self.shared(shared_input)

    def combine(self, task_inputs: Sequence[torch.Tensor], shared_input: torch.Tensor,
                specific: Sequence[torch.Tensor], shared: torch.Tensor
                ) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        """The gated mixtures: (one [B, d] per task, the shared [B, d] or None at the last level)."""
        tasks = [mix(gate(x), torch.cat([own, shared], dim=1))
                 for gate, x, own in zip(self.gates, task_inputs, specific)]
        if self.shared_gate is None:
            return tasks, None
        return tasks, mix(self.shared_gate(shared_input), torch.cat([*specific, shared], dim=1))

    def forward(self, task_inputs: Sequence[torch.Tensor], shared_input: torch.Tensor
                ) -> tuple[list[torch.Tensor], Optional[torch.Tensor]]:
        specific, shared = self.experts(task_inputs, shared_input)
        return self.combine(task_inputs, shared_input, specific, shared)


class PLEBottom(nn.Module):
    """``num_levels`` CGC levels; level 0 reads e everywhere, level l+1 reads level l's mixtures."""

    def __init__(self, in_dim: int, num_tasks: int, num_shared_experts: int = DEFAULT_NUM_SHARED_EXPERTS,
                 num_specific_experts: int = DEFAULT_NUM_SPECIFIC_EXPERTS, num_levels: int = DEFAULT_NUM_LEVELS,
                 expert_dims: Sequence[int] = DEFAULT_EXPERT_DIMS, dropout: float = 0.0,
                 batch_norm: bool = False):
        super().__init__()
        check_count("num_levels", num_levels, 1)
        self.num_tasks = num_tasks
        levels = []
        for level in range(num_levels):
            levels.append(CGCLevel(in_dim, num_tasks, num_shared_experts, num_specific_experts, expert_dims,
                                   dropout, batch_norm, shared_output=level < num_levels - 1))
            in_dim = levels[-1].out_dim
        self.levels = nn.ModuleList(levels)
        self.out_dim = in_dim

    def forward(self, e: torch.Tensor) -> list[torch.Tensor]:
        tasks, shared = [e] * self.num_tasks, e
        for level in self.levels:
            tasks, shared = level(tasks, shared)
        return tasks


BACKBONES = ("towers", "mmoe", "ple")
_BACKBONE_OPTIONS = {
    "towers": (),
    "mmoe": ("num_experts", "expert_dims"),
    "ple": ("num_shared_experts", "num_specific_experts", "num_levels", "expert_dims"),
}


def make_bottom(backbone: str, in_dim: int, num_tasks: int, dropout: float = 0.0, batch_norm: bool = False,
                **options) -> nn.Module:
    """The bottom named ``backbone`` ("towers", "mmoe" or "ple"); options left as None take the
    defaults, and an option that the backbone does not take is an error."""
    if backbone not in _BACKBONE_OPTIONS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(_BACKBONE_OPTIONS[backbone]))
    if unknown:
        takes = ", ".join(_BACKBONE_OPTIONS[backbone]) or "no expert options"
        raise ValueError(f"{', '.join(unknown)} does not apply to backbone {backbone!r} (it takes {takes})")
    if backbone == "towers":
        return EmbeddingBottom(in_dim, num_tasks)
    bottom = MMoEBottom if backbone == "mmoe" else PLEBottom
    return bottom(in_dim, num_tasks, dropout=dropout, batch_norm=batch_norm, **given)
