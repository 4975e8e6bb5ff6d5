"""The decoder-only Transformer (Llama and GPT-2 flavours); each step may run a sampled subnetwork.

`forward(input_ids, plan=None, labels=None, documents=None)`: with a `StepPlan`, skipped layers are the identity
(paper eq. 7) and active layers run their sampled heads and columns; with `plan=None` the model is the plain dense
model. `documents` (`model.documents`) restart the positions and keep attention inside each packed document.

Under tensor parallelism (`tp_group`) each rank holds its key/value groups and MLP columns of every layer
(column-parallel QKV and [gate; up], row-parallel output and down projections), its vocabulary shard of the
embedding and output projection, and replicated norms and biases of row-parallel layers; the plan keeps its
global indices and each rank takes its own part. Parameter names are the same in every layout.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.model.documents import Documents
from est_megatron.model.init import initialize_from_seed
from est_megatron.model.layer import TransformerLayer
from est_megatron.model.norms import build_norm
from est_megatron.model.rope import rotary_tables
from est_megatron.subnet.plan import StepPlan
from est_megatron.tensor_parallel.layout import validate_layout
from est_megatron.tensor_parallel.mappings import group_size_rank
from est_megatron.tensor_parallel.plan_localization import PlanHolder
from est_megatron.tensor_parallel.sharding import mark_tensor_parallel
from est_megatron.tensor_parallel.output_layer import OutputProjection
from est_megatron.tensor_parallel.vocab_parallel import VocabParallelEmbedding, vocab_range


class Transformer(nn.Module):
    """The model on one rank, or this rank's tensor-parallel part of it (`tp_group`).

    `seed=None` initialises from torch's global generator (one rank only); a seed draws every part of the model
    from its own seeded generator, so any tensor-parallel layout starts from exactly the one-rank weights.
    """

    def __init__(self, config: ModelConfig, tp_group=None, seed: Optional[int] = None):
        super().__init__()
        self.config = config.validate()
        self.tp_group = tp_group
        tp_size, tp_rank = group_size_rank(tp_group)
        validate_layout(config, tp_size)
        rotary = rotary_tables(config)
        self.embed = VocabParallelEmbedding(config.vocab_size, config.hidden_size, tp_group)
        self.pos_embed = None if config.is_llama else nn.Embedding(config.max_position_embeddings,
                                                                    config.hidden_size)
        self.layers = nn.ModuleList(TransformerLayer(config, rotary, tp_group, i) for i in range(config.num_layers))
        self.final_norm = build_norm(config)
        start, end = vocab_range(config.vocab_size, tp_rank, tp_size)
        self.lm_head = None if config.tie_embeddings else nn.Linear(config.hidden_size, end - start, bias=False)
        self.output_projection = OutputProjection(self.embed if self.lm_head is None else self.lm_head,
                                                  config.vocab_size, tp_group)
        self.step_plan = PlanHolder(config, tp_rank, tp_size)  # the step's plan, localised to this rank
        mark_tensor_parallel(self.named_parameters(), tp_size)
        if seed is not None:
            initialize_from_seed(self.named_parameters(), config, seed, tp_rank, tp_size)
        elif tp_size == 1:
            self.reset_parameters()
        else:
            raise ValueError("a tensor-parallel Transformer needs a seed so every layout starts from the same "
                             "weights")

    def reset_parameters(self) -> None:
        std = self.config.init_std
        nn.init.normal_(self.embed.weight, std=std)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=std / 2)
        if self.lm_head is not None:
            nn.init.normal_(self.lm_head.weight, std=std)
        for layer in self.layers:
            layer.reset_parameters(std, self.config.num_layers)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.output_projection.weight_owner.weight

    def forward(self, input_ids: torch.Tensor, plan: Optional[StepPlan] = None,
                labels: Optional[torch.Tensor] = None, documents: Optional[Documents] = None) -> torch.Tensor:
        """Logits (batch, seq, vocab; this rank's vocabulary shard under TP), or the mean next-token
        cross-entropy when `labels` are given (-100 ignored); `documents`: the rows' packed documents."""
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        self.step_plan.set(plan)
        x = self.embed(input_ids)
        if self.pos_embed is not None:
            x = x + learned_positions(self.pos_embed.weight, seq, documents)
        for index, layer in enumerate(self.layers):
            layer_plan = self.step_plan.layer(index)
            if layer_plan is not None and not layer_plan.active:
                continue  # eq. 7: a skipped layer is the identity
            x = layer(x, layer_plan, documents)
        # with labels, the loss in chunks of tokens: the whole logits never exist (tensor_parallel.output_layer)
        return self.output_projection(self.final_norm(x), labels)


def learned_positions(weight: torch.Tensor, seq: int, documents: Optional[Documents]) -> torch.Tensor:
    """GPT-2's position embeddings of a row: (seq, hidden), or (batch, seq, hidden) where documents restart them."""
    positions = None if documents is None else documents.position_ids
    return weight[:seq] if positions is None else F.embedding(positions, weight)
