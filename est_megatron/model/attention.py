"""Causal self-attention that can run any sampled subset of its heads.

Q/K/V live in one fused weight laid out group-major: for each key/value group, its query heads, then its key
head, then its value head (Megatron's layout; tensor parallelism splits it into whole groups). The output
projection is stored input-major (RowParallelLinear), so a plan's heads become one row index into each weight:
the block gathers the smaller matrices once, multiplies them, and autograd scatters the gradients back to the
full parameters.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from est_megatron.model.activation_checkpoint import recomputed
from est_megatron.model.documents import Documents
from est_megatron.model.gather import gather
from est_megatron.model.rope import RotaryTables, apply_rope
from est_megatron.subnet.plan import LayerPlan
from est_megatron.tensor_parallel.mappings import (RowParallelLinear, copy_to_tensor_parallel_region,
                                                  row_parallel_linear)

try:  # optional: flash-attn kernels on CUDA
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the installation
    flash_attn_func = flash_attn_varlen_func = None


def uses_flash_attn(q: torch.Tensor) -> bool:
    return flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     documents: Optional[Documents] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with a causal mask; q (b, hq, s, d), k and v (b, hkv, s, d), hq % hkv == 0.

    Query head i attends with key/value head i // (hq / hkv). flash-attn when importable on a CUDA half-precision
    tensor, else torch's scaled_dot_product_attention (which picks its own flash/memory-efficient kernel).
    `documents` that separate attention keep every query inside its own document.
    """
    if documents is not None and documents.separate_attention:
        return document_attention(q, k, v, documents)
    if uses_flash_attn(q):
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        return out.transpose(1, 2)
    if q.shape[1] != k.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, documents: Documents) -> torch.Tensor:
    """`causal_attention` inside each document: flash-attn's variable-length kernel over the flattened batch's
    documents, else SDPA with the block-diagonal causal mask (no flash kernel takes an arbitrary mask)."""
    if uses_flash_attn(q):
        batch, heads, seq, dim = q.shape
        lengths, longest = documents.cumulative_lengths
        out = flash_attn_varlen_func(*(t.transpose(1, 2).reshape(batch * seq, -1, dim) for t in (q, k, v)),
                                     lengths, lengths, longest, longest, causal=True)
        return out.view(batch, seq, heads, dim).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=documents.attention_mask,
                                          enable_gqa=q.shape[1] != k.shape[1])


class SubnetIndex:
    """Row indices into the fused QKV weight and into the (input-major) output weight for one layer plan.

    Built once per plan object and reused by every micro-batch and by the sparse optimizer's `trained_slices`
    (the trainer hands both the same device plan; the plan object is the cache key).
    """

    def __init__(self, plan: LayerPlan, num_groups: int, heads_per_group: int, head_dim: int):
        g = heads_per_group
        device = plan.query_heads.device
        groups = plan.kv_heads if plan.kv_heads is not None else torch.arange(num_groups, device=device)
        queries = plan.query_heads.view(groups.numel(), -1)
        base = groups[:, None] * (g + 2)
        blocks = torch.cat([base + queries % g, base + g, base + g + 1], dim=1)
        offsets = torch.arange(head_dim, device=device)
        self.qkv_rows = (blocks[..., None] * head_dim + offsets).reshape(-1)
        self.out_rows = (plan.query_heads[:, None] * head_dim + offsets).reshape(-1)
        self.num_groups = groups.numel()
        self.heads_per_group = queries.shape[1]


class Attention(nn.Module):
    def __init__(self, config, rotary: Optional[RotaryTables], num_groups: Optional[int] = None, tp_group=None):
        super().__init__()
        self.tp_group = tp_group  # tensor parallel: column-parallel QKV, row-parallel output (None: one rank)
        self.head_dim = config.head_dim
        self.heads_per_group = config.heads_per_group
        self.num_groups = num_groups or config.num_query_groups  # local groups (fewer under tensor parallelism)
        qkv_rows = self.num_groups * (self.heads_per_group + 2) * self.head_dim
        context = self.num_groups * self.heads_per_group * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, qkv_rows, bias=config.bias)
        self.out = RowParallelLinear(context, config.hidden_size, bias=config.bias)
        self.rotary = rotary  # None: positions come from learned embeddings (GPT-2)
        self._index_cache = (None, None)
        self.recompute_core = False  # selective recompute (est_megatron.model.recompute)

    def subnet_index(self, plan: LayerPlan) -> SubnetIndex:
        if torch.compiler.is_compiling():  # in a compiled layer's graph: a cache keyed on the plan would recompile
            return SubnetIndex(plan, self.num_groups, self.heads_per_group, self.head_dim)
        if self._index_cache[0] is not plan:
            self._index_cache = (plan, SubnetIndex(plan, self.num_groups, self.heads_per_group, self.head_dim))
        return self._index_cache[1]

    def trained_slices(self, plan: Optional[LayerPlan]) -> list:
        """What `plan` trains here, for the sparse optimizer step: (parameter, axis, sorted indices along the axis;
        None = all of it). The sampled heads' QKV rows and output rows; the output bias is not per head."""
        qkv_rows = out_rows = None
        if plan is not None and plan.query_heads is not None:
            index = self.subnet_index(plan)  # shared with the forward when both are given the same plan object
            qkv_rows, out_rows = index.qkv_rows, index.out_rows
        slices = [(self.qkv.weight, 0, qkv_rows), (self.out.weight, 0, out_rows)]
        if self.qkv.bias is not None:
            slices += [(self.qkv.bias, 0, qkv_rows), (self.out.bias, None, None)]
        return slices

    def forward(self, x: torch.Tensor, plan: Optional[LayerPlan] = None,
                documents: Optional[Documents] = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        x = copy_to_tensor_parallel_region(x, self.tp_group)
        if plan is None or plan.query_heads is None:  # dense fast path: no gather, no scale
            qkv_w, qkv_b, out_w = self.qkv.weight, self.qkv.bias, self.out.weight
            groups, per_group = self.num_groups, self.heads_per_group
        else:
            index = self.subnet_index(plan)
            qkv_w = gather(self.qkv.weight, 0, index.qkv_rows)
            qkv_b = None if self.qkv.bias is None else gather(self.qkv.bias, 0, index.qkv_rows)
            # eq. 5's 1/p_H on the head sum (plan.head_scale, 1 unless --est-rescale), folded into the gathered weight
            out_w = gather(self.out.weight, 0, index.out_rows, plan.head_scale)
            groups, per_group = index.num_groups, index.heads_per_group
        qkv = F.linear(x, qkv_w, qkv_b).view(batch, seq, groups, per_group + 2, self.head_dim)
        context = recomputed(self.recompute_core, self.core, qkv, documents)
        # the output bias is not part of the head sum: it is never scaled (and is added once under TP)
        return row_parallel_linear(context, out_w, self.out.bias, self.tp_group)

    def core(self, qkv: torch.Tensor, documents: Optional[Documents] = None) -> torch.Tensor:
        """The attention core, (batch, seq, groups, heads per group + 2, head_dim) QKV -> (batch, seq, heads x
        head_dim) context: what selective recompute runs again in the backward pass. `documents`: packed
        documents whose positions restart or whose attention is kept apart (None: one sequence per row)."""
        batch, seq, groups, slots, _ = qkv.shape
        per_group = slots - 2
        # split, not indexing: its backward is one cat instead of a zero-filled full-size gradient per slice
        qk, v = qkv.split([per_group + 1, 1], dim=3)
        if self.rotary is not None:  # queries and their group's key rotate together, in one pass
            cos, sin = self.rotary.get(seq, qkv)
            positions = None if documents is None else documents.position_ids
            if positions is None:
                cos, sin = cos[:, None, None], sin[:, None, None]
            else:  # one table row per token: (batch, seq, 1, 1, head_dim)
                cos, sin = cos[positions][:, :, None, None], sin[positions][:, :, None, None]
            qk = apply_rope(qk, cos, sin)
        q, k = qk.split([per_group, 1], dim=3)
        q = q.reshape(batch, seq, groups * per_group, self.head_dim).transpose(1, 2)
        k, v = k.squeeze(3).transpose(1, 2), v.squeeze(3).transpose(1, 2)
        return causal_attention(q, k, v, documents).transpose(1, 2).reshape(batch, seq, -1)
