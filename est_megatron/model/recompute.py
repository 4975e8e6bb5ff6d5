"""Which activations to recompute (the policy; the mechanism is `model.activation_checkpoint.recomputed`): keep a
block's input instead of its intermediate activations and run the block again when its gradient is needed (one
extra forward of that block for the memory).

Megatron's two granularities: `selective` recomputes the attention core (RoPE, the attention kernel and the
head reshapes: everything between the QKV projection and the output projection), `full` recomputes whole
transformer layers (the first N of each pipeline stage, every one by default).

The recomputed forward is called with the same `LayerPlan` object, so it gathers the same heads and columns
with the same 1/p scales and gradients equal those of the stored-activation run. Under tensor parallelism
every TP rank recomputes the same layers in the same order, so the recomputed all-reduces pair up; a pipeline
stage recomputes only its own layers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from est_megatron.errors import UsageError
from est_megatron.model.layer import TransformerLayer


@dataclass(frozen=True)
class Recompute:
    """Which activations to recompute: granularity None (none), "selective" or "full"; `num_layers` (full
    only): recompute the first N transformer layers of each pipeline stage, None for all of them."""

    granularity: Optional[str] = None
    num_layers: Optional[int] = None

    @classmethod
    def from_args(cls, args) -> "Recompute":
        granularity = getattr(args, "recompute_granularity", None)
        if getattr(args, "recompute_activations", False):
            if granularity == "full":
                raise UsageError("--recompute-activations (selective) conflicts with --recompute-granularity "
                                 "full; pass one of them")
            granularity = "selective"
        num_layers = getattr(args, "recompute_num_layers", None)
        if num_layers is not None and granularity != "full":
            raise UsageError("--recompute-num-layers needs --recompute-granularity full; add it or drop the flag")
        if num_layers is not None and num_layers <= 0:
            raise UsageError(f"--recompute-num-layers must be positive, got {num_layers}")
        return cls(granularity, num_layers)

    def apply(self, model: torch.nn.Module) -> None:
        """Mark the transformer layers of `model` (this rank's pipeline stage) for recompute."""
        layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
        if self.num_layers is not None and self.num_layers > len(layers):
            raise UsageError(f"--recompute-num-layers {self.num_layers} exceeds the {len(layers)} transformer "
                             "layers of a pipeline stage; pass at most that many (or omit it for all)")
        full = len(layers) if self.num_layers is None else self.num_layers
        for index, layer in enumerate(layers):
            layer.recompute = self.granularity == "full" and index < full
            layer.attn.recompute_core = self.granularity == "selective"
