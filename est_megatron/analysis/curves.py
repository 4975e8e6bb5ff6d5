"""Loss series from a run's `metrics.jsonl`, against steps, training FLOPs and tokens.

A resumed run appends to the same file and logs again the steps between its last checkpoint and the point where
it stopped, so each kind of record is deduplicated by step, the last one winning (the resumed run replays those
steps exactly). Cumulative FLOPs and tokens come from the record when the loop logs them; otherwise FLOPs follow
from the logged fraction saved, step x dense FLOPs per step x (1 - saved), in FLOPs when the caller knows a dense
step's cost and in dense-step equivalents when not, and tokens from the consumed samples x sequence length.
Validation and test records and stage transitions are placed on the FLOPs axis by interpolating the training records'
cumulative FLOPs, which is exact while one log interval has one per-step cost.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from est_megatron.errors import UsageError

# Cumulative counters of a training record (logs written before they existed lack them).
FLOPS_FIELD = "flops"
TOKENS_FIELD = "tokens"
# Per-step training fields kept beside the loss when every training record has them.
OPTIONAL_TRAIN_FIELDS = ("lr", "grad_norm", "stage", "flops_saved_frac", "step_time_s")

FLOPS = "FLOPs"
DENSE_STEPS = "dense-step equivalents"


@dataclass
class Series:
    """One quantity at logged steps: parallel lists, sorted by step."""

    step: List[int]
    value: List[float]
    flops: List[float]  # cumulative training FLOPs at that step (unit: RunCurves.flops_unit)
    tokens: Optional[List[int]] = None  # cumulative training tokens, when known
    extra: Dict[str, list] = field(default_factory=dict)

    def to_json(self) -> dict:
        out = {"step": self.step, "loss": self.value, "flops": self.flops}
        if self.tokens is not None:
            out["tokens"] = self.tokens
        out.update(self.extra)
        return out


@dataclass
class RunCurves:
    """What one metrics.jsonl says about a run: training and validation loss, stage transitions, where it ended."""

    path: str
    train: Series
    val: Series
    test: Series  # the test split's loss, evaluated once the run completes (the launcher's final record)
    transitions: List[dict]  # {"step", "stage", "rates", "flops"}
    flops_unit: str  # FLOPS or DENSE_STEPS
    end_step: Optional[int]  # step of the last "end" event (a finished run's is --train-steps)

    @property
    def last_step(self) -> int:
        return self.train.step[-1] if self.train.step else 0

    @property
    def flops_saved_frac(self) -> Optional[float]:
        saved = self.train.extra.get("flops_saved_frac")
        return saved[-1] if saved else None

    @property
    def train_seconds(self) -> Optional[float]:
        """Time spent in training steps (validation and checkpoints excluded): per-step time x steps logged."""
        times = self.train.extra.get("step_time_s")
        if times is None:
            return None
        steps = [0] + self.train.step
        return sum(t * (b - a) for t, a, b in zip(times, steps, steps[1:]))


def read_records(path: str) -> List[dict]:
    """The JSON objects of a metrics.jsonl file; a torn last line (a run killed mid-write) is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UsageError(f"{path} does not exist; give a metrics.jsonl written by a training run's --log-dir "
                         "(or its directory)")
    records = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise UsageError(f"{path} line {number} is not JSON; is this a metrics.jsonl from a training run?") \
                from None
    return records


def _last_by_step(records: Sequence[dict]) -> List[dict]:
    by_step = {}
    for record in records:
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def load_curves(path: str, dense_step_flops: Optional[float] = None,
                seq_length: Optional[int] = None) -> RunCurves:
    """Read one run's metrics.jsonl (or the directory holding it) into deduplicated series.

    dense_step_flops: FLOPs of one dense optimizer step of this run, to report absolute FLOPs when the records do
    not carry them; seq_length: tokens per sample, to derive tokens from the consumed samples.
    """
    records = read_records(path)
    train = _last_by_step([r for r in records if "event" not in r and "loss" in r and "step" in r])
    evals = _last_by_step([r for r in records if "event" not in r and "val_loss" in r and "step" in r])
    tests = _last_by_step([r for r in records if "event" not in r and "test_loss" in r and "step" in r])
    transitions = _last_by_step([r for r in records if r.get("event") == "stage_transition"])
    ends = [r for r in records if r.get("event") == "end"]
    if not train:
        raise UsageError(f"{path} has no training records (step and loss); was the run's --log-interval reached?")

    if all(r.get(FLOPS_FIELD) is not None for r in train):
        flops, unit = [float(r[FLOPS_FIELD]) for r in train], FLOPS
    else:
        if any("flops_saved_frac" not in r for r in train):
            raise UsageError(f"{path}: training records carry neither cumulative FLOPs nor flops_saved_frac; "
                             "is this a metrics.jsonl from est_megatron's training loop?")
        scale, unit = (float(dense_step_flops), FLOPS) if dense_step_flops else (1.0, DENSE_STEPS)
        flops = [r["step"] * scale * (1.0 - r["flops_saved_frac"]) for r in train]
    steps = [int(r["step"]) for r in train]

    train_tokens = None
    if all(r.get(TOKENS_FIELD) is not None for r in train):
        train_tokens = [int(r[TOKENS_FIELD]) for r in train]
    elif seq_length and all("consumed_samples" in r for r in train):
        train_tokens = [int(r["consumed_samples"]) * seq_length for r in train]

    def flops_at(step_list):
        return [float(v) for v in np.interp(step_list, [0] + steps, [0.0] + flops)]

    extra = {name: [r[name] for r in train] for name in OPTIONAL_TRAIN_FIELDS if all(name in r for r in train)}
    train_series = Series(steps, [float(r["loss"]) for r in train], flops, train_tokens, extra)

    val_steps = [int(r["step"]) for r in evals]
    val_tokens = None
    if train_tokens is not None:  # tokens grow linearly with steps (a fixed global batch)
        val_tokens = [int(round(t)) for t in np.interp(val_steps, [0] + steps, [0] + train_tokens)]
    val_series = Series(val_steps, [float(r["val_loss"]) for r in evals], flops_at(val_steps), val_tokens,
                        _by_corpus(evals, "val"))

    test_steps = [int(r["step"]) for r in tests]
    test_series = Series(test_steps, [float(r["test_loss"]) for r in tests], flops_at(test_steps), None,
                         _by_corpus(tests, "test"))

    marks = [{"step": int(r["step"]), "stage": r.get("stage"), "rates": r.get("rates"), "flops": f}
             for r, f in zip(transitions, flops_at([int(r["step"]) for r in transitions]))]
    end_step = int(ends[-1]["step"]) if ends else None
    return RunCurves(str(path), train_series, val_series, test_series, marks, unit, end_step)


def _by_corpus(records: Sequence[dict], split: str) -> Dict[str, list]:
    """{"by_corpus": each record's loss per corpus} when every record has one (runs on several corpora)."""
    key = f"{split}_loss_by_corpus"
    return {"by_corpus": [r[key] for r in records]} if records and all(key in r for r in records) else {}


@dataclass
class Band:
    """A quantity averaged over seeds at the steps every seed logged: mean, min and max, and mean FLOPs."""

    step: List[int]
    mean: List[float]
    low: List[float]
    high: List[float]
    flops: List[float]


def band(series: Sequence[Series]) -> Band:
    """Mean and min-max spread over seeds, at the steps all of them logged."""
    if not series:
        return Band([], [], [], [], [])
    common = sorted(set.intersection(*(set(s.step) for s in series)))
    index = [{t: i for i, t in enumerate(s.step)} for s in series]
    values = np.array([[s.value[at[t]] for t in common] for s, at in zip(series, index)], dtype=float)
    flops = np.array([[s.flops[at[t]] for t in common] for s, at in zip(series, index)], dtype=float)
    return Band(common, values.mean(0).tolist(), values.min(0).tolist(), values.max(0).tolist(),
                flops.mean(0).tolist())


def mean_and_spread(values: Sequence[float]):
    """Mean and sample standard deviation (None for a single value) of finite values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean = sum(finite) / len(finite)
    if len(finite) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
