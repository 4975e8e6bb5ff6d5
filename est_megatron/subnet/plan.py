"""The per-step subnetwork plan: which layers run and, in each, which heads and MLP columns.

A plan is defined on the global model and drawn by a pure function of (seed, step), so resuming replays the same
plans and every parallel layout trains the same subnetworks. Sampling is balanced: equal counts inside every
key/value group (or stratum of groups), every stratum of MLP columns and every stratum of layers, so tensor and
pipeline ranks do equal work. A plan packs into one int64 tensor of fixed capacity for the broadcast.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.subnet.schedule import Rates, ResolvedSchedule

PACK_VERSION = 2
HEADER_LEN = 8  # version, step, stage, num_layers, n_query, n_kv, n_columns, explicit-scales flag


@dataclass(frozen=True)
class LayerPlan:
    """One layer's part of a plan. An index tensor of None means "all" (the dense fast path)."""

    active: bool = True
    query_heads: Optional[torch.Tensor] = None  # sorted query-head indices
    kv_heads: Optional[torch.Tensor] = None  # sorted key/value-head indices
    mlp_columns: Optional[torch.Tensor] = None  # sorted MLP intermediate columns
    head_scale: float = 1.0  # 1 / realised p_heads under SubnetConfig.rescale, else 1.0
    mlp_scale: float = 1.0  # 1 / realised p_mlp under SubnetConfig.rescale, else 1.0
    residual_scale: float = 1.0  # multiplies both residual branches of an active layer (RAPTR's option)

    def to(self, device) -> "LayerPlan":
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return LayerPlan(self.active, move(self.query_heads), move(self.kv_heads), move(self.mlp_columns),
                         self.head_scale, self.mlp_scale, self.residual_scale)


DENSE_LAYER = LayerPlan()


@dataclass(frozen=True)
class StepPlan:
    """The subnetwork of one optimizer step, shared by all its micro-batches and all ranks."""

    step: int
    stage: int
    layers: Tuple[LayerPlan, ...]
    rates: Rates  # realised (p_heads, p_mlp, p_layers)

    @property
    def is_dense(self) -> bool:
        return self.rates == (1.0, 1.0, 1.0)

    @property
    def active_layers(self) -> Tuple[int, ...]:
        return tuple(i for i, layer in enumerate(self.layers) if layer.active)

    def to(self, device) -> "StepPlan":
        return StepPlan(self.step, self.stage, tuple(layer.to(device) for layer in self.layers), self.rates)

    def pack(self, model: ModelConfig) -> torch.Tensor:
        """One int64 tensor of `packed_capacity(model)` entries; `unpack` inverts it."""
        first = self.layers[0]
        count = lambda t: 0 if t is None else t.numel()  # noqa: E731
        n_q, n_kv, n_col = count(first.query_heads), count(first.kv_heads), count(first.mlp_columns)
        scales = [(layer.head_scale, layer.mlp_scale, layer.residual_scale) for layer in self.layers]
        explicit = any(triple != (1.0, 1.0, 1.0) for triple in scales)  # unpack assumes unit scales otherwise
        parts = [torch.tensor([PACK_VERSION, self.step, self.stage, len(self.layers), n_q, n_kv, n_col,
                               int(explicit)]),
                 torch.tensor([int(layer.active) for layer in self.layers])]
        for attr, n in (("query_heads", n_q), ("kv_heads", n_kv), ("mlp_columns", n_col)):
            if n:
                parts.append(torch.cat([getattr(layer, attr).cpu() for layer in self.layers]))
        if explicit:  # float64 bit patterns carried in the int64 tensor
            parts.append(torch.tensor(scales, dtype=torch.float64).view(torch.int64).reshape(-1))
        flat = torch.cat(parts).to(torch.int64)
        out = torch.zeros(packed_capacity(model), dtype=torch.int64)
        out[: flat.numel()] = flat
        return out

    def checksum(self, model: ModelConfig) -> int:
        """A 62-bit digest of the packed plan, for cross-rank consistency checks."""
        digest = hashlib.sha256(self.pack(model).numpy().tobytes()).digest()
        return int.from_bytes(digest[:8], "little") >> 2


def packed_capacity(model: ModelConfig) -> int:
    """Fixed size of a packed plan: header, layer flags, room for every index and three scales of every layer."""
    per_layer = 1 + model.num_attention_heads + model.num_query_groups + model.ffn_hidden_size + 3
    return HEADER_LEN + model.num_layers * per_layer


def unpack(packed: torch.Tensor, model: ModelConfig) -> StepPlan:
    """Rebuild a StepPlan from `StepPlan.pack` output (on any device; the plan comes back on CPU)."""
    packed = packed.detach().cpu()
    version, step, stage, num_layers, n_q, n_kv, n_col, explicit = packed[:HEADER_LEN].tolist()
    if version != PACK_VERSION or num_layers != model.num_layers:
        raise ValueError(f"packed plan has version {version} and {num_layers} layers; expected version "
                         f"{PACK_VERSION} and {model.num_layers} layers")
    pos = HEADER_LEN
    active = packed[pos: pos + num_layers].tolist()
    pos += num_layers
    columns = {}
    for attr, n in (("query_heads", n_q), ("kv_heads", n_kv), ("mlp_columns", n_col)):
        if n:
            columns[attr] = packed[pos: pos + n * num_layers].view(num_layers, n)
            pos += n * num_layers
        else:
            columns[attr] = None
    if explicit:
        scales = packed[pos: pos + 3 * num_layers].clone().view(torch.float64).view(num_layers, 3).tolist()
    else:
        scales = [(1.0, 1.0, 1.0)] * num_layers
    layers = tuple(
        LayerPlan(bool(active[i]),
                  *(None if columns[a] is None else columns[a][i].clone()
                    for a in ("query_heads", "kv_heads", "mlp_columns")),
                  *scales[i])
        for i in range(num_layers))
    rates = (n_q / model.num_attention_heads if n_q else 1.0, n_col / model.ffn_hidden_size if n_col else 1.0,
             sum(active) / num_layers)
    return StepPlan(step, stage, layers, rates)


def balanced_count(rate: float, stratum_size: int) -> int:
    """How many of `stratum_size` items a stratum keeps at `rate`: rounded half up, at least one."""
    return min(stratum_size, max(1, int(np.floor(rate * stratum_size + 0.5))))


def _draw(rng: np.random.Generator, batch: int, strata: int, size: int, keep: int) -> np.ndarray:
    """`batch` independent draws of `keep` items from each of `strata` blocks of `size`; sorted global indices."""
    order = rng.random((batch, strata, size)).argsort(axis=-1)[..., :keep]
    order += (np.arange(strata) * size)[None, :, None]
    return np.sort(order.reshape(batch, strata * keep), axis=-1)


class PlanSampler:
    """Draws the EST plan of any step as a pure function of (seed, step)."""

    def __init__(self, model: ModelConfig, subnet: SubnetConfig, schedule: ResolvedSchedule, seed: int):
        self.model = model
        self.subnet = subnet.resolved(model)
        self.schedule = schedule
        self.seed = seed

    def counts(self, rates: Rates) -> Tuple[int, int, int]:
        """(query heads, MLP columns, layers) kept at `rates`, after balanced rounding."""
        m, s = self.model, self.subnet
        p_heads, p_mlp, p_layers = rates
        if p_heads >= 1.0:
            n_q = m.num_attention_heads
        elif s.whole_groups:
            per = m.num_query_groups // s.head_strata
            n_q = balanced_count(p_heads, per) * s.head_strata * m.heads_per_group
        else:
            n_q = balanced_count(p_heads, m.heads_per_group) * m.num_query_groups
        n_col = m.ffn_hidden_size if p_mlp >= 1.0 else \
            balanced_count(p_mlp, m.ffn_hidden_size // s.mlp_strata) * s.mlp_strata
        n_layers = m.num_layers if p_layers >= 1.0 else \
            balanced_count(p_layers, m.num_layers // s.layer_strata) * s.layer_strata
        return n_q, n_col, n_layers

    def plan(self, step: int) -> StepPlan:
        m, s = self.model, self.subnet
        stage = self.schedule.stage_at(step)
        rates = self.schedule.rates[stage]
        n_q, n_col, n_layers = self.counts(rates)
        num_layers = m.num_layers
        rng = np.random.default_rng([self.seed, step])
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(torch.int64)  # noqa: E731

        query = kv = None
        if n_q < m.num_attention_heads:
            g = m.heads_per_group
            if s.whole_groups:
                per = m.num_query_groups // s.head_strata
                kv = _draw(rng, num_layers, s.head_strata, per, n_q // (g * s.head_strata))
                query = (kv[..., None] * g + np.arange(g)).reshape(num_layers, -1)
            else:
                query = _draw(rng, num_layers, m.num_query_groups, g, n_q // m.num_query_groups)
        columns = None
        if n_col < m.ffn_hidden_size:
            columns = _draw(rng, num_layers, s.mlp_strata, m.ffn_hidden_size // s.mlp_strata, n_col // s.mlp_strata)
        active = np.ones(num_layers, dtype=bool)
        if n_layers < num_layers:
            per = num_layers // s.layer_strata
            active[:] = False
            active[_draw(rng, 1, s.layer_strata, per, n_layers // s.layer_strata)[0]] = True

        head_scale = m.num_attention_heads / n_q if s.rescale else 1.0
        mlp_scale = m.ffn_hidden_size / n_col if s.rescale else 1.0
        layers = tuple(
            LayerPlan(bool(active[i]),
                      None if query is None else as_tensor(query[i]),
                      None if kv is None else as_tensor(kv[i]),
                      None if columns is None else as_tensor(columns[i]),
                      head_scale, mlp_scale)
            for i in range(num_layers))
        return StepPlan(step, stage, layers, (n_q / m.num_attention_heads, n_col / m.ffn_hidden_size,
                                              n_layers / num_layers))
