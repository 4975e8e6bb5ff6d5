"""ZeRO-3 and layers a plan skips: the stale-gradient fix and the start-up check that it still applies.

ZeRO-1/2 fill missing gradients with zeros in their flat buffers, so a parameter outside the plan sees a zero
gradient. ZeRO-3 keeps gradient partitions in a flat buffer that is *copied into* at the first micro-batch and
never cleared: a parameter skipped in this step would be updated with its stale gradient of an earlier step. The
trainer zeroes that buffer before each step's first backward (`clear_stale_zero3_grads`), which makes ZeRO-3 train
exactly like ZeRO-1/2 (tests/test_training_zero.py compares the three stages' losses).
"""
from __future__ import annotations

import torch

from est_megatron.errors import UsageError


def check_zero3_internals(engine) -> None:
    """The ZeRO-3 stale-gradient fix reads a private DeepSpeed attribute: fail at start-up if a DeepSpeed version
    renamed it, rather than letting skipped layers silently train on stale gradients."""
    if not isinstance(getattr(engine.optimizer, "grad_partitions_flat_buffer", None), torch.Tensor):
        import deepspeed
        raise UsageError(f"DeepSpeed {deepspeed.__version__}'s ZeRO-3 optimizer has no grad_partitions_flat_buffer, "
                         "which est_megatron clears so that layers a plan skips do not train on stale gradients; "
                         "install a DeepSpeed version that has it (tested: 0.19.8) or use ZeRO-1/2")


def clear_stale_zero3_grads(engine) -> None:
    engine.optimizer.grad_partitions_flat_buffer.zero_()
