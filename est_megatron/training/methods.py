"""The training methods a run can choose with --method, and every flag they read: the one place a method is
registered.

A method is one entry in METHODS: a builder that receives the run's `MethodContext` and returns a
`SubnetMethod` (est_megatron.subnet.method), the protocol the loop calls every step. The context carries the
method flags as one typed `MethodOptions`, built once from the command line (`method_options`), so a builder
shows what it takes. `add_method_args` adds the
flags of every method (EST's schedule, sampling and optimizer; RAPTR's and SAT's groups) to a parser; the
training entry points and tools/est_plan.py share it.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.errors import UsageError
from est_megatron.subnet.est import EstMethod
from est_megatron.subnet.method import DenseMethod, SubnetMethod
from est_megatron.subnet.raptr import DEFAULT_RAPTR_SCHEDULE, RAPTR_PRESETS, RaptrMethod, parse_raptr_schedule
from est_megatron.subnet.sat import METRICS, SELECTIONS, SatConfig, SatMethod, SatPlanner
from est_megatron.subnet.schedule import SCHEDULE_PRESETS, parse_schedule

# The sparse step's learning-rate power (SparseAdamW's lr_power): a sampled unit steps at lr * p. At the dense
# model's peak learning rate with every unit at lr, the sampled stages stalled on the unigram plateau; power 1
# measured best against 0.5 and 0 (docs/results/est_vs_dense.md).
DEFAULT_LR_POWER = 1.0


@dataclass(frozen=True)
class MethodOptions:
    """The method flags a builder reads (the sampling flags are `SubnetConfig`'s)."""

    est_schedule: str
    raptr_schedule: str
    raptr_keep_first_last: bool
    raptr_scale_residual: bool
    sat: SatConfig
    seq_length: int  # SAT's importance pre-pass prices its FLOPs by it


def method_options(args: argparse.Namespace) -> MethodOptions:
    return MethodOptions(args.est_schedule, args.raptr_schedule, args.raptr_keep_first_last,
                         args.raptr_scale_residual, sat_config_from_args(args), args.seq_length)


@dataclass(frozen=True)
class MethodContext:
    """What a method may build its plans from: the model, the sampling config, the run length, seed and options."""

    model: ModelConfig
    subnet: SubnetConfig
    train_steps: int
    seed: int
    options: MethodOptions


def build_est(ctx: MethodContext) -> EstMethod:
    schedule = parse_schedule(ctx.options.est_schedule).resolve(ctx.train_steps)
    return EstMethod(ctx.model, ctx.subnet, schedule, ctx.seed)


def build_dense(ctx: MethodContext) -> DenseMethod:
    return DenseMethod()


def build_raptr(ctx: MethodContext) -> RaptrMethod:
    opts = ctx.options
    resolved = parse_raptr_schedule(opts.raptr_schedule).resolve(ctx.model, ctx.subnet, ctx.train_steps,
                                                                 opts.raptr_keep_first_last)
    return RaptrMethod(ctx.model, ctx.subnet, resolved, ctx.seed, opts.raptr_keep_first_last,
                       opts.raptr_scale_residual)


def build_sat(ctx: MethodContext) -> SatMethod:
    planner = SatPlanner(ctx.model, ctx.subnet, ctx.options.sat, ctx.train_steps, ctx.seed)
    return SatMethod(planner, ctx.options.seq_length)


METHODS: Dict[str, Callable[[MethodContext], SubnetMethod]] = {
    "est": build_est,
    "dense": build_dense,
    "raptr": build_raptr,  # random layer subsets growing in stages (est_megatron/subnet/raptr.py)
    "sat": build_sat,  # importance-based head/column omission with LORS (est_megatron/subnet/sat.py)
}


def build_method(name: str, ctx: MethodContext) -> SubnetMethod:
    if name not in METHODS:
        raise UsageError(f"unknown --method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name](ctx)


def add_method_args(p: argparse.ArgumentParser, est_schedule_default: Optional[str] = None,
                    methods: Optional[Sequence[str]] = None) -> argparse._ArgumentGroup:
    """The subnetwork-method flags (--method; EST's schedule, whole groups and strata; RAPTR's and SAT's groups).
    Returns the "subnetwork training" group."""
    g = p.add_argument_group("subnetwork training")
    g.add_argument("--method", default="est", choices=methods,
                   help="est (Evolving Subnetwork Training), raptr, sat or dense; see "
                        "est_megatron.training.methods.METHODS")
    g.add_argument("--est-schedule", default=est_schedule_default,
                   help=f"preset ({', '.join(SCHEDULE_PRESETS)}) or BOUNDARIES:RATES, e.g. "
                        "20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1 (fractions of the run when all <= 1)")
    g.add_argument("--est-optimizer", default="sparse", choices=("sparse", "dense"),
                   help="AdamW step of a subnetwork method: sparse leaves everything the step's plan did not train "
                        "untouched (values, both Adam moments, no weight decay); dense applies AdamW to every "
                        "parameter, with zero gradients outside the plan (an ablation)")
    g.add_argument("--est-bias-correction", default="unit", choices=("unit", "step"),
                   help="Adam bias correction of the sparse step: unit corrects each row/column by the steps that "
                        "trained it; step by the optimizer's step count for all (an ablation)")
    g.add_argument("--est-lr-power", type=float, default=DEFAULT_LR_POWER, metavar="POWER",
                   help="sparse step: a row (head, MLP column) or layer norm that a sampled step trains steps at "
                        "learning rate lr * p^POWER, p the fraction of its rows the step trains times the fraction "
                        "of layers it runs; 0 gives everything lr (measured: docs/results/est_vs_dense.md)")
    g.add_argument("--est-whole-groups", action="store_true",
                   help="sample whole key/value groups instead of query heads inside every group")
    g.add_argument("--est-head-strata", type=int, help="strata of key/value groups (whole-group sampling)")
    g.add_argument("--est-mlp-strata", type=int, help="strata of MLP columns (balanced sampling)")
    g.add_argument("--est-layer-strata", type=int, help="strata of layers (balanced sampling)")
    g.add_argument("--est-rescale", action="store_true",
                   help="scale kept heads' and MLP columns' outputs by 1/p as the paper's eqs. 5-6 do (off by "
                        "default: measured worse, docs/results/est_vs_dense.md)")

    raptr = p.add_argument_group("RAPTR (--method raptr)")
    raptr.add_argument("--raptr-schedule", default=DEFAULT_RAPTR_SCHEDULE,
                       help=f"preset ({', '.join(RAPTR_PRESETS)}; depths as fractions of the model) or "
                            "DEPTHS:BOUNDARIES, e.g. 6,8,10,12:0.25,0.5,0.75,1")
    raptr.add_argument("--raptr-no-keep-first-last", dest="raptr_keep_first_last", action="store_false",
                       help="draw the first and last layers too (default: always keep them)")
    raptr.add_argument("--raptr-scale-residual", action="store_true",
                       help="scale kept layers' residual branches by 1 / P(kept) (L / depth without fixed layers)")

    sat = p.add_argument_group("SAT (--method sat)")
    sat.add_argument("--sat-metric", choices=METRICS, default="maxip", help="neuron importance metric")
    sat.add_argument("--sat-selection", choices=SELECTIONS, default="sampling",
                     help="keep the top-k, or sample without replacement from softmax(score / T)")
    sat.add_argument("--sat-temperature", type=float, default=1.0, help="T of the sampling softmax")
    sat.add_argument("--sat-r-max", type=float, default=0.5, help="maximum omission rate r_max")
    sat.add_argument("--sat-decay-start", type=float, default=0.5,
                     help="LORS t_d: fraction of the run (<= 1) or absolute step where r starts to fall")
    sat.add_argument("--sat-ladders", type=int, default=4, help="LORS ladder count N; 0 keeps r_max (no LORS)")
    sat.add_argument("--sat-rescale", action="store_true",
                     help="scale kept heads/columns by 1/p like EST (off: the paper's plain omission)")
    sat.add_argument("--sat-prepass-seqs", type=int, default=1,
                     help="sequences of the step's first micro-batch in the importance pre-pass")
    return g


def sat_config_from_args(args) -> SatConfig:
    return SatConfig(args.sat_metric, args.sat_selection, args.sat_temperature, args.sat_r_max,
                     args.sat_decay_start, args.sat_ladders, args.sat_rescale, args.sat_prepass_seqs).validate()


def subnet_config(args: argparse.Namespace, model: ModelConfig) -> SubnetConfig:
    """The sampling config the EST flags describe, resolved for `model`."""
    return SubnetConfig(whole_groups=args.est_whole_groups, head_strata=args.est_head_strata,
                        mlp_strata=args.est_mlp_strata, layer_strata=args.est_layer_strata,
                        rescale=args.est_rescale).resolved(model)
