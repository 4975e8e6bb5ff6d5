"""The ranks' agreement on "stop" and "the loss was not finite", without making a step wait for it.

Every rank must stop at the same step and count the same skipped steps, so both flags are all-reduced (MAX) every
step. Reading the result at once would make the host wait for the step's last kernel and the collective each
step; instead the all-reduce is posted without waiting (`async_op=True`), on CUDA copied into pinned host memory
behind an event, and read one step later, when the next step has been queued. A stop request or a non-finite loss
therefore takes effect one step later, on every rank alike. At the steps where the run must know everything
(log, save, end and exit steps: `settle`), all posted flags are read at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class StepOutcome:
    step: int
    stop_requested: bool  # on some rank
    skipped: bool  # a non-finite loss on some rank, or DeepSpeed dropped the update (its overflow check)


class _Posted:
    """One step's flags on their way: the collective's handle and, on CUDA, the pinned copy and its event."""

    def __init__(self, step: int, engine_skipped: bool, flags: torch.Tensor):
        self.step, self.engine_skipped = step, engine_skipped
        self.work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, async_op=True)
        self.flags, self.event = flags, None
        if flags.device.type == "cuda":
            self.work.wait()  # the current stream waits for the collective; the host does not
            self.flags = torch.empty(flags.shape, dtype=flags.dtype, pin_memory=True)
            self.flags.copy_(flags, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()

    def outcome(self) -> StepOutcome:
        if self.event is not None:
            self.event.synchronize()  # this step's flags, not the kernels queued after them
        else:
            self.work.wait()
        stop, not_finite = self.flags.tolist()
        return StepOutcome(self.step, bool(stop), bool(not_finite) or self.engine_skipped)


class StepFlags:
    def __init__(self, device: torch.device):
        self.device = device
        self.posted: list[_Posted] = []

    def post(self, step: int, stop_requested: bool, step_loss: torch.Tensor, engine_skipped: bool) -> None:
        """Start agreeing on `step`'s flags; `step_loss` stays on the device (no host read of it here)."""
        flags = torch.empty(2, dtype=torch.int64, device=self.device)
        flags[0].fill_(int(stop_requested))
        flags[1].copy_(~torch.isfinite(step_loss))
        self.posted.append(_Posted(step, engine_skipped, flags))

    def collect(self, settle: bool) -> list[StepOutcome]:
        """The agreed outcomes of the posted steps, oldest first: all of them when `settle`, else all but the
        latest (which the next step reads)."""
        keep = 0 if settle else 1
        ready, self.posted = self.posted[:len(self.posted) - keep], self.posted[len(self.posted) - keep:]
        return [posted.outcome() for posted in ready]
