"""A step plan localised to this tensor-parallel rank, and the holder layers read it from.

A plan holds global indices. A TP rank holds a contiguous block of key/value groups (with their query heads)
and of MLP columns, so its part of a layer plan is the indices inside its block minus the block's offset;
balanced sampling puts equal counts in every block. The 1/p scales stay the global realised ratios, so the
all-reduced sum of the ranks' scaled partial outputs is the single-process output.

Pipeline stages cannot receive the plan through the forward call (DeepSpeed's PipelineEngine passes only
activations between layers), so they read it from a `PlanHolder` that the training loop sets, after the plan
broadcast, before `engine.train_batch()` / `engine.eval_batch()`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from est_megatron.config import ModelConfig
from est_megatron.subnet.plan import LayerPlan, StepPlan


def _in_block(index: Optional[torch.Tensor], per_rank: int, tp_rank: int) -> Optional[torch.Tensor]:
    if index is None:
        return None
    start = tp_rank * per_rank
    return index[(index >= start) & (index < start + per_rank)] - start


def localize_layer(layer: LayerPlan, cfg: ModelConfig, tp_rank: int, tp_size: int) -> LayerPlan:
    """This TP rank's part of a layer plan, in local indices (heads, key/value groups, MLP columns)."""
    if tp_size == 1 or (layer.query_heads is None and layer.mlp_columns is None):
        return layer
    return dataclasses.replace(
        layer,
        query_heads=_in_block(layer.query_heads, cfg.num_attention_heads // tp_size, tp_rank),
        kv_heads=_in_block(layer.kv_heads, cfg.num_query_groups // tp_size, tp_rank),
        mlp_columns=_in_block(layer.mlp_columns, cfg.ffn_hidden_size // tp_size, tp_rank))


def localize_plan(plan: Optional[StepPlan], cfg: ModelConfig, tp_rank: int, tp_size: int) -> Optional[StepPlan]:
    if plan is None or tp_size == 1:
        return plan
    return StepPlan(plan.step, plan.stage, tuple(localize_layer(layer, cfg, tp_rank, tp_size)
                                                 for layer in plan.layers), plan.rates)


class PlanHolder:
    """The current step's plan, localised once for this TP rank (the same objects for every micro-batch, which
    the attention and MLP index caches key on)."""

    def __init__(self, cfg: ModelConfig, tp_rank: int = 0, tp_size: int = 1):
        self.cfg, self.tp_rank, self.tp_size = cfg, tp_rank, tp_size
        self.plan: Optional[StepPlan] = None  # global indices, as broadcast
        self.local: Optional[StepPlan] = None

    def set(self, plan: Optional[StepPlan]) -> None:
        if plan is not self.plan:
            self.plan = plan
            self.local = localize_plan(plan, self.cfg, self.tp_rank, self.tp_size)

    def layer(self, index: int) -> Optional[LayerPlan]:
        return None if self.local is None else self.local.layers[index]
