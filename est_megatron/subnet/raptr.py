"""RAPTR (Panigrahi et al. 2024): train a random subset of layers whose size grows in stages to full depth.

At step t the stage's depth d is looked up; d layers are drawn at random (a pure function of (seed, t), so a
resumed run replays the same subsets) and the others are the identity, exactly EST's skipped layers. The draw is
balanced like EST's: `SubnetConfig.layer_strata` equal blocks of layers each keep d / strata layers, so every
pipeline stage runs the same number of layers. By default the first and the last layer are always kept (the
paper fixes them); the rest of their strata is drawn around them.

Optional residual scaling (off by default): every kept layer's two residual branches are multiplied by
1 / P(layer kept) — (stratum layers - fixed) / (stratum depth - fixed) for a drawn layer, 1 for a fixed one —
which is L / d when no layer is fixed. This keeps the expected residual update equal to the full model's, like
inverted dropout / stochastic depth; the paper's stability argument across stage transitions relies on residual
connections and layer norm, and its experiments train without scaling, hence the default.

Schedules are depths per stage with stage boundaries, e.g. `6,8,10,12:0.25,0.5,0.75,1` (boundaries are fractions
of the run when all are <= 1, else absolute steps such as `10k,20k,30k,40k`). Presets give depths as fractions of
the model's depth, rounded to a multiple of the layer strata, so they fit any model.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Tuple

import numpy as np

from est_megatron.config import ModelConfig, SubnetConfig
from est_megatron.errors import UsageError
from est_megatron.subnet.method import SubnetMethod
from est_megatron.subnet.plan import DENSE_LAYER, LayerPlan, StepPlan
from est_megatron.subnet.schedule import ResolvedSchedule, Schedule, boundaries_of, parse_boundaries

# name -> (depths as fractions of the model's layers, stage boundaries as fractions of the run).
# "quarters" is the paper's BERT-base 6-8-10-12 (and UL2 12-16-20-24) schedule with four equal stages.
RAPTR_PRESETS = {
    "quarters": ((Fraction(1, 2), Fraction(2, 3), Fraction(5, 6), 1),
                 (Fraction(1, 4), Fraction(1, 2), Fraction(3, 4), 1)),
    "thirds": ((Fraction(1, 2), Fraction(3, 4), 1), (Fraction(1, 3), Fraction(2, 3), 1)),
    "two-stage": ((Fraction(1, 2), 1), (Fraction(1, 2), 1)),
    "dense": ((1,), (1,)),
}
DEFAULT_RAPTR_SCHEDULE = "quarters"


@dataclass(frozen=True)
class RaptrSchedule:
    """Depth per stage (absolute layers, or fractions of the depth for presets) and stage boundaries."""

    depths: Tuple
    boundaries: Tuple
    fractional_depths: bool
    fractional_boundaries: bool
    name: str = "custom"

    def resolve(self, model: ModelConfig, subnet: SubnetConfig, train_steps: int,
                keep_first_last: bool = True) -> "ResolvedRaptr":
        subnet = subnet.resolved(model)
        strata, num_layers = subnet.layer_strata, model.num_layers
        if self.fractional_depths:  # presets: round to a multiple of the strata
            depths = tuple(max(strata, int(Fraction(f) * num_layers / strata + Fraction(1, 2)) * strata)
                           for f in self.depths)
        else:
            depths = tuple(int(d) for d in self.depths)
        fixed = fixed_layers(num_layers, keep_first_last)
        minimum = max(len([i for i in fixed if i * strata // num_layers == j]) for j in range(strata))
        for depth in depths:
            if not 0 < depth <= num_layers:
                raise UsageError(f"RAPTR schedule {self.name!r}: depth {depth} is outside 1..{num_layers} layers")
            if depth % strata:
                raise UsageError(f"RAPTR schedule {self.name!r}: depth {depth} is not a multiple of the "
                                 f"{strata} layer strata; use depths divisible by {strata} or set "
                                 "--est-layer-strata to a divisor of every depth")
            if depth // strata < max(1, minimum):
                raise UsageError(f"RAPTR schedule {self.name!r}: depth {depth} cannot hold the always-kept "
                                 "first and last layers in every stratum; raise the depth or pass "
                                 "--raptr-no-keep-first-last")
        if any(b < a for a, b in zip(depths, depths[1:])):
            raise UsageError(f"RAPTR schedule {self.name!r}: depths {list(depths)} must not decrease")
        rates = tuple((1.0, 1.0, d / num_layers) for d in depths)
        steps = Schedule(self.boundaries, rates, self.fractional_boundaries, self.name).resolve(train_steps)
        return ResolvedRaptr(steps, depths)


@dataclass(frozen=True)
class ResolvedRaptr:
    schedule: ResolvedSchedule  # stage ends; rates (1, 1, depth / layers) for logs and the FLOPs model
    depths: Tuple[int, ...]

    def depth_at(self, step: int) -> int:
        return self.depths[self.schedule.stage_at(step)]

    def describe(self) -> str:
        s = self.schedule
        return f"raptr {s.name}: " + " ".join(f"[{s.stage_start(i)},{end}) depth={d}"
                                              for i, (end, d) in enumerate(zip(s.ends, self.depths)))


def parse_raptr_schedule(text: str) -> RaptrSchedule:
    """A preset name, or `DEPTHS:BOUNDARIES` such as `6,8,10,12:0.25,0.5,0.75,1` or `6,12:10k,40k`."""
    text = text.strip()
    if text in RAPTR_PRESETS:
        depths, bounds = RAPTR_PRESETS[text]
        return RaptrSchedule(depths, bounds, True, True, text)
    if ":" not in text:
        raise UsageError(f"unknown RAPTR schedule {text!r}; use a preset ({', '.join(RAPTR_PRESETS)}) or "
                         "DEPTHS:BOUNDARIES such as 6,8,10,12:0.25,0.5,0.75,1")
    depths_text, bounds_text = text.split(":", 1)
    try:
        depths = tuple(int(d) for d in depths_text.split(",") if d.strip())
    except ValueError:
        raise UsageError(f"RAPTR depths {depths_text!r} must be whole layer counts such as 6,8,10,12") from None
    bounds = parse_boundaries(bounds_text)
    if len(depths) != len(bounds) or not depths:
        raise UsageError(f"RAPTR schedule {text!r} has {len(depths)} depths but {len(bounds)} boundaries; give "
                         "one boundary per stage")
    boundaries, fractional = boundaries_of(bounds, f"RAPTR schedule {text!r}")
    return RaptrSchedule(depths, boundaries, False, fractional, text)


def fixed_layers(num_layers: int, keep_first_last: bool) -> Tuple[int, ...]:
    return tuple(sorted({0, num_layers - 1})) if keep_first_last else ()


class RaptrMethod(SubnetMethod):
    """Draws the RAPTR plan of any step as a pure function of (seed, step): `plan(step) -> StepPlan`."""

    def __init__(self, model: ModelConfig, subnet: SubnetConfig, schedule: ResolvedRaptr, seed: int,
                 keep_first_last: bool = True, scale_residual: bool = False):
        self.model = model
        self.subnet = subnet.resolved(model)
        self.schedule = schedule
        self.seed = seed
        self.fixed = fixed_layers(model.num_layers, keep_first_last)
        self.scale_residual = scale_residual

    @property
    def num_stages(self) -> int:
        return self.schedule.schedule.num_stages

    def describe(self) -> str:
        return (self.schedule.describe() + f", keep first/last {bool(self.fixed)}, "
                f"residual scale {'1/P(kept)' if self.scale_residual else 'off'}")

    def plan(self, step: int) -> StepPlan:
        num_layers, strata = self.model.num_layers, self.subnet.layer_strata
        stage = self.schedule.schedule.stage_at(step)
        depth = self.schedule.depths[stage]
        if depth == num_layers:
            return StepPlan(step, stage, (DENSE_LAYER,) * num_layers, (1.0, 1.0, 1.0))
        rng = np.random.default_rng([self.seed, step, 0x5A7])  # 0x5A7: RAPTR's stream, apart from EST's
        per, keep = num_layers // strata, depth // strata
        scales = {}
        for j in range(strata):
            members = np.arange(j * per, (j + 1) * per)
            fixed = [i for i in members if i in self.fixed]
            free = np.array([i for i in members if i not in self.fixed])
            drawn = rng.permutation(free)[: keep - len(fixed)]
            scales.update({int(i): 1.0 for i in fixed})
            scale = len(free) / (keep - len(fixed)) if self.scale_residual and len(drawn) else 1.0
            scales.update({int(i): scale for i in drawn})
        layers = tuple(LayerPlan(residual_scale=scales[i]) if i in scales else LayerPlan(active=False)
                       for i in range(num_layers))
        return StepPlan(step, stage, layers, (1.0, 1.0, depth / num_layers))
