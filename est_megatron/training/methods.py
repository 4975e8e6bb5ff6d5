"""Training methods: each maps a step to that step's subnetwork plan (a StepPlan) or None (the dense model).

A method is registered with one line in METHODS: a builder that receives the run's `MethodContext` and returns
the step -> plan callable. The loop draws the plan on global rank 0 only and broadcasts it to every rank.
Optional attributes of that callable: `prepare(step, module, input_ids)`, called before it with the step's first
micro-batch (SAT's importance pre-pass); `overhead_flops(step)`, FLOPs the method spends outside the step
(counted in the logs); `describe()`, a line for the log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.errors import UsageError
from est_megatron.subnet.plan import PlanSampler, StepPlan
from est_megatron.subnet.raptr import build_raptr
from est_megatron.subnet.sat import build_sat
from est_megatron.subnet.schedule import parse_schedule

PlanFn = Callable[[int], Optional[StepPlan]]


@dataclass(frozen=True)
class MethodContext:
    """What a method may build its plans from: the model, the sampling config, the run length, seed and flags."""

    model: ModelConfig
    subnet: SubnetConfig
    train_steps: int
    seed: int
    args: object  # the parsed argparse namespace, for method-specific flags


def build_est(ctx: MethodContext) -> PlanFn:
    schedule = parse_schedule(ctx.args.est_schedule).resolve(ctx.train_steps)
    return PlanSampler(ctx.model, ctx.subnet, schedule, ctx.seed).plan


def build_dense(ctx: MethodContext) -> PlanFn:
    return lambda step: None


METHODS: Dict[str, Callable[[MethodContext], PlanFn]] = {
    "est": build_est,
    "dense": build_dense,
    "raptr": build_raptr,  # random layer subsets growing in stages (est_megatron/subnet/raptr.py)
    "sat": build_sat,  # importance-based head/column omission with LORS; has `prepare` (est_megatron/subnet/sat.py)
}


def build_method(name: str, ctx: MethodContext) -> PlanFn:
    if name not in METHODS:
        raise UsageError(f"unknown --method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name](ctx)
