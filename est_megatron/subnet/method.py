"""The protocol every training method implements (EST, RAPTR, SAT and dense), so the training loop asks each the
same questions and never probes for optional attributes.

Per step the loop calls, on global rank 0 (SAT's `prepare` also on every rank under ZeRO-3, whose forward is
collective): `prepare(step, module, input_ids)` with the step's first micro-batch, then `plan(step)`, whose
`StepPlan` (None: the dense model) it broadcasts to every rank. `overhead_flops(step)` is what the method spent
outside the step's forward and backward (counted in the logs); `describe()` is the start-up log line, with the
resolved schedule. `needs_whole_model`: `prepare` reads every weight, so the run must not split the model (TP or PP).
"""
from __future__ import annotations

import abc
from typing import Optional

import torch

from est_megatron.subnet.plan import StepPlan


class SubnetMethod(abc.ABC):
    """A training method: which subnetwork each step trains."""

    needs_whole_model = False

    @abc.abstractmethod
    def plan(self, step: int) -> Optional[StepPlan]:
        """The plan of `step` (None: the whole model); a pure function of the run's seed and `step`, so a resumed
        run replays the same plans (SAT: of the scores `prepare` took for `step`)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for the start-up log: the method and its resolved schedule."""

    def prepare(self, step: int, module: torch.nn.Module, input_ids: torch.Tensor) -> None:
        """Look at the step's first micro-batch before `plan(step)`; a method that plans from (seed, step) alone
        has nothing to do here."""

    def overhead_flops(self, step: int) -> int:
        """FLOPs spent outside the step's forward and backward (SAT's importance pre-pass)."""
        return 0

    @property
    def num_stages(self) -> int:
        """Stages of the run: each trains subnetworks of one shape (what bounds --compile's recompiles)."""
        return 1


class DenseMethod(SubnetMethod):
    """Plain dense training: every step trains the whole model."""

    def plan(self, step: int) -> Optional[StepPlan]:
        return None

    def describe(self) -> str:
        return "dense: every step trains the whole model"
