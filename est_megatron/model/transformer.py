"""The decoder-only Transformer (Llama and GPT-2 flavours); each step may run a sampled subnetwork.

`forward(input_ids, plan=None, labels=None)`: with a `StepPlan`, skipped layers are the identity (paper eq. 7)
and active layers run their sampled heads and columns; with `plan=None` the model is the plain dense model.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.model.attention import Attention, init_attention, scaled_init_std
from est_megatron.model.mlp import MLP, init_mlp
from est_megatron.model.norms import build_norm
from est_megatron.model.rope import RotaryTables
from est_megatron.subnet.plan import LayerPlan, StepPlan


class TransformerLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, rotary: Optional[RotaryTables], num_groups: Optional[int] = None,
                 ffn_size: Optional[int] = None, tp_group=None):
        super().__init__()
        self.attn_norm = build_norm(config)
        self.attn = Attention(config, rotary, num_groups, tp_group)
        self.mlp_norm = build_norm(config)
        self.mlp = MLP(config, ffn_size, tp_group)

    def forward(self, x: torch.Tensor, plan: Optional[LayerPlan] = None) -> torch.Tensor:
        scale = 1.0 if plan is None else plan.residual_scale  # RAPTR's optional residual-branch scale
        if scale != 1.0:
            x = x + scale * self.attn(self.attn_norm(x), plan)
            return x + scale * self.mlp(self.mlp_norm(x), plan)
        x = x + self.attn(self.attn_norm(x), plan)
        return x + self.mlp(self.mlp_norm(x), plan)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        rotary = RotaryTables(config.head_dim, config.max_position_embeddings, config.rope_theta) \
            if config.is_llama else None
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.pos_embed = None if config.is_llama else nn.Embedding(config.max_position_embeddings,
                                                                    config.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(config, rotary) for _ in range(config.num_layers))
        self.final_norm = build_norm(config)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                    bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        out_std = scaled_init_std(std, self.config.num_layers)
        nn.init.normal_(self.embed.weight, std=std)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=std / 2)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        for layer in self.layers:
            init_attention(layer.attn, std, out_std)
            init_mlp(layer.mlp, std, out_std)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, plan: Optional[StepPlan] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits (batch, seq, vocab), or the mean next-token cross-entropy when `labels` are given."""
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:seq]
        for index, layer in enumerate(self.layers):
            layer_plan = None if plan is None else plan.layers[index]
            if layer_plan is not None and not layer_plan.active:
                continue  # eq. 7: a skipped layer is the identity
            x = layer(x, layer_plan)
        logits = F.linear(self.final_norm(x), self.output_weight)
        if labels is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
