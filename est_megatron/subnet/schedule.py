"""EST sampling schedules: stage end steps S and per-stage rates P (paper Definition 3.1).

A schedule is written with stage boundaries either as absolute steps ("20k,70k,150k") or as fractions of the
run ("0.1333,0.4667,1"); presets use fractions so they scale to any `--train-steps`. `resolve(train_steps)`
turns it into absolute boundaries and checks that they increase and that the last one ends the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Tuple

from est_megatron.errors import UsageError

Rates = Tuple[float, float, float]  # (p_heads, p_mlp, p_layers)

HALF_ALL: Rates = (0.5, 0.5, 0.5)
HALF_WIDTH: Rates = (0.5, 0.5, 1.0)
DENSE: Rates = (1.0, 1.0, 1.0)

# name -> (stage boundaries as fractions of the run, rates per stage), from the paper's sections 4.1-4.2 and
# Table 3 (GPT-2 runs of 150k steps, TinyLlama of 60k steps), and Table 1's illustrative three equal stages.
SCHEDULE_PRESETS = {
    "gpt2": ((Fraction(20, 150), Fraction(70, 150), 1), (HALF_ALL, HALF_WIDTH, DENSE)),
    "tinyllama": ((Fraction(10, 60), Fraction(25, 60), 1), (HALF_ALL, HALF_WIDTH, DENSE)),
    "dense": ((1,), (DENSE,)),
    "one-stage": ((1,), (HALF_WIDTH,)),
    "two-stage-a": ((Fraction(50, 150), 1), (HALF_WIDTH, DENSE)),
    "two-stage-b": ((Fraction(70, 150), 1), (HALF_WIDTH, DENSE)),
    "two-stage-c": ((Fraction(90, 150), 1), (HALF_WIDTH, DENSE)),
    "three-stage-layers": ((Fraction(20, 150), Fraction(70, 150), 1), (HALF_ALL, (1.0, 1.0, 0.5), DENSE)),
    "table1": ((Fraction(1, 3), Fraction(2, 3), 1), (HALF_ALL, HALF_WIDTH, DENSE)),
}


@dataclass(frozen=True)
class Schedule:
    """Stage boundaries (fractions of the run when `fractional`, else absolute steps) and rates per stage."""

    boundaries: Tuple
    rates: Tuple[Rates, ...]
    fractional: bool
    name: str = "custom"

    def resolve(self, train_steps: int) -> "ResolvedSchedule":
        if train_steps <= 0:
            raise UsageError(f"--train-steps must be positive, got {train_steps}")
        if self.fractional:
            ends = tuple(int(round(Fraction(b) * train_steps)) for b in self.boundaries)
        else:
            ends = tuple(int(b) for b in self.boundaries)
        _check_boundaries(ends, train_steps, self.name)
        return ResolvedSchedule(ends=ends, rates=self.rates, name=self.name)


@dataclass(frozen=True)
class ResolvedSchedule:
    """A schedule for a run of `ends[-1]` steps: stage i covers steps [ends[i-1], ends[i]), steps count from 0."""

    ends: Tuple[int, ...]
    rates: Tuple[Rates, ...]
    name: str = "custom"

    @property
    def train_steps(self) -> int:
        return self.ends[-1]

    @property
    def num_stages(self) -> int:
        return len(self.ends)

    def stage_at(self, step: int) -> int:
        """Index of the stage that trains step `step` (steps past the end stay in the last stage)."""
        for stage, end in enumerate(self.ends):
            if step < end:
                return stage
        return len(self.ends) - 1

    def rates_at(self, step: int) -> Rates:
        return self.rates[self.stage_at(step)]

    def stage_start(self, stage: int) -> int:
        return 0 if stage == 0 else self.ends[stage - 1]

    def stage_steps(self, stage: int) -> int:
        return self.ends[stage] - self.stage_start(stage)

    def describe(self) -> str:
        parts = [f"[{self.stage_start(i)},{end}) p=({','.join(f'{p:g}' for p in self.rates[i])})"
                 for i, end in enumerate(self.ends)]
        return f"{self.name}: " + " ".join(parts)


def _check_boundaries(ends: Sequence[int], train_steps: int, name: str) -> None:
    previous = 0
    for end in ends:
        if end <= previous:
            raise UsageError(f"schedule {name!r}: stage boundaries {list(ends)} must strictly increase from 0; "
                             "give each stage at least one step")
        previous = end
    if ends[-1] != train_steps:
        raise UsageError(f"schedule {name!r}: the last stage ends at step {ends[-1]} but the run has "
                         f"--train-steps {train_steps}; end the last stage at the last step or write the "
                         "boundaries as fractions (e.g. 0.25,0.5,1)")


def _check_rates(rates: Sequence[Rates], name: str) -> None:
    for stage, triple in enumerate(rates, start=1):
        if len(triple) != 3:
            raise UsageError(f"schedule {name!r}: stage {stage} has {len(triple)} rates; give three "
                             "(p_heads,p_mlp,p_layers)")
        for rate in triple:
            if not 0.0 < rate <= 1.0:
                raise UsageError(f"schedule {name!r}: rate {rate:g} in stage {stage} is outside (0, 1]")


def _parse_step(token: str) -> float:
    token = token.strip().lower()
    multiplier = 1
    if token.endswith("k"):
        token, multiplier = token[:-1], 1000
    elif token.endswith("m"):
        token, multiplier = token[:-1], 1_000_000
    try:
        value = float(token) * multiplier
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # "inf"/"nan" parse as floats but are no step
        raise UsageError(f"schedule boundary {token!r} is not a number; write steps like 20k or fractions "
                         "like 0.25")
    return value


def parse_schedule(text: str) -> Schedule:
    """A preset name, or `BOUNDARIES:RATES` such as `20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1`.

    Boundaries are fractions of the run when all of them are at most 1 (the last one being 1), else absolute
    steps (`k` = thousand). Rates are one `p_heads,p_mlp,p_layers` triple per stage, separated by `/`.
    """
    text = text.strip()
    if text in SCHEDULE_PRESETS:
        boundaries, rates = SCHEDULE_PRESETS[text]
        return Schedule(boundaries=boundaries, rates=rates, fractional=True, name=text)
    if ":" not in text:
        raise UsageError(f"unknown schedule {text!r}; use a preset ({', '.join(SCHEDULE_PRESETS)}) or "
                         "BOUNDARIES:RATES such as 20k,70k,150k:0.5,0.5,0.5/0.5,0.5,1/1,1,1")
    bounds_text, rates_text = text.split(":", 1)
    bounds = parse_boundaries(bounds_text)
    try:
        rates = tuple(tuple(float(p) for p in stage.split(",")) for stage in rates_text.split("/"))
    except ValueError:
        raise UsageError(f"schedule rates {rates_text!r} are not numbers; write p_heads,p_mlp,p_layers per "
                         "stage separated by '/'") from None
    if len(bounds) != len(rates):
        raise UsageError(f"schedule {text!r} has {len(bounds)} boundaries but {len(rates)} rate triples; give "
                         "one triple per stage")
    _check_rates(rates, text)
    boundaries, fractional = boundaries_of(bounds, f"schedule {text!r}")
    return Schedule(boundaries=boundaries, rates=rates, fractional=fractional, name=text)


def parse_boundaries(text: str) -> list:
    """Comma-separated stage boundaries: steps (`20k`, `1.5m`, `3000`) or fractions of the run (`0.25`)."""
    return [_parse_step(b) for b in text.split(",")]


def boundaries_of(bounds: list, what: str) -> Tuple[tuple, bool]:
    """(boundaries, fractional): fractions of the run when all are at most 1, else whole absolute steps."""
    if max(bounds) <= 1.0:
        return tuple(Fraction(b).limit_denominator(1_000_000) for b in bounds), True
    if any(b != int(b) for b in bounds):
        raise UsageError(f"{what}: absolute boundaries must be whole steps")
    return tuple(int(b) for b in bounds), False
