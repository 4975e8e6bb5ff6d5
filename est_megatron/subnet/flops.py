"""FLOPs of a training step for a subnetwork plan: the exact count and the paper's simplified formula.

The exact count is what MFU and "FLOPs saved" are measured with, so it follows the code in `est_megatron.model`:

- Only matrix multiplications count; a (m x k)(k x n) product is 2mkn FLOPs. Norms, activations, softmax, RoPE,
  biases, residual adds and the 1/p scales are elementwise and left out, as in Megatron's formula.
- The embedding lookup (token and GPT-2 position) is a gather: 0 FLOPs. So are the plan's index_select of
  weight rows/columns and the scatter of their gradients.
- Causal attention counts the full s x s score matrix (QK^T and attention x V), as Megatron's formula does,
  although fused kernels skip the masked half: figures stay comparable with Megatron's and the paper's MFU.
- Backward is 2x forward for every matmul (gradient of the input and of the weight); the input gradient is
  needed everywhere because the embedding gets a gradient. So a step is 3x its forward.
- A skipped layer is the identity: 0 FLOPs forward and backward. A sampled layer runs its gathered, smaller
  matrices: Q and O over the kept query heads, K and V over the kept key/value heads (all of them when heads
  are sampled inside every GQA group), MLP over the kept columns. Embeddings and the LM head are never sampled,
  which is why the exact saving is a little below the paper's.
- The vocabulary is the unpadded `vocab_size`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Union

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.subnet.plan import LayerPlan, PlanSampler, StepPlan
from est_megatron.subnet.schedule import Rates, ResolvedSchedule

BACKWARD_FACTOR = 2  # backward matmuls per forward matmul: input gradient and weight gradient


@dataclass(frozen=True)
class SubnetCounts:
    """Realised sizes of a uniform plan: query heads, key/value heads and MLP columns per active layer."""

    query_heads: int
    kv_heads: int
    mlp_columns: int
    layers: int

    @classmethod
    def dense(cls, model: ModelConfig) -> "SubnetCounts":
        return cls(model.num_attention_heads, model.num_query_groups, model.ffn_hidden_size, model.num_layers)

    @classmethod
    def from_sampler(cls, sampler: PlanSampler, rates: Rates) -> "SubnetCounts":
        """The counts `sampler.plan` uses at `rates`; key/value heads shrink only when whole groups are sampled."""
        n_q, n_col, n_layers = sampler.counts(rates)
        m = sampler.model
        n_kv = n_q // m.heads_per_group if sampler.subnet.whole_groups else m.num_query_groups
        return cls(n_q, n_kv, n_col, n_layers)

    def rates(self, model: ModelConfig) -> Rates:
        return (self.query_heads / model.num_attention_heads, self.mlp_columns / model.ffn_hidden_size,
                self.layers / model.num_layers)


def _layer_forward(model: ModelConfig, n_q: int, n_kv: int, n_col: int, batch: int, seq: int) -> int:
    """Forward matmul FLOPs of one Transformer layer over `batch` sequences of `seq` tokens."""
    d, hd, tokens = model.hidden_size, model.head_dim, batch * seq
    qkv = 2 * tokens * d * (n_q + 2 * n_kv) * hd
    scores = 2 * batch * n_q * seq * seq * hd  # QK^T, every query head against its group's key head
    context = 2 * batch * n_q * seq * seq * hd  # attention probabilities x V
    out = 2 * tokens * n_q * hd * d
    mlp = 2 * tokens * d * n_col * (3 if model.is_llama else 2)  # SwiGLU: gate, up, down; GELU: up, down
    return qkv + scores + context + out + mlp


def _head_forward(model: ModelConfig, batch: int, seq: int) -> int:
    """Forward FLOPs outside the layers: the LM head (embedding lookups are gathers, 0 FLOPs)."""
    return 2 * batch * seq * model.hidden_size * model.vocab_size


def _layer_plan_forward(model: ModelConfig, layer: LayerPlan, batch: int, seq: int) -> int:
    if not layer.active:
        return 0
    n_q = model.num_attention_heads if layer.query_heads is None else layer.query_heads.numel()
    if layer.kv_heads is not None:
        n_kv = layer.kv_heads.numel()
    else:  # heads sampled inside every group keep every key/value head
        n_kv = model.num_query_groups
    n_col = model.ffn_hidden_size if layer.mlp_columns is None else layer.mlp_columns.numel()
    return _layer_forward(model, n_q, n_kv, n_col, batch, seq)


def step_flops(model: ModelConfig, plan: Union[StepPlan, SubnetCounts, None], batch: int, seq: int) -> int:
    """Forward+backward FLOPs of one micro-batch of `batch` x `seq` tokens under `plan` (None = dense).

    A StepPlan is counted layer by layer (skipped layers cost 0), so any plan, uniform or not, is exact.
    """
    if plan is None:
        plan = SubnetCounts.dense(model)
    if isinstance(plan, StepPlan):
        layers = sum(_layer_plan_forward(model, layer, batch, seq) for layer in plan.layers)
    else:
        layers = plan.layers * _layer_forward(model, plan.query_heads, plan.kv_heads, plan.mlp_columns, batch, seq)
    return (1 + BACKWARD_FACTOR) * (layers + _head_forward(model, batch, seq))


def dense_step_flops(model: ModelConfig, batch: int, seq: int) -> int:
    """Forward+backward FLOPs of one dense micro-batch: the denominator of every saving and of MFU."""
    return step_flops(model, None, batch, seq)


def paper_relative_cost(model: ModelConfig, rates: Rates) -> float:
    """Paper eq. 8: C = N_L p_L (p_H C_H + p_M C_M), relative to the dense N_L (C_H + C_M).

    C_H and C_M are the per-token matmul costs of one layer's MHA (Q, K, V, O weights) and MLP, from the
    model's shape; like the paper this neglects everything else (attention scores, the LM head). With
    p_H = p_M the shape cancels out.
    """
    p_heads, p_mlp, p_layers = rates
    d, kv_dim = model.hidden_size, model.num_query_groups * model.head_dim
    cost_mha = d * (2 * d + 2 * kv_dim)
    cost_mlp = d * model.ffn_hidden_size * (3 if model.is_llama else 2)
    return p_layers * (p_heads * cost_mha + p_mlp * cost_mlp) / (cost_mha + cost_mlp)


@dataclass(frozen=True)
class StageCost:
    """One schedule stage: its steps, nominal and realised rates, and its step cost relative to dense."""

    stage: int
    start: int
    end: int
    steps: int
    nominal: Rates
    realised: Rates
    counts: SubnetCounts
    paper_cost: float  # eq. 8 with the nominal rates
    exact_cost: float  # exact FLOPs with the realised counts


@dataclass(frozen=True)
class ScheduleSavings:
    """A whole schedule: per-stage costs and the fraction of dense training cost saved, both ways."""

    stages: List[StageCost]
    dense_step_flops: int
    batch: int
    seq: int

    @property
    def train_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def paper_saving(self) -> float:
        return 1.0 - sum(s.steps * s.paper_cost for s in self.stages) / self.train_steps

    @property
    def exact_saving(self) -> float:
        return 1.0 - sum(s.steps * s.exact_cost for s in self.stages) / self.train_steps

    def to_dict(self) -> dict:
        return dict(stages=[asdict(s) for s in self.stages], dense_step_flops=self.dense_step_flops,
                    batch=self.batch, seq=self.seq, train_steps=self.train_steps,
                    paper_saving=self.paper_saving, exact_saving=self.exact_saving)


def schedule_savings(model: ModelConfig, schedule: ResolvedSchedule, subnet: Optional[SubnetConfig] = None,
                     batch: int = 1, seq: Optional[int] = None) -> ScheduleSavings:
    """Cost of every stage of `schedule` and the total saving vs dense training, by eq. 8-10 and exactly.

    Realised counts come from `PlanSampler.counts`, i.e. after the balanced rounding the run really uses.
    `seq` defaults to the model's context length; `batch` cancels out of every ratio.
    """
    seq = model.max_position_embeddings if seq is None else seq
    sampler = PlanSampler(model, subnet or SubnetConfig(), schedule, seed=0)
    dense = dense_step_flops(model, batch, seq)
    stages = []
    for i, rates in enumerate(schedule.rates):
        counts = SubnetCounts.from_sampler(sampler, rates)
        stages.append(StageCost(
            stage=i + 1, start=schedule.stage_start(i), end=schedule.ends[i], steps=schedule.stage_steps(i),
            nominal=tuple(rates), realised=counts.rates(model), counts=counts,
            paper_cost=paper_relative_cost(model, rates),
            exact_cost=step_flops(model, counts, batch, seq) / dense))
    return ScheduleSavings(stages=stages, dense_step_flops=dense, batch=batch, seq=seq)
