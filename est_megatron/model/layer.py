"""One pre-norm transformer layer (attention, then MLP, each with a residual) that runs any sampled subnetwork.

`forward(x, layer_plan, documents)`: with a `LayerPlan` the attention and MLP blocks gather their sampled heads and
columns; with None the layer is dense. `documents` (packed documents kept apart) reach the attention only. Under
tensor parallelism (`tp_group`) the layer holds this rank's key/value groups and MLP columns. `reset_parameters`
is the model's init rule, also used by `model.init` to draw seeded weights.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.model.activation_checkpoint import recomputed
from est_megatron.model.attention import Attention
from est_megatron.model.documents import Documents
from est_megatron.model.mlp import MLP
from est_megatron.model.norms import build_norm
from est_megatron.model.rope import RotaryTables
from est_megatron.subnet.plan import LayerPlan
from est_megatron.tensor_parallel.mappings import group_size_rank


class TransformerLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, rotary: Optional[RotaryTables], tp_group=None, index: int = 0):
        super().__init__()
        self.index = index  # global layer number: the plan's entry for this layer
        tp_size, _ = group_size_rank(tp_group)
        self.attn_norm = build_norm(config)
        self.attn = Attention(config, rotary, config.num_query_groups // tp_size, tp_group)
        self.mlp_norm = build_norm(config)
        self.mlp = MLP(config, config.ffn_hidden_size // tp_size, tp_group)
        self.recompute = False  # full recompute of this layer (est_megatron.model.recompute)
        self.compiled_block = None  # `block` under torch.compile (est_megatron.model.regional_compile)

    def reset_parameters(self, std: float, num_layers: int) -> None:
        """Input projections N(0, std); the residual output projections N(0, std / sqrt(2 * layers)), as GPT-2 and
        Megatron start them; biases zero (norms start at one)."""
        out_std = std / math.sqrt(2.0 * num_layers)
        for linear, linear_std in ((self.attn.qkv, std), (self.attn.out, out_std), (self.mlp.up, std),
                                   (self.mlp.down, out_std)):
            nn.init.normal_(linear.weight, std=linear_std)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def trained_slices(self, plan: Optional[LayerPlan]) -> list:
        """(parameter, axis, sorted indices; None = all) of everything an active layer's `plan` trains; the norms
        train whenever the layer runs."""
        norms = [(param, None, None) for norm in (self.attn_norm, self.mlp_norm) for param in norm.parameters()]
        return self.attn.trained_slices(plan) + self.mlp.trained_slices(plan) + norms

    def forward(self, x: torch.Tensor, plan: Optional[LayerPlan] = None,
                documents: Optional[Documents] = None) -> torch.Tensor:
        if self.compiled_block is None:
            return recomputed(self.recompute, self.block, x, plan, documents)
        if documents is not None:
            documents.derive_for_sdpa()
        return recomputed(self.recompute, self.compiled_block, x, plan, documents)

    def block(self, x: torch.Tensor, plan: Optional[LayerPlan] = None,
              documents: Optional[Documents] = None) -> torch.Tensor:
        scale = 1.0 if plan is None else plan.residual_scale  # RAPTR's optional residual-branch scale
        if scale != 1.0:
            x = x + scale * self.attn(self.attn_norm(x), plan, documents)
            return x + scale * self.mlp(self.mlp_norm(x), plan)
        x = x + self.attn(self.attn_norm(x), plan, documents)
        return x + self.mlp(self.mlp_norm(x), plan)
