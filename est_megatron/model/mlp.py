"""Feed-forward block (SwiGLU for Llama, GELU for GPT-2) that can run any sampled subset of its columns.

Llama's gate and up projections share one weight, [gate; up], so a sampled column set is one row gather and one
matmul; the down projection, stored input-major (RowParallelLinear), gathers the same columns as rows. The sampled
output is scaled by the plan's mlp_scale (1/p_M as in paper eq. 6 under --est-rescale, else 1), folded into the
gathered down weight.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from est_megatron.model.gather import gather
from est_megatron.subnet.plan import LayerPlan
from est_megatron.tensor_parallel.mappings import (RowParallelLinear, copy_to_tensor_parallel_region,
                                                  row_parallel_linear)


class MLP(nn.Module):
    def __init__(self, config, ffn_size: Optional[int] = None, tp_group=None):
        super().__init__()
        self.tp_group = tp_group  # tensor parallel: column-parallel up, row-parallel down (None: one rank)
        self.gated = config.is_llama
        self.ffn_size = ffn_size or config.ffn_hidden_size  # local columns (fewer under tensor parallelism)
        up_rows = 2 * self.ffn_size if self.gated else self.ffn_size
        self.up = nn.Linear(config.hidden_size, up_rows, bias=config.bias)
        self.down = RowParallelLinear(self.ffn_size, config.hidden_size, bias=config.bias)
        self._index_cache = (None, None)

    def rows_of(self, columns: torch.Tensor) -> torch.Tensor:
        """Rows of the fused up weight ([gate; up] for Llama) that hold these intermediate columns."""
        return torch.cat([columns, columns + self.ffn_size]) if self.gated else columns

    def up_rows(self, plan: LayerPlan) -> torch.Tensor:
        """`rows_of` the plan's columns, computed once per plan (in the graph of a compiled layer, where a cache
        keyed on the plan object would recompile every step)."""
        if torch.compiler.is_compiling():
            return self.rows_of(plan.mlp_columns)
        if self._index_cache[0] is not plan:
            self._index_cache = (plan, self.rows_of(plan.mlp_columns))
        return self._index_cache[1]

    def trained_slices(self, plan: Optional[LayerPlan]) -> list:
        """What `plan` trains here, for the sparse optimizer step: (parameter, axis, sorted indices along the axis;
        None = all of it). The sampled columns' up rows and down rows; the down bias is not per column."""
        rows = columns = None
        if plan is not None and plan.mlp_columns is not None:
            columns = plan.mlp_columns
            rows = self.rows_of(columns)
        slices = [(self.up.weight, 0, rows), (self.down.weight, 0, columns)]
        if self.up.bias is not None:
            slices += [(self.up.bias, 0, rows), (self.down.bias, None, None)]
        return slices

    def forward(self, x: torch.Tensor, plan: Optional[LayerPlan] = None) -> torch.Tensor:
        x = copy_to_tensor_parallel_region(x, self.tp_group)
        if plan is None or plan.mlp_columns is None:  # dense fast path
            up_w, up_b, down_w = self.up.weight, self.up.bias, self.down.weight
        else:
            rows = self.up_rows(plan)
            up_w = gather(self.up.weight, 0, rows)
            up_b = None if self.up.bias is None else gather(self.up.bias, 0, rows)
            down_w = gather(self.down.weight, 0, plan.mlp_columns, plan.mlp_scale)
        hidden = F.linear(x, up_w, up_b)
        if self.gated:
            gate, up = hidden.chunk(2, dim=-1)
            hidden = F.silu(gate) * up
        else:
            hidden = F.gelu(hidden, approximate="tanh")
        # the output bias is not part of the column sum: it is never scaled (and is added once under TP)
        return row_parallel_linear(hidden, down_w, self.down.bias, self.tp_group)
