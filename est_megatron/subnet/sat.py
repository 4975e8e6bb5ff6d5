"""SAT (Ma et al. 2024): omit the least important attention heads and MLP columns, with a ladder omission rate.

Per step: (1) a neuron-importance score for every head and MLP column from the current micro-batch's inputs,
(2) a balanced selection keeping a fraction 1 - r of them, (3) the step runs that subnetwork through the same
gather path as EST (`LayerPlan.query_heads` / `mlp_columns`), so it is exactly as fast.

Scores. A "neuron" is one output row j of a linear weight W (our `nn.Linear` layout, out x in), w_j its weights,
X the layer's normed input (tokens x features):
    uniform   s_j = 1                             (random omission, like dropout)
    magnitude s_j = ||w_j||_2
    wanda     s_j = sum_i |w_ij| * ||X[:, i]||_2
    maxip     s_j = |mean_tokens(X) . w_j|        (biases are not part of the score)
A query head's score sums its neurons over its Q rows and its group's K and V rows (the K/V part is shared by
the group, so inside a group only Q ranks heads); a whole key/value group (MHA, or --est-whole-groups) sums all
its Q, K, V rows. An MLP column sums its gate and up rows (GPT-2: its up row). X is the output of the layer's
attention norm (Q/K/V) or MLP norm (gate/up).

Inputs X, "on the current micro-batch before the step's computation": a no-grad dense forward of the first
`prepass_seqs` sequences of the step's first micro-batch records per layer the token-mean and the per-feature
L2 norm of both normed inputs (forward hooks on the norms; the forward stops after the last one is taken, so the
last MLP and the LM head never run; under ZeRO-3 it runs to the end, see `layer_input_stats`). With one sequence
out of a global batch of B that costs about 1/(3B) of a dense step plus the scoring matvecs (2 FLOPs per
QKV/gate/up weight); `importance_flops` counts it for the logs.

Selection keeps (1 - r) of the query heads in every key/value group (of the groups in every head stratum in
whole-group mode) and of the columns in every MLP stratum — EST's balanced counts, so tensor-parallel ranks do
equal work — either top-k, or sampling without replacement from softmax(s / T) done with the Gumbel-top-k
trick (top-k of s/T + Gumbel noise has exactly the sequential without-replacement distribution). The uniform
metric always samples (its scores tie). Omitted outputs are not rescaled (paper eq. 9-10: the kept neurons are
the important ones); `rescale` applies EST's 1/p instead.

LORS (Ladder Omission Rate Scheduler). T = train steps, t_d = decay start, N = ladders, r_max = maximum rate:
    r(t) = r_max                           for t < t_d
    r(t) = r_max * (N - k(t)) / N           for t >= t_d, where
    k(t) = max{k in 1..N : (k - 1) k (T - t_d) <= N (N + 1) (t - t_d)}
i.e. at t_d the rate drops by r_max / N and then N - 1 more times; plateau k lasts 2k (T - t_d) / (N (N + 1))
steps (lengths grow linearly, 1:2:...:N), and the last plateau, from t_d + (T - t_d)(N - 1)/(N + 1) to T, is
dense (r = 0). Defaults r_max = 0.5, t_d = T / 2, N = 4, T = 1 (temperature): r = 0.5 until 0.5T, 0.375 until
0.55T, 0.25 until 0.65T, 0.125 until 0.8T, then 0. N = 0 keeps r_max throughout (no LORS).

One plan for every rank: the planner runs where the step's first micro-batch is (global rank 0 in the training
loop) and the plan is broadcast packed, like EST's; the Gumbel noise is a pure function of (seed, step).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.errors import UsageError
from est_megatron.subnet.flops import dense_step_flops
from est_megatron.subnet.method import SubnetMethod
from est_megatron.subnet.plan import DENSE_LAYER, LayerPlan, PlanSampler, StepPlan
from est_megatron.subnet.schedule import ResolvedSchedule

METRICS = ("maxip", "wanda", "magnitude", "uniform")
SELECTIONS = ("sampling", "topk")


@dataclass(frozen=True)
class SatConfig:
    metric: str = "maxip"
    selection: str = "sampling"
    temperature: float = 1.0
    r_max: float = 0.5
    decay_start: float = 0.5  # t_d: a fraction of the run when <= 1, else an absolute step
    ladders: int = 4  # 0: constant r_max, no LORS
    rescale: bool = False
    prepass_seqs: int = 1

    def validate(self) -> "SatConfig":
        if self.metric not in METRICS:
            raise UsageError(f"--sat-metric {self.metric!r} is unknown; choose one of {', '.join(METRICS)}")
        if self.selection not in SELECTIONS:
            raise UsageError(f"--sat-selection {self.selection!r} is unknown; choose one of {', '.join(SELECTIONS)}")
        if not self.temperature > 0:
            raise UsageError(f"--sat-temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.r_max < 1.0:
            raise UsageError(f"--sat-r-max must be in [0, 1), got {self.r_max}")
        if self.ladders < 0 or self.decay_start < 0:
            raise UsageError("--sat-ladders and --sat-decay-start must not be negative")
        if self.prepass_seqs < 1:
            raise UsageError(f"--sat-prepass-seqs must be at least 1, got {self.prepass_seqs}")
        return self


def decay_start_step(cfg: SatConfig, train_steps: int) -> int:
    return int(round(cfg.decay_start * train_steps)) if cfg.decay_start <= 1 else int(cfg.decay_start)


def lors_rate(step: int, train_steps: int, r_max: float, t_d: int, ladders: int) -> float:
    """The omission rate r(step) of the module docstring's formula (integer arithmetic: exact at boundaries)."""
    if ladders == 0 or step < t_d:
        return r_max
    span, n = max(train_steps - t_d, 1), ladders
    k = 1
    while k < n and k * (k + 1) * span <= n * (n + 1) * (step - t_d):
        k += 1
    return r_max * (n - k) / n


def lors_ladder(step: int, train_steps: int, t_d: int, ladders: int) -> int:
    """0 before t_d, else k(t): the plan's `stage`, so logs show each ladder."""
    if ladders == 0 or step < t_d:
        return 0
    r = lors_rate(step, train_steps, 1.0, t_d, ladders)
    return int(round((1.0 - r) * ladders))


def lors_schedule(cfg: SatConfig, train_steps: int) -> ResolvedSchedule:
    """LORS as a staged schedule with one stage per ladder that has steps, rates (1 - r, 1 - r, 1): what the
    FLOPs model (`est_megatron.subnet.flops.schedule_savings`) and tools/est_plan.py cost. Found by evaluating
    `lors_rate` at every step, so it is exactly the training run's rates."""
    t_d = decay_start_step(cfg, train_steps)
    ends, rates = [], []
    for step in range(train_steps):
        keep = 1.0 - lors_rate(step, train_steps, cfg.r_max, t_d, cfg.ladders)
        if not rates or rates[-1][0] != keep:
            if rates:
                ends.append(step)
            rates.append((keep, keep, 1.0))
    ends.append(train_steps)
    return ResolvedSchedule(tuple(ends), tuple(rates), name=f"LORS r_max={cfg.r_max:g} t_d={t_d} N={cfg.ladders}")


# ---- importance scores ----

@dataclass
class InputStats:
    """Token statistics of one normed layer input: its token mean and per-feature L2 norm over tokens."""

    mean: torch.Tensor
    l2: torch.Tensor


def neuron_scores(weight: torch.Tensor, stats: Optional[InputStats], metric: str) -> torch.Tensor:
    """One score per output row of `weight` (out x in), in fp32."""
    w = weight.detach().float()
    if metric == "uniform":
        return torch.ones(w.shape[0], device=w.device)
    if metric == "magnitude":
        return w.norm(dim=1)
    if metric == "wanda":
        return w.abs() @ stats.l2.to(w.device, torch.float32)
    if metric == "maxip":
        return (w @ stats.mean.to(w.device, torch.float32)).abs()
    raise UsageError(f"SAT metric {metric!r} is unknown; choose one of {', '.join(METRICS)}")


def head_scores(model: ModelConfig, qkv_weight: torch.Tensor, stats: Optional[InputStats],
                metric: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(query-head scores (heads,), key/value-group scores (groups,)) from the group-major fused QKV weight."""
    g = model.heads_per_group
    rows = neuron_scores(qkv_weight, stats, metric).view(model.num_query_groups, g + 2, model.head_dim).sum(-1)
    q, kv = rows[:, :g], rows[:, g] + rows[:, g + 1]
    return (q + kv[:, None]).reshape(-1), q.sum(1) + kv


def column_scores(model: ModelConfig, up_weight: torch.Tensor, stats: Optional[InputStats],
                  metric: str) -> torch.Tensor:
    """MLP column scores (ffn,): gate row + up row (Llama's [gate; up] weight), or the up row (GPT-2)."""
    rows = neuron_scores(up_weight, stats, metric)
    return rows[: model.ffn_hidden_size] + rows[model.ffn_hidden_size:] if model.is_llama else rows


class _StopForward(Exception):
    pass


def partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 partitions the model's parameters (DeepSpeed marks them with `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def layer_input_stats(model: torch.nn.Module, input_ids: torch.Tensor) -> List[Tuple[InputStats, InputStats]]:
    """Per layer (attention-input stats, MLP-input stats) of a no-grad dense forward of `input_ids`.

    The forward stops once the last statistic is taken, except under ZeRO-3: its hooks gather each module's
    parameters before and release them after the module's forward, and a forward abandoned midway leaves
    parameters marked in use ("Cannot free a ZeRO-3 parameter while it is still active") at the next step."""
    stats, handles = {}, []
    stop_early = not partitioned(model)

    def hook(key, last):
        def record(module, args, output):
            x = output.detach().float().reshape(-1, output.shape[-1])
            stats[key] = InputStats(x.mean(0), x.norm(dim=0))
            if last and stop_early:
                raise _StopForward
        return record

    layers = model.layers
    for i, layer in enumerate(layers):
        handles.append(layer.attn_norm.register_forward_hook(hook((i, 0), False)))
        handles.append(layer.mlp_norm.register_forward_hook(hook((i, 1), i == len(layers) - 1)))
    try:  # eagerly under --compile: hooks that change every step and the pre-pass batch would recompile the layers
        with torch.no_grad(), torch.compiler.set_stance("force_eager"):
            model(input_ids)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return [(stats[(i, 0)], stats[(i, 1)]) for i in range(len(layers))]


def importance_flops(model: ModelConfig, prepass_seqs: int, seq: int, metric: str, whole_forward: bool = False) -> int:
    """FLOPs of one step's importance computation: the stats pre-pass forward and the scoring matvecs
    (`whole_forward`: the pre-pass ran to the end, as under ZeRO-3)."""
    if metric == "uniform":
        return 0
    scoring = model.num_layers * 2 * model.hidden_size * (model.qkv_rows + model.up_rows)
    if metric == "magnitude":
        return scoring
    # the pre-pass is a dense forward without the LM head and the last MLP (the forward stops before them)
    tokens = prepass_seqs * seq
    forward = dense_step_flops(model, prepass_seqs, seq) // 3
    if whole_forward:
        return scoring + forward
    lm_head = 2 * tokens * model.hidden_size * model.vocab_size
    last_mlp = 2 * tokens * model.hidden_size * model.ffn_hidden_size * (3 if model.is_llama else 2)
    return scoring + forward - lm_head - last_mlp


# ---- selection ----

def select(scores: torch.Tensor, keep: int, selection: str, temperature: float,
           rng: Optional[np.random.Generator]) -> torch.Tensor:
    """Indices (sorted, global) keeping `keep` items in every row of `scores` (strata x size)."""
    strata, size = scores.shape
    keys = scores.double().cpu()
    if selection == "sampling":
        keys = keys / temperature + torch.from_numpy(rng.gumbel(size=(strata, size)))
    elif selection != "topk":
        raise UsageError(f"SAT selection {selection!r} is unknown; choose one of {', '.join(SELECTIONS)}")
    chosen = keys.topk(keep, dim=1).indices + torch.arange(strata)[:, None] * size
    return chosen.reshape(-1).sort().values.to(torch.int64)


@contextlib.contextmanager
def _gathered(params):
    """ZeRO-3 keeps parameters partitioned: gather them for reading; a no-op otherwise."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed
        with deepspeed.zero.GatheredParameters(params):
            yield
    else:
        yield


class SatPlanner:
    """`plan(step, model, input_ids) -> StepPlan`: scores on the micro-batch, selection, LORS rate."""

    def __init__(self, model: ModelConfig, subnet: SubnetConfig, cfg: SatConfig, train_steps: int, seed: int):
        self.model = model
        self.cfg = cfg.validate()
        self.sampler = PlanSampler(model, subnet, None, seed)  # for EST's balanced counts
        self.subnet = self.sampler.subnet
        self.train_steps = train_steps
        self.t_d = decay_start_step(cfg, train_steps)
        self.seed = seed

    def rate(self, step: int) -> float:
        return lors_rate(step, self.train_steps, self.cfg.r_max, self.t_d, self.cfg.ladders)

    def counts(self, step: int) -> Tuple[int, int]:
        """(query heads, MLP columns) kept at step's rate, EST's balanced rounding."""
        r = self.rate(step)
        n_q, n_col, _ = self.sampler.counts((1.0 - r, 1.0 - r, 1.0))
        return n_q, n_col

    def is_dense(self, step: int) -> bool:
        return self.counts(step) == (self.model.num_attention_heads, self.model.ffn_hidden_size)

    def scores(self, step: int, module: torch.nn.Module, input_ids: Optional[torch.Tensor]) -> Optional[list]:
        """Per layer (query-head, group, column) scores; None on a dense step. Collective under ZeRO-3."""
        if self.is_dense(step):
            return None
        m, metric = self.model, self.cfg.metric
        stats = None
        if metric in ("wanda", "maxip"):
            stats = layer_input_stats(module, input_ids[: self.cfg.prepass_seqs])
        out = []
        for i, layer in enumerate(module.layers):
            attn_stats, mlp_stats = stats[i] if stats is not None else (None, None)
            with _gathered([layer.attn.qkv.weight, layer.mlp.up.weight]):
                heads, groups = head_scores(m, layer.attn.qkv.weight, attn_stats, metric)
                columns = column_scores(m, layer.mlp.up.weight, mlp_stats, metric)
            out.append((heads.cpu(), groups.cpu(), columns.cpu()))
        return out

    def select_plan(self, step: int, scores: Optional[list]) -> StepPlan:
        """The step's plan from `scores` (of `scores(step, ...)`): balanced top-k or sampling."""
        m, s, cfg = self.model, self.subnet, self.cfg
        stage = lors_ladder(step, self.train_steps, self.t_d, cfg.ladders)
        if self.is_dense(step):
            return StepPlan(step, stage, (DENSE_LAYER,) * m.num_layers, (1.0, 1.0, 1.0))
        n_q, n_col = self.counts(step)
        selection = "sampling" if cfg.metric == "uniform" else cfg.selection
        rng = np.random.default_rng([self.seed, step, 0x5A7])
        g = m.heads_per_group
        head_scale = m.num_attention_heads / n_q if cfg.rescale else 1.0
        mlp_scale = m.ffn_hidden_size / n_col if cfg.rescale else 1.0
        layers = []
        for heads, groups, columns_score in scores:
            query = kv = None
            if n_q < m.num_attention_heads:
                if s.whole_groups:
                    kv = select(groups.view(s.head_strata, -1), n_q // (g * s.head_strata), selection,
                                cfg.temperature, rng)
                    query = (kv[:, None] * g + torch.arange(g)).reshape(-1)
                else:
                    query = select(heads.view(m.num_query_groups, g), n_q // m.num_query_groups, selection,
                                   cfg.temperature, rng)
            columns = None
            if n_col < m.ffn_hidden_size:
                columns = select(columns_score.view(s.mlp_strata, -1), n_col // s.mlp_strata, selection,
                                 cfg.temperature, rng)
            layers.append(LayerPlan(True, query, kv, columns, head_scale, mlp_scale))
        return StepPlan(step, stage, tuple(layers), (n_q / m.num_attention_heads, n_col / m.ffn_hidden_size, 1.0))

    def plan(self, step: int, module: torch.nn.Module, input_ids: Optional[torch.Tensor]) -> StepPlan:
        return self.select_plan(step, self.scores(step, module, input_ids))


class SatMethod(SubnetMethod):
    """The training loop's SAT method: `prepare` scores on the step's first micro-batch, `plan` selects.

    `prepare` runs where the loop calls it (rank 0; every rank under ZeRO-3, whose forward is collective);
    `plan(step)` runs on rank 0, whose plan is broadcast. `overhead_flops` is the importance computation.
    """

    needs_whole_model = True  # the scores read every weight of the model

    def __init__(self, planner: SatPlanner, seq_length: int):
        self.planner = planner
        self.seq_length = seq_length
        self._scores = (None, None)
        self._whole_forward = False

    def prepare(self, step: int, module: torch.nn.Module, input_ids: torch.Tensor) -> None:
        self._whole_forward = partitioned(module)
        self._scores = (step, self.planner.scores(step, module, input_ids))

    def plan(self, step: int) -> StepPlan:
        if self._scores[0] != step and not self.planner.is_dense(step):
            raise RuntimeError(f"SAT plan for step {step} requested before its importance scores were prepared")
        return self.planner.select_plan(step, self._scores[1])

    def overhead_flops(self, step: int) -> int:
        if self.planner.is_dense(step):
            return 0
        seqs = self.planner.cfg.prepass_seqs
        return importance_flops(self.planner.model, seqs, self.seq_length, self.planner.cfg.metric,
                                self._whole_forward)

    @property
    def num_stages(self) -> int:
        return lors_schedule(self.planner.cfg, self.planner.train_steps).num_stages

    def describe(self) -> str:
        c, p = self.planner.cfg, self.planner
        return (f"sat: metric {c.metric}, selection {c.selection} (T={c.temperature:g}), LORS r_max {c.r_max:g}, "
                f"t_d {p.t_d}, {c.ladders} ladders over {p.train_steps} steps, rescale {c.rescale}, "
                f"pre-pass {c.prepass_seqs} sequence(s)")
