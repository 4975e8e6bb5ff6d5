"""The Transformer under tensor parallelism (without pipeline stages), with the dense model's parameter names.

Each rank holds its key/value groups and MLP columns of every layer (column-parallel QKV and [gate; up],
row-parallel output and down projections: est_megatron.model's `tp_group` hooks), its vocabulary shard of the
embedding and output projection, and replicated norms, position embeddings and row-parallel biases.
`forward(input_ids, plan, labels)` takes the global plan and returns the mean loss (identical on the TP ranks),
or this rank's vocabulary shard of the logits without labels.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.model.norms import build_norm
from est_megatron.model.rope import RotaryTables
from est_megatron.model.transformer import TransformerLayer
from est_megatron.parallel.layers import (VocabParallelEmbedding, group_size_rank, initialize_from_seed,
                                          mark_tensor_parallel, parallel_logits, vocab_parallel_cross_entropy,
                                          vocab_range)
from est_megatron.parallel.layout import validate_layout
from est_megatron.parallel.subnet import PlanHolder
from est_megatron.subnet.plan import StepPlan


def build_layer(cfg: ModelConfig, rotary, tp_group) -> TransformerLayer:
    tp_size, _ = group_size_rank(tp_group)
    return TransformerLayer(cfg, rotary, cfg.num_query_groups // tp_size, cfg.ffn_hidden_size // tp_size, tp_group)


def make_rotary(cfg: ModelConfig) -> Optional[RotaryTables]:
    return RotaryTables(cfg.head_dim, cfg.max_position_embeddings, cfg.rope_theta) if cfg.is_llama else None


class ParallelTransformer(nn.Module):
    def __init__(self, config: ModelConfig, tp_group=None, seed: Optional[int] = None):
        super().__init__()
        self.config = config.validate()
        self.tp_group = tp_group
        self.tp_size, self.tp_rank = group_size_rank(tp_group)
        validate_layout(config, self.tp_size)
        rotary = make_rotary(config)
        self.embed = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_group)
        self.pos_embed = None if config.is_llama else nn.Embedding(config.max_position_embeddings,
                                                                    config.hidden_size)
        self.layers = nn.ModuleList(build_layer(config, rotary, tp_group) for _ in range(config.num_layers))
        self.final_norm = build_norm(config)
        start, end = vocab_range(config.vocab_size, self.tp_rank, self.tp_size)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, end - start, bias=False)
        self.plans = PlanHolder(config, self.tp_rank, self.tp_size)
        mark_tensor_parallel(self.named_parameters(), self.tp_size)
        if seed is not None:
            initialize_from_seed(self.named_parameters(), config, seed, self.tp_rank, self.tp_size)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, plan: Optional[StepPlan] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        self.plans.set(plan)
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[:seq]
        for index, layer in enumerate(self.layers):
            layer_plan = self.plans.layer(index)
            if layer_plan is not None and not layer_plan.active:
                continue  # eq. 7: a skipped layer is the identity
            x = layer(x, layer_plan)
        logits = parallel_logits(self.final_norm(x), self.output_weight, self.tp_group)
        if labels is None:
            return logits
        return vocab_parallel_cross_entropy(logits, labels, self.tp_group, self.config.vocab_size)
