"""Gather the rows or columns of a weight that a sampled subnetwork uses, with a cheap exact backward.

Plain `weight.index_select(dim, index)` costs a separate `* scale` pass (and its backward) and, under autograd,
an index_select backward that profiles slower than one `new_zeros(...).index_add_` (docs/performance.md). This
function folds the scale into the gather and returns exactly that: the full gradient is zeros with the gathered
gradient added at `index`. Plan indices are sorted and unique, so the add is a copy (exact, and deterministic on
CUDA too); `index_add_` rather than `index_copy_`, which profiled slower on CPU for the same result.
The full-size gradient is still returned through autograd, never written into `param.grad` directly: DeepSpeed
ZeRO-1/2 reduce a gradient from a hook that fires when the parameter's AccumulateGrad node runs
(`register_post_accumulate_grad_hook`), and writing `param.grad` behind autograd's back would skip that hook.
"""
from __future__ import annotations

import torch


class _GatherScaled(torch.autograd.Function):
    """out = weight.index_select(dim, index) * scale; index sorted and unique."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, dim: int, index: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.dim, ctx.scale, ctx.shape = dim, scale, weight.shape
        ctx.save_for_backward(index)
        out = weight.index_select(dim, index)
        return out.mul_(scale) if scale != 1.0 else out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        if ctx.scale != 1.0:
            grad = grad * ctx.scale  # on the small gathered gradient, not the full one
        full = grad.new_zeros(ctx.shape)
        full.index_add_(ctx.dim, index, grad)  # unique indices: each element is 0 + grad, exactly
        return full, None, None, None


def gather(weight: torch.Tensor, dim: int, index: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """A contiguous copy of `weight`'s slices `index` along `dim`, times `scale`; unselected slices get exactly
    zero gradient. `index` must be sorted and free of duplicates (plan indices are)."""
    if not (torch.is_grad_enabled() and weight.requires_grad):
        out = weight.index_select(dim, index)
        return out.mul_(scale) if scale != 1.0 else out
    return _GatherScaled.apply(weight, dim, index, float(scale))
