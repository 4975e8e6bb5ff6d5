"""Megatron's communication pairs for tensor parallelism, as autograd functions.

`copy_to_tensor_parallel_region` is the identity forward and an all-reduce of the gradient backward (the input of
a column-parallel block); `reduce_from_tensor_parallel_region` is an all-reduce forward and the identity backward
(the output of a row-parallel block). With `group=None` both are the identity, so single-process models pay
nothing (`group_size_rank` gives such a group size 1, rank 0). Only torch is imported here: the model package
uses these hooks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def group_size_rank(group: Optional[dist.ProcessGroup]) -> Tuple[int, int]:
    """(size, rank) in a tensor-parallel group; (1, 0) without one."""
    return (1, 0) if group is None else (dist.get_world_size(group), dist.get_rank(group))


class _CopyToTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTensorParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tensor_parallel_region(x: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    return x if group is None else _CopyToTensorParallelRegion.apply(x, group)


def reduce_from_tensor_parallel_region(x: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    return x if group is None else _ReduceFromTensorParallelRegion.apply(x, group)


class RowParallelLinear(nn.Module):
    """The weights of Y = X A + b with A stored input-major, [in, out], as Megatron writes the row-parallel layer
    (A split along its first dimension across tensor-parallel ranks). Every input unit a plan samples (a head's
    context columns, an MLP column) is then a contiguous row of A: the sampled forward gathers rows, and the
    sparse optimizer step updates rows, where an [out, in] weight would make both strided column work. The
    forward is `row_parallel_linear`, given A or its gathered rows."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None


def row_parallel_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                        group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """x A summed over the tensor-parallel ranks (A input-major, [in, out]: RowParallelLinear); the (replicated)
    bias is added once, after the all-reduce."""
    if group is None:
        return F.linear(x, weight.t(), bias)
    out = reduce_from_tensor_parallel_region(F.linear(x, weight.t()), group)
    return out if bias is None else out + bias
