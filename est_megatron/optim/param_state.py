"""What the sparse AdamW keeps about each model parameter: how a plan selects it (`Unit`), where its elements sit in
the optimizer's tensors (`Segment`), and one `ParamRecord` of its step counts and what the current step trains.

One record per parameter, rather than a table per field keyed by id(param), so that everything about a parameter
is looked up once and cannot fall out of step with the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

ALL = None  # a trained index of ALL: the whole parameter trains this step
SKIP = "skip"  # nothing of the parameter trains this step


@dataclass(frozen=True)
class Unit:
    """How the plan selects a parameter: by rows (`axis` 0) or as the whole tensor at once (None)."""

    name: str  # global parameter name: the key of its step counts in checkpoints
    shape: Tuple[int, ...]  # this rank's (tensor-parallel) shape
    axis: Optional[int]

    @property
    def size(self) -> int:
        return 1 if self.axis is None else self.shape[self.axis]

    @property
    def row_length(self) -> int:
        """Elements per row of the 2-D view ([N] is viewed as [N, 1])."""
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else 1


@dataclass(frozen=True)
class Segment:
    """`numel` elements of one parameter, from its flat element `start`, at `offset` of an optimizer tensor."""

    param: int  # id() of the model parameter
    offset: int
    start: int
    numel: int


@dataclass
class ParamRecord:
    """One model parameter's state in the sparse step: its step counts, kept across steps and in checkpoints, and
    what the current plan trains of it, with this step's copies of both on the devices that ask for them."""

    unit: Unit
    counts: torch.Tensor  # int64 steps trained, one per unit (CPU)
    least: int = 0  # the least and most of `counts`, kept so that a step need not scan them
    most: int = 0
    trained: object = ALL  # ALL | SKIP | sorted index of its trained rows (CPU)
    lr_scale: float = 1.0  # this step's learning-rate factor
    # this step's device copies: ("index", device) -> trained index; ("corrections", device, betas) -> the two
    # bias corrections of every count
    on_device: Dict[tuple, object] = field(default_factory=dict)

    def measure(self) -> None:
        """Read `least` and `most` from the counts (after they changed other than all by one)."""
        self.least, self.most = (int(x) for x in torch.aminmax(self.counts))

    def span(self) -> Tuple[int, int]:
        """The least and most of the counts, each at least 1 (a count never trained is 1 to bias_corrections)."""
        return max(self.least, 1), max(self.most, 1)


def rectangles(start: int, numel: int, unit: Unit):
    """Split elements [start, start + numel) of a parameter, viewed as [rows, row_length], into at most three
    rectangles contiguous in memory (a partial first row, whole rows, a partial last row). Yields
    (offset inside the range, rows, columns, the slice of the parameter's rows the rectangle covers)."""
    width = unit.row_length
    pos, end = start, start + numel
    while pos < end:
        row, col = divmod(pos, width)
        if col or end - pos < width:  # a partial row
            cols = min(width - col, end - pos)
            rows = 1
        else:
            rows, cols = (end - pos) // width, width
            col = 0
        yield pos - start, rows, cols, slice(row, row + rows)
        pos += rows * cols
