"""Vocab-parallel embedding, output projection and cross-entropy (Megatron-core's VocabParallelEmbedding and the
algorithm of its vocab_parallel_cross_entropy; the loss itself runs in chunks of tokens, output_layer.py).

The vocabulary is padded to a multiple of the TP size (padded rows are zero and their logits are masked out of
the loss, so the loss equals the unpadded model's). A rank holds rows [start, start + V/TP) of the embedding
and of the output projection; no rank ever holds the full logits.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from est_megatron.tensor_parallel.mappings import (copy_to_tensor_parallel_region, group_size_rank,
                                                   reduce_from_tensor_parallel_region)

IGNORE_INDEX = -100

def vocab_range(vocab_size: int, tp_rank: int, tp_size: int) -> Tuple[int, int]:
    """[start, end) of the padded vocabulary rows this rank holds."""
    per = math.ceil(vocab_size / tp_size)
    return tp_rank * per, (tp_rank + 1) * per


class VocabParallelEmbedding(nn.Module):
    """Token embedding whose rows are split over the TP group; lookups outside the shard add zero."""

    def __init__(self, vocab_size: int, hidden_size: int, group: Optional[dist.ProcessGroup] = None):
        super().__init__()
        self.group = group
        size, rank = group_size_rank(group)
        self.vocab_size = vocab_size
        self.vocab_start, self.vocab_end = vocab_range(vocab_size, rank, size)
        self.weight = nn.Parameter(torch.empty(self.vocab_end - self.vocab_start, hidden_size))
        self.weight.tensor_model_parallel = size > 1

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local = (input_ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside[..., None], 0.0)
        return reduce_from_tensor_parallel_region(out, self.group)


def parallel_logits(x: torch.Tensor, weight: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """This rank's vocabulary shard of the logits (column-parallel output projection)."""
    return F.linear(copy_to_tensor_parallel_region(x, group), weight)


def softmax_cross_entropy(logits, target, group, vocab_start: int, vocab_size: int):
    """Per-token cross-entropy over logits split along the vocabulary (Megatron's algorithm, fp32), and what
    `logits_gradient` needs: (losses, (softmax, local target, target in this shard, label valid))."""
    logits = logits.float()
    local_vocab = logits.shape[-1]
    padded = vocab_start + local_vocab - vocab_size
    if padded > 0:  # padded rows of the last shard take no part in the softmax
        logits = logits.clone()
        logits[..., local_vocab - padded:] = float("-inf")
    logits_max = logits.max(dim=-1).values
    if group is not None:
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
    shifted = logits - logits_max[..., None]
    valid = target != IGNORE_INDEX
    in_shard = valid & (target >= vocab_start) & (target < vocab_start + local_vocab)
    local_target = (target - vocab_start).masked_fill(~in_shard, 0)
    predicted = shifted.gather(-1, local_target[..., None]).squeeze(-1) * in_shard
    exp = shifted.exp()
    sum_exp = exp.sum(dim=-1)
    if group is not None:
        both = torch.stack([predicted, sum_exp])
        dist.all_reduce(both, group=group)
        predicted, sum_exp = both[0], both[1]
    loss = (sum_exp.log() - predicted) * valid
    return loss, (exp.div_(sum_exp[..., None]), local_target, in_shard, valid)


def logits_gradient(softmax, local_target, in_shard, valid) -> torch.Tensor:
    """d(sum of the losses)/d(logits) of this shard: softmax minus the one-hot target, zero for ignored labels
    (overwrites `softmax`)."""
    softmax.scatter_add_(-1, local_target[..., None], -in_shard.to(softmax.dtype)[..., None])
    return softmax.mul_(valid.to(softmax.dtype)[..., None])
