"""Activation checkpointing: run a function keeping only its inputs, and run it again when its gradient is needed.

`recomputed` is the mechanism the attention core and the transformer layer call; which of them recompute is the
policy in `model.recompute` (`Recompute`), which sets their flags. The recomputed forward is called with the same
`LayerPlan` object, so it gathers the same heads and columns with the same 1/p scales.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint


def recomputed(enabled: bool, function: Callable, *args):
    """`function(*args)`, recomputed in the backward pass when `enabled` and autograd records the forward."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)
