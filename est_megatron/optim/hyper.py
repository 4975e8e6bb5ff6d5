"""AdamW's hyperparameters and the bias corrections of step counts, shared by every update route and kernel.

The sparse step gives each unit its own step count; these functions turn counts into corrections and find when
one count's corrections serve a whole block, which lets a block take torch's fused kernel.
"""
from __future__ import annotations

import functools
import math
import struct
from typing import NamedTuple, Optional, Tuple

import torch


class AdamHyper(NamedTuple):
    """One parameter group's AdamW settings for a step (hashable: `uniform_step` caches on it)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float

    def scaled(self, scale: float) -> "AdamHyper":
        """The step size's learning rate times `scale`, and the decoupled weight decay per step, lr * weight_decay,
        as it was."""
        return self if scale == 1.0 else self._replace(lr=self.lr * scale, weight_decay=self.weight_decay / scale)


@functools.lru_cache(maxsize=4096)  # a step asks the same few questions of every block
def uniform_step(low: int, high: int, hyper: AdamHyper, dtype: torch.dtype) -> Optional[int]:
    """A step count whose bias corrections give every count in [low, high] (all at least 1) exactly the update its
    own count gives, or None. AdamW, fused or not, uses lr / (1 - beta1^n) and sqrt(1 - beta2^n), computed in
    double and rounded to the update's precision (fp32 but for fp64 tensors); both are monotonic in n, so equal
    at `low` and `high` means equal throughout, and they stop changing after a few hundred steps (~330 at
    beta2 = 0.95), so in a long run every count soon shares them."""

    def seen(n):
        return tuple(_rounded(x, dtype) for x in (hyper.lr / (1 - hyper.beta1 ** n), math.sqrt(1 - hyper.beta2 ** n)))
    return high if low == high or seen(low) == seen(high) else None


def _rounded(x: float, dtype: torch.dtype) -> float:
    return x if dtype == torch.float64 else struct.unpack("f", struct.pack("f", x))[0]


def step_corrections(step: int, hyper: AdamHyper) -> Tuple[float, float]:
    """(1 - beta1^n, sqrt(1 - beta2^n)) for one step count n shared by every unit updated."""
    return 1 - hyper.beta1 ** step, math.sqrt(1 - hyper.beta2 ** step)


def bias_corrections(counts: torch.Tensor, hyper: AdamHyper) -> Tuple[torch.Tensor, torch.Tensor]:
    """(1 - beta1^n, sqrt(1 - beta2^n)) of every unit's step count n, in float64 (a unit never trained is outside
    this step's plan: any finite value does), looked up in a table of every count up to the largest: a gather per
    unit instead of two powers (tens of thousands of units, every step while counts are unequal)."""
    largest = int(counts.max()) if counts.numel() else 0
    table1, table2 = _correction_table(hyper.beta1, hyper.beta2, 1 << max(largest, 1).bit_length())  # grows by doubling
    n = counts.clamp(min=1)
    return table1[n], table2[n]


@functools.lru_cache(maxsize=8)
def _correction_table(beta1: float, beta2: float, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """bias_corrections of the counts 0 .. size - 1 (0 as 1)."""
    n = torch.arange(size, dtype=torch.float64).clamp(min=1)
    return 1 - beta1 ** n, (1 - beta2 ** n).sqrt()
