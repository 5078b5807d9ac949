"""Fake kernels, autograd formulas and the plain ops, registered for every backend overload.

The fakes run the same metadata checks as the real kernels, so a bad call fails while
torch.compile traces, with the same message as in eager mode. The plain op ``validate_labels`` has a
C++ kernel (csrc/cpu/validate_labels.cpp); only when the compiled library is not loaded does the
Python check of ``pimm_fast.reference`` serve as its kernel.
"""
from __future__ import annotations

import torch

from .. import _checks, reference
from .schemas import KERNEL_BACKENDS, SCHEMAS_FROM_LIBRARY, lib, op, qualname


# ----------------------------------------------------------------------------------------------
# fake (meta) kernels
# ----------------------------------------------------------------------------------------------
def _fake_embedding_concat(indices, weight, field_offsets):
    _checks.check_embedding_concat(indices, weight, field_offsets)
    return weight.new_empty(indices.shape[0], indices.shape[1] * weight.shape[1])


def _fake_embedding_concat_backward(grad_out, indices, field_offsets, num_rows):
    F_ = indices.shape[1]
    if grad_out.dim() != 2 or grad_out.shape[0] != indices.shape[0] or (F_ and grad_out.shape[1] % F_):
        raise ValueError(f"embedding_concat_backward: grad_out must be [B, F*D] for indices "
                         f"{list(indices.shape)}, got {list(grad_out.shape)}")
    return grad_out.new_empty(num_rows, grad_out.shape[1] // F_ if F_ else 0)


def _fake_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed, b_q, b_k, b_v):
    _checks.check_pim_attention(v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed,
                                b_q, b_k, b_v)
    return torch.empty_like(v), v.new_empty(v.shape[0], dtype=torch.bool)


def _fake_pim_attention_backward(grad_u, v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, select,
                                 b_q, b_k, b_v):
    d = v.shape[1]
    if grad_u.shape != v.shape:
        raise ValueError(f"pim_attention_backward: grad_u must have the shape of v {list(v.shape)}, "
                         f"got {list(grad_u.shape)}")
    return (torch.empty_like(v), torch.empty_like(v), w_prior.new_empty(d), w_q.new_empty(d, d),
            w_k.new_empty(d, d), w_v.new_empty(d, d), v.new_empty(d), v.new_empty(d), v.new_empty(d))


def _fake_update(grad_values, values, value_offsets, field_offsets, weight, *state_and_hparams):
    _checks.check_update(grad_values, values, value_offsets, field_offsets, weight)
    return None


def _fake_embedding_bags_concat(values, bag_offsets, weight, field_offsets, pooling):
    _checks.check_embedding_bags(values, bag_offsets, weight, field_offsets, pooling)
    F_ = field_offsets.shape[0]
    batch = (bag_offsets.shape[0] - 1) // F_ if F_ else 0
    return weight.new_empty(batch, F_ * weight.shape[1])


def _fake_embedding_bags_concat_backward(grad_out, values, bag_offsets, field_offsets, pooling, num_rows):
    F_ = field_offsets.shape[0]
    return grad_out.new_empty(num_rows, grad_out.shape[1] // F_ if F_ else 0)


_FAKES = {
    "embedding_bags_concat": _fake_embedding_bags_concat,
    "embedding_bags_concat_backward": _fake_embedding_bags_concat_backward,
    "embedding_update_sgd": _fake_update,
    "embedding_update_rowwise_adagrad": _fake_update,
    "embedding_update_adam": _fake_update,
    "embedding_concat": _fake_embedding_concat,
    "embedding_concat_backward": _fake_embedding_concat_backward,
    "pim_attention": _fake_pim_attention,
    "pim_attention_backward": _fake_pim_attention_backward,
}


# ----------------------------------------------------------------------------------------------
# autograd: the backward of each forward op is the matching *_backward op of the same backend
# ----------------------------------------------------------------------------------------------
def _embedding_setup(ctx, inputs, output):
    indices, weight, field_offsets = inputs
    ctx.save_for_backward(indices, field_offsets)
    ctx.num_rows = weight.shape[0]


def _embedding_backward_for(backend: str):
    backward_op = op("embedding_concat_backward", backend)

    def backward(ctx, grad_out):
        indices, field_offsets = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = backward_op(grad_out.contiguous(), indices, field_offsets, ctx.num_rows)
        return None, grad_weight, None

    return backward


def _bags_setup(ctx, inputs, output):
    values, bag_offsets, weight, field_offsets, pooling = inputs
    ctx.save_for_backward(values, bag_offsets, field_offsets)
    ctx.num_rows, ctx.pooling = weight.shape[0], pooling


def _bags_backward_for(backend: str):
    backward_op = op("embedding_bags_concat_backward", backend)

    def backward(ctx, grad_out):
        values, bag_offsets, field_offsets = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[2]:
            grad_weight = backward_op(grad_out.contiguous(), values, bag_offsets, field_offsets, ctx.pooling,
                                      ctx.num_rows)
        return None, None, grad_weight, None, None

    return backward


def _pim_setup(ctx, inputs, output):
    v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, p, seed, b_q, b_k, b_v = inputs
    ctx.has_label = label_prev is not None
    ctx.has_bias = (b_q is not None, b_k is not None, b_v is not None)
    # Optional tensors are saved as empty placeholders: save_for_backward takes tensors only.
    none = v.new_empty(0)
    ctx.save_for_backward(v, h_prev, label_prev if ctx.has_label else none, pred_prev, w_prior, w_q, w_k,
                          w_v, output[1], *(b if b is not None else none for b in (b_q, b_k, b_v)))


def _pim_backward_for(backend: str):
    backward_op = op("pim_attention_backward", backend)

    def backward(ctx, grad_u, _grad_select):
        v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v, select, b_q, b_k, b_v = ctx.saved_tensors
        label_prev = label_prev if ctx.has_label else None
        biases = [b if has else None for b, has in zip((b_q, b_k, b_v), ctx.has_bias)]
        grads = backward_op(grad_u.contiguous(), v, h_prev, label_prev, pred_prev, w_prior, w_q, w_k, w_v,
                            select, *biases)
        g_v, g_h, g_wp, g_wq, g_wk, g_wv, g_bq, g_bk, g_bv = grads
        bias_grads = [g if has else None for g, has in zip((g_bq, g_bk, g_bv), ctx.has_bias)]
        # No gradient to label_prev / pred_prev (gradient truncation), none to p / seed.
        return (g_v, g_h, None, None, g_wp, g_wq, g_wk, g_wv, None, None, *bias_grads)

    return backward


# Every backend's overload gets the fake and the autograd formula, kernel or not (yet).
for _name, _fake in _FAKES.items():
    for _backend in KERNEL_BACKENDS:
        torch.library.register_fake(qualname(_name, _backend), _fake, lib=lib)
for _backend in KERNEL_BACKENDS:
    torch.library.register_autograd(qualname("embedding_bags_concat", _backend), _bags_backward_for(_backend),
                                    setup_context=_bags_setup, lib=lib)
    torch.library.register_autograd(qualname("embedding_concat", _backend), _embedding_backward_for(_backend),
                                    setup_context=_embedding_setup, lib=lib)
    torch.library.register_autograd(qualname("pim_attention", _backend), _pim_backward_for(_backend),
                                    setup_context=_pim_setup, lib=lib)


# ----------------------------------------------------------------------------------------------
# plain ops: one kernel for every device
# ----------------------------------------------------------------------------------------------
if not SCHEMAS_FROM_LIBRARY:  # the compiled library, when loaded, brings the C++ kernel
    @torch.library.impl(qualname("validate_labels"), "CompositeExplicitAutograd", lib=lib)
    def _validate_labels(labels, num_tasks, cascade=True):
        out = reference.validate_labels(labels, num_tasks, cascade)
        return out.clone() if out is labels else out  # an op's output may not alias its input


@torch.library.register_fake(qualname("validate_labels"), lib=lib)
def _fake_validate_labels(labels, num_tasks, cascade=True):
    _checks.check_labels_meta(labels, num_tasks)
    return labels.new_empty(labels.shape, dtype=torch.float32)


# It raises on bad labels: a side effect, so that torch.compile and torch.export keep the call when its
# output is unused (in eval mode the models only check the labels), instead of dropping it as dead code.
torch.fx.node.has_side_effect(torch.ops.pimm_fast.validate_labels.default)
