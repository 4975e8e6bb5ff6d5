"""The output layer: this rank's vocabulary shard of the logits, or the loss computed in chunks of tokens so that
the whole logits never exist.

At TinyLlama's shape (sequence 2048, micro-batch 8, vocabulary 32,000) the logits of one micro-batch and their
gradient are gigabytes of fp32, more than a layer's activations. Here each chunk of tokens is projected, its
loss and its gradient with respect to the logits are computed at once (vocab-parallel under TP: Megatron's
algorithm, `vocab_parallel.softmax_cross_entropy`), and the gradients of the hidden states and of the output
weight are accumulated in the forward pass; the backward pass only scales them. Without gradients (validation)
only the losses are computed. On CUDA without tensor parallelism, Liger-Kernel's fused linear cross-entropy (the
same algorithm in Triton kernels; `pip install .[gpu]`) is used when it is installed.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable

from est_megatron.tensor_parallel.mappings import copy_to_tensor_parallel_region, group_size_rank
from est_megatron.tensor_parallel.vocab_parallel import (IGNORE_INDEX, logits_gradient, parallel_logits,
                                                         softmax_cross_entropy, vocab_range)

CHUNK_LOGITS = 1 << 24  # fp32 logits per chunk (64 MiB); a chunk is at least one token


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, target, group, vocab_start, vocab_size, chunk):
        valid = (target != IGNORE_INDEX).sum().clamp(min=1)
        wants_x, wants_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.empty_like(x) if wants_x else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_w else None
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, x.shape[0], chunk):
            xc, tc = x[start:start + chunk], target[start:start + chunk]
            logits = (xc @ weight.t()).float()
            losses, saved = softmax_cross_entropy(logits, tc, group, vocab_start, vocab_size)
            total += losses.sum()
            if wants_x or wants_w:
                grad = logits_gradient(*saved).div_(valid).to(x.dtype)
                if wants_x:
                    grad_x[start:start + chunk] = grad @ weight
                if wants_w:
                    grad_w.addmm_(grad.t().float(), xc.float())
        ctx.save_for_backward(*(g for g in (grad_x, grad_w) if g is not None))
        ctx.wants = (wants_x, wants_w)
        ctx.weight_dtype = weight.dtype
        return total / valid

    @staticmethod
    @once_differentiable  # the gradients were computed in the forward pass: a second derivative is an error
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        wants_x, wants_w = ctx.wants
        grad_x = next(saved) * grad_loss if wants_x else None
        grad_w = (next(saved) * grad_loss).to(ctx.weight_dtype) if wants_w else None
        return grad_x, grad_w, None, None, None, None, None


@functools.lru_cache(maxsize=None)
def liger_loss() -> Optional[Callable]:
    """Liger-Kernel's fused linear cross-entropy, or None where it is not installed."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def loss_kernel(device: torch.device, tensor_parallel: int) -> str:
    """Which implementation computes the training loss here: "liger" or "chunked"."""
    return "liger" if device.type == "cuda" and tensor_parallel == 1 and liger_loss() is not None else "chunked"


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                 group: Optional[dist.ProcessGroup], vocab_size: int,
                                 chunk_logits: int = CHUNK_LOGITS) -> torch.Tensor:
    """Mean next-token loss of hidden states `x` (..., hidden) projected by this rank's vocabulary shard `weight`
    (-100 labels ignored): the cross-entropy of `parallel_logits(x, weight, group)` over the whole vocabulary."""
    size, rank = group_size_rank(group)
    if loss_kernel(x.device, size) == "liger":
        return liger_loss()(x.reshape(-1, x.shape[-1]), weight, labels.reshape(-1), ignore_index=IGNORE_INDEX)
    start, _ = vocab_range(vocab_size, rank, size)
    x = copy_to_tensor_parallel_region(x, group)  # its backward sums the shards' gradients of x
    chunk = max(1, chunk_logits // weight.shape[0])
    return _ChunkedLinearCrossEntropy.apply(x.reshape(-1, x.shape[-1]), weight, labels.reshape(-1), group, start,
                                            vocab_size, chunk)


class OutputProjection(nn.Module):
    """`parallel_logits` (or the chunked loss) with the weight of `weight_owner` (the output layer, or the tied
    embedding), as a module of its own: ZeRO-3 gathers a weight for the module whose forward reads it, so read by
    the model's own forward it would stay gathered for the whole forward pass and count against
    stage3_max_live_parameters, which stops the prefetching of the layers."""

    def __init__(self, weight_owner: nn.Module, vocab_size: int, group: Optional[dist.ProcessGroup] = None):
        super().__init__()
        self.__dict__["weight_owner"] = weight_owner  # not a submodule: the weight keeps its one name
        self.vocab_size = vocab_size
        self.group = group

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (this rank's vocabulary shard), or with `labels` the mean next-token loss, chunked."""
        if labels is None:
            return parallel_logits(x, self.weight_owner.weight, self.group)
        return chunked_linear_cross_entropy(x, self.weight_owner.weight, labels, self.group, self.vocab_size)
