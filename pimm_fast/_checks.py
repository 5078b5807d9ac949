"""Input checks shared by the reference, the fake kernels and the Python-launched kernels.

Two kinds of check live here:

* metadata checks (shape, dtype, device) read no tensor data, so they also run on fake tensors while
  ``torch.compile`` traces and report a bad call at trace time;
* data checks (ids in range, labels 0/1 along the cascade, no NaN) read values. In eager mode they
  raise an error that names the field, row or id; while compiling they become ``torch._assert_async``
  (no graph break, a fixed message), because a traced graph cannot build a message from data.

The C++ / CUDA kernels repeat the same checks with the same exception types (TORCH_CHECK_INDEX ->
IndexError, TORCH_CHECK_VALUE -> ValueError, TORCH_CHECK_TYPE -> TypeError).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)
LABEL_DTYPES = FLOAT_DTYPES + (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def require(ok: torch.Tensor, exc: type[Exception], summary: str, detail: Callable[[], str]) -> None:
    """Raise ``exc(detail())`` unless the boolean tensor ``ok`` is true.

    Under torch.compile the check stays in the graph as an async assert with ``summary``.
    """
    if torch.compiler.is_compiling():
        torch._assert_async(ok, summary)
    elif not bool(ok):
        raise exc(detail())


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_same_device(op: str, **tensors: Optional[torch.Tensor]) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: device mismatch: {listing}")


def check_scalar(op: str, name: str, t: torch.Tensor, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 0:
        raise ValueError(f"{op}: {name} must be a 0-dim tensor, got {type(t).__name__} "
                         f"{_shape(t) if isinstance(t, torch.Tensor) else ''}".rstrip())
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must have dtype in {dtypes}, got {t.dtype}")


# ----------------------------------------------------------------------------------------------
# embedding_concat
# ----------------------------------------------------------------------------------------------
def check_embedding_concat(indices: torch.Tensor, weight: torch.Tensor, field_offsets: torch.Tensor) -> None:
    op = "embedding_concat"
    if indices.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: indices must be int32 or int64, got {indices.dtype}")
    if weight.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: weight must be a floating tensor, got {weight.dtype}")
    if field_offsets.dtype != torch.int64:
        raise TypeError(f"{op}: field_offsets must be int64, got {field_offsets.dtype}")
    if indices.dim() != 2:
        raise ValueError(f"{op}: indices must be [B, F], got shape {_shape(indices)}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be [num_rows, D], got shape {_shape(weight)}")
    if field_offsets.dim() != 1 or field_offsets.shape[0] != indices.shape[1]:
        raise ValueError(f"{op}: field_offsets must be [F] with F = indices.shape[1] = {indices.shape[1]}, "
                         f"got shape {_shape(field_offsets)}")
    check_same_device(op, indices=indices, weight=weight, field_offsets=field_offsets)


def field_sizes(field_offsets: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Rows owned by each field: offsets[f+1] - offsets[f], and num_rows - offsets[-1] for the last."""
    ends = torch.cat([field_offsets[1:], field_offsets.new_full((1,), num_rows)])
    return ends - field_offsets


def check_field_offsets(field_offsets: torch.Tensor, num_rows: int) -> None:
    """Offsets must start at 0, be non-decreasing and stay inside the table."""
    op = "embedding_concat"
    if field_offsets.numel() == 0:
        return
    sizes = field_sizes(field_offsets, num_rows)
    ok = (field_offsets[0] == 0) & (sizes >= 0).all()
    require(ok, ValueError, f"{op}: field_offsets must start at 0, be non-decreasing and <= num_rows",
            lambda: f"{op}: field_offsets must start at 0, be non-decreasing and <= num_rows={num_rows}, "
                    f"got {field_offsets.tolist()}")


def check_ids_in_range(indices: torch.Tensor, field_offsets: torch.Tensor, num_rows: int) -> None:
    """Every id of field f must lie in [0, size_f)."""
    op = "embedding_concat"
    if indices.numel() == 0:
        return
    check_field_offsets(field_offsets, num_rows)
    sizes = field_sizes(field_offsets, num_rows)
    bad = (indices < 0) | (indices >= sizes)

    def detail() -> str:
        b, f = (int(i) for i in bad.nonzero()[0])
        return (f"{op}: id {int(indices[b, f])} out of range for field {f} (size {int(sizes[f])}) "
                f"at sample {b}")

    require(~bad.any(), IndexError, f"{op}: id out of range for its field (or negative)", detail)


# ----------------------------------------------------------------------------------------------
# multi-hot bags and the fused updates (field-major values, see reference.embedding_bags_concat)
# ----------------------------------------------------------------------------------------------
def check_embedding_bags(values: torch.Tensor, bag_offsets: torch.Tensor, weight: torch.Tensor,
                         field_offsets: torch.Tensor, pooling) -> None:
    op = "embedding_bags_concat"
    if values.dtype not in INDEX_DTYPES or values.dim() != 1:
        raise TypeError(f"{op}: values must be a 1-D int32 or int64 tensor, got {values.dtype} {_shape(values)}")
    if bag_offsets.dtype != torch.int64 or bag_offsets.dim() != 1 or bag_offsets.numel() < 1:
        raise TypeError(f"{op}: bag_offsets must be a non-empty 1-D int64 tensor, got {bag_offsets.dtype} "
                        f"{_shape(bag_offsets)}")
    if weight.dtype not in FLOAT_DTYPES or weight.dim() != 2:
        raise TypeError(f"{op}: weight must be a 2-D floating tensor, got {weight.dtype} {_shape(weight)}")
    if field_offsets.dtype != torch.int64 or field_offsets.dim() != 1:
        raise TypeError(f"{op}: field_offsets must be a 1-D int64 tensor, got {field_offsets.dtype}")
    F_ = field_offsets.numel()
    if len(pooling) != F_ or any(p not in (0, 1) for p in pooling):
        raise ValueError(f"{op}: pooling must hold one code per field (0 = sum, 1 = mean) for {F_} fields, "
                         f"got {list(pooling)}")
    if F_ and (bag_offsets.numel() - 1) % F_:
        raise ValueError(f"{op}: bag_offsets must have F*B + 1 entries for F = {F_} fields, got {bag_offsets.numel()}")
    check_same_device(op, values=values, bag_offsets=bag_offsets, weight=weight, field_offsets=field_offsets)


def check_update(grad_values: torch.Tensor, values: torch.Tensor, value_offsets: torch.Tensor,
                 field_offsets: torch.Tensor, weight: torch.Tensor) -> None:
    op = "embedding_update"
    if values.dtype not in INDEX_DTYPES or values.dim() != 1:
        raise TypeError(f"{op}: values must be a 1-D int32 or int64 tensor, got {values.dtype} {_shape(values)}")
    if weight.dtype not in FLOAT_DTYPES or weight.dim() != 2:
        raise TypeError(f"{op}: weight must be a 2-D floating tensor, got {weight.dtype} {_shape(weight)}")
    if grad_values.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: grad_values must be a floating tensor, got {grad_values.dtype}")
    if tuple(grad_values.shape) != (values.numel(), weight.shape[1]):
        raise ValueError(f"{op}: grad_values must be [n, D] = [{values.numel()}, {weight.shape[1]}], "
                         f"got {_shape(grad_values)}")
    if field_offsets.dtype != torch.int64 or value_offsets.dtype != torch.int64:
        raise TypeError(f"{op}: value_offsets and field_offsets must be int64")
    if value_offsets.dim() != 1 or value_offsets.numel() != field_offsets.numel() + 1:
        raise ValueError(f"{op}: value_offsets must be [F + 1] = [{field_offsets.numel() + 1}], "
                         f"got {_shape(value_offsets)}")
    check_same_device(op, grad_values=grad_values, values=values, value_offsets=value_offsets,
                      field_offsets=field_offsets, weight=weight)


def check_values_in_range(values: torch.Tensor, value_offsets: torch.Tensor, field_offsets: torch.Tensor,
                          num_rows: int) -> None:
    """value_offsets run from 0 to len(values) without decreasing; the values of field f lie in [0, size_f)."""
    op = "embedding"
    check_field_offsets(field_offsets, num_rows)
    counts = value_offsets[1:] - value_offsets[:-1]
    ok = (value_offsets[0] == 0) & (value_offsets[-1] == values.numel()) & (counts >= 0).all()
    require(ok, ValueError, f"{op}: value offsets must run from 0 to the number of values without decreasing",
            lambda: f"{op}: value offsets must run from 0 to the number of values ({values.numel()}) without "
                    f"decreasing, got {value_offsets.tolist()}")
    if values.numel() == 0:
        return
    field = torch.repeat_interleave(torch.arange(counts.numel(), device=values.device), counts)
    size = field_sizes(field_offsets, num_rows)[field]
    bad = (values < 0) | (values >= size)

    def detail() -> str:
        i = int(bad.nonzero()[0, 0])
        f = int(field[i])
        return (f"{op}: id {int(values[i])} out of range for field {f} (size {int(size[i])}) at position "
                f"{i - int(value_offsets[f])} of the field's values")

    require(~bad.any(), IndexError, f"{op}: id out of range for its field (or negative)", detail)


# ----------------------------------------------------------------------------------------------
# pim_attention
# ----------------------------------------------------------------------------------------------
def check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed,
                        b_q=None, b_k=None, b_v=None) -> None:
    op = "pim_attention"
    if v.dim() != 2:
        raise ValueError(f"{op}: v must be [B, d], got shape {_shape(v)}")
    B, d = v.shape
    if v.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: v must be a floating tensor, got {v.dtype}")
    expected = {"h_prev": (h_prev, (B, d)), "pred_prev": (pred_prev, (B,)), "w_prior": (w_prior, (d,)),
                "w_q": (w_q, (d, d)), "w_k": (w_k, (d, d)), "w_v": (w_v, (d, d)),
                "b_q": (b_q, (d,)), "b_k": (b_k, (d,)), "b_v": (b_v, (d,)), "label_prev": (label_prev, (B,))}
    for name, (t, shape) in expected.items():
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {list(shape)} (B={B}, d={d}), got {_shape(t)}")
        if name == "label_prev":
            if t.dtype not in LABEL_DTYPES:
                raise TypeError(f"{op}: label_prev must be a float, integer or bool tensor, got {t.dtype}")
        elif name == "pred_prev":
            if t.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{op}: pred_prev must be a floating tensor, got {t.dtype}")
        elif t.dtype != v.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but v has {v.dtype}; they must match")
    check_scalar(op, "p", p, FLOAT_DTYPES)
    check_scalar(op, "seed", seed, (torch.int64,))
    check_same_device(op, v=v, h_prev=h_prev, label_prev=label_prev, pred_prev=pred_prev, w_prior=w_prior,
                      w_q=w_q, w_k=w_k, w_v=w_v, b_q=b_q, b_k=b_k, b_v=b_v)
    # p and seed are 0-dim: they may live on the CPU next to CUDA data (read on the host) or with the data.
    if p.device.type != "cpu":
        check_same_device(op, v=v, p=p)
    if seed.device.type != "cpu":
        check_same_device(op, v=v, seed=seed)


def check_pim_values(label_prev: Optional[torch.Tensor], pred_prev: torch.Tensor, p: torch.Tensor,
                     seed: torch.Tensor) -> None:
    op = "pim_attention"
    require((p >= 0) & (p <= 1), ValueError, f"{op}: p must lie in [0, 1]",
            lambda: f"{op}: p must lie in [0, 1], got {float(p)}")
    require(seed >= 0, ValueError, f"{op}: seed must be non-negative",
            lambda: f"{op}: seed must be non-negative, got {int(seed)}")
    nan = torch.isnan(pred_prev)
    require(~nan.any(), ValueError, f"{op}: pred_prev contains NaN",
            lambda: f"{op}: pred_prev contains NaN (first at sample {int(nan.nonzero()[0, 0])})")
    if label_prev is not None:
        bad = (label_prev != 0) & (label_prev != 1)
        require(~bad.any(), ValueError, f"{op}: label_prev must be 0 or 1",
                lambda: (lambda i: f"{op}: label_prev must be 0 or 1, got {label_prev[i].item()} "
                                   f"at sample {i}")(int(bad.nonzero()[0, 0])))


# ----------------------------------------------------------------------------------------------
# labels of a cascade
# ----------------------------------------------------------------------------------------------
def check_labels_meta(labels: torch.Tensor, num_tasks: int) -> None:
    if labels.dim() != 2 or labels.shape[1] != num_tasks:
        raise ValueError(f"labels must be [B, T] with T = {num_tasks} tasks in funnel order, "
                         f"got shape {_shape(labels)}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels must be a float, integer or bool tensor, got {labels.dtype}")


def check_labels_values(labels: torch.Tensor, cascade: bool = True) -> None:
    """Labels are 0/1 (no NaN) and, with ``cascade``, obey the cascade: y_t = 1 implies y_{t-1} = 1."""
    bad = (labels != 0) & (labels != 1)

    def bad_value() -> str:
        r, t = (int(i) for i in bad.nonzero()[0])
        return f"labels must be 0 or 1: got {labels[r, t].item()} at row {r}, task {t}"

    require(~bad.any(), ValueError, "labels must be 0 or 1", bad_value)
    if not cascade or labels.shape[1] < 2:
        return
    broken = labels[:, 1:] > labels[:, :-1]

    def broken_cascade() -> str:
        r, t = (int(i) for i in broken.nonzero()[0])
        return (f"labels break the cascade at row {r}: task {t + 1} is 1 but task {t} is 0 "
                f"(a later funnel stage needs the earlier one; only models that do not assume a cascade, "
                f"e.g. shared_bottom, mmoe, ple, train on such labels)")

    require(~broken.any(), ValueError, "labels break the cascade (y_t = 1 needs y_{t-1} = 1)", broken_cascade)
