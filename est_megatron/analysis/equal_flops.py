"""A dense run given an EST-family run's compute: the baseline a skeptic asks for, since EST at equal steps spends
fewer FLOPs than dense and should also be compared with dense that spent the same.

Its length is the EST-family run's steps x (1 - its FLOPs saving), and its learning-rate schedule is the same shape
squeezed to that length: the warm-up and the decay end scaled by the same ratio (so a cosine that ended at the
last step still does), a positive warm-up never rounded away.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from est_megatron.analysis.curves import FLOPS, RunCurves
from est_megatron.errors import UsageError


@dataclass(frozen=True)
class EqualFlopsSchedule:
    """Steps, warm-up and decay end of the dense run, and the saving they came from."""

    train_steps: int
    warmup_steps: int
    decay_steps: int
    saving: float
    source: str  # "measured" (the run's logs) or "predicted" (its schedule, by tools/est_plan.py's code)

    def flags(self) -> List[str]:
        return ["--train-steps", str(self.train_steps), "--lr-warmup-steps", str(self.warmup_steps),
                "--lr-decay-steps", str(self.decay_steps)]

    def to_json(self) -> dict:
        return {"train_steps": self.train_steps, "lr_warmup_steps": self.warmup_steps,
                "lr_decay_steps": self.decay_steps, "saving": self.saving, "saving_source": self.source}

    @classmethod
    def from_json(cls, record: dict) -> "EqualFlopsSchedule":
        return cls(record["train_steps"], record["lr_warmup_steps"], record["lr_decay_steps"], record["saving"],
                   record["saving_source"])


def equal_flops_schedule(train_steps: int, saving: float, warmup_steps: int, decay_steps: Optional[int],
                         source: str) -> EqualFlopsSchedule:
    """The dense schedule for a run of `train_steps` that saved `saving` of dense FLOPs (decay_steps None: the
    decay ends at the last step, the launcher's default)."""
    if not 0.0 <= saving < 1.0:
        raise UsageError(f"a FLOPs saving of {saving!r} leaves no dense steps; it must be in [0, 1)")
    steps = max(1, round(train_steps * (1.0 - saving)))
    ratio = steps / train_steps
    warmup = max(1, round(warmup_steps * ratio)) if warmup_steps > 0 else 0
    decay = max(warmup, round((train_steps if decay_steps is None else decay_steps) * ratio))
    return EqualFlopsSchedule(steps, warmup, decay, saving, source)


def measured_saving(curves: RunCurves, dense_step_flops: float) -> float:
    """The share of dense FLOPs a run saved over its logged steps, from its cumulative FLOPs."""
    if curves.flops_unit == FLOPS:
        return 1.0 - curves.train.flops[-1] / (dense_step_flops * curves.last_step)
    return 1.0 - curves.train.flops[-1] / curves.last_step  # already in dense-step equivalents
