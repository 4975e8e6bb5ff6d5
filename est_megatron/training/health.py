"""Never train on garbage: skipped steps are counted and bounded, and non-finite weights are never saved.

A step is *skipped* when DeepSpeed's overflow check dropped its update (its `skipped_steps` counter moved) or its
loss was not finite on some rank. Skipped steps still consume their data and advance the step counter (Megatron's
and DeepSpeed's convention: a resumed run stays aligned with the data and the plans), but each is logged, the
total goes into every metrics record as `skipped_steps`, and `--max-skipped-steps` consecutive ones stop the run
with an error instead of spending the rest of it on NaNs. With --check-plan-consistency every log interval also
checks that the data-parallel replicas hold the same parameters (`check_replicas`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from est_megatron.errors import UsageError


class TooManySkippedSteps(UsageError):
    """Training diverged or the data/weights are broken: the run stops without saving."""


class SkipCounter:
    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.consecutive = 0

    def update(self, step: int, skipped: bool) -> None:
        """Record one step's outcome; raise TooManySkippedSteps at the limit (0: no limit)."""
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.limit and self.consecutive >= self.limit:
            raise TooManySkippedSteps(
                f"step {step}: {self.consecutive} consecutive steps skipped (non-finite loss or gradient overflow, "
                f"{self.total} skipped in all); stopping without saving, the last checkpoint is kept; lower --lr, "
                "keep --clip-grad on, check the data, or resume from an earlier checkpoint (--max-skipped-steps "
                "sets the limit)")


def parameters_finite(engine) -> bool:
    """Collective: whether every rank's parameters (its ZeRO-3 partitions, or the whole module) are finite."""
    bad = torch.zeros(1, dtype=torch.int64, device=engine.device)
    for p in engine.module.parameters():
        local = getattr(p, "ds_tensor", None)  # ZeRO-3: this rank's partition; the parameter is a placeholder
        tensor = local if local is not None else p
        if tensor.numel() and not torch.isfinite(tensor.detach()).all():
            bad += 1
            break
    dist.all_reduce(bad)
    return int(bad.item()) == 0


def check_replicas(engine, device, group=None) -> None:
    """Raise unless every rank of `group` (the data-parallel replicas) holds the same parameters (float64 sum and
    sum of squares, MIN == MAX). Under ZeRO-3 only the parameters every rank holds whole (the persistent small
    ones) are replicas; gathering the others here would break ZeRO-3's parameter-persistence bookkeeping."""
    params = [p for p in engine.module.parameters() if p.numel() == getattr(p, "ds_numel", p.numel())]
    local = torch.stack([sum(p.detach().double().sum() for p in params),
                         sum(p.detach().double().square().sum() for p in params)]).to(device)
    low, high = local.clone(), local.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(low, high):
        raise RuntimeError(f"parameters differ across ranks (checksums {low.tolist()} .. {high.tolist()})")
