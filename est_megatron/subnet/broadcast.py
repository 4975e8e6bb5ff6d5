"""One plan for every rank: global rank 0 draws it, every rank receives it as one packed int64 tensor.

The packed size is fixed (`packed_capacity`), so the broadcast needs no size exchange. A None plan (a dense step)
travels as an all-zero tensor (version 0) and comes back as None on every rank.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from est_megatron.config import ModelConfig
from est_megatron.subnet.plan import StepPlan, packed_capacity, unpack


def _device(group) -> torch.device:
    """NCCL moves only CUDA tensors; gloo only CPU ones."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_plan(plan: Optional[StepPlan], model_cfg: ModelConfig, src: int = 0, group=None) -> Optional[StepPlan]:
    """The plan of global rank `src` on every rank of `group` (other ranks pass None). Returns it on CPU."""
    device = _device(group)
    if dist.get_rank() == src:
        packed = (plan.pack(model_cfg) if plan is not None
                  else torch.zeros(packed_capacity(model_cfg), dtype=torch.int64))
        packed = packed.to(device)
    else:
        packed = torch.empty(packed_capacity(model_cfg), dtype=torch.int64, device=device)
    dist.broadcast(packed, src=src, group=group)
    if int(packed[0]) == 0:
        return None
    return unpack(packed, model_cfg)


def check_plan_consistency(plan: Optional[StepPlan], model_cfg: ModelConfig, group=None) -> None:
    """All-reduce the plan checksum with MIN and MAX; raise if any rank holds a different plan."""
    value = 0 if plan is None else plan.checksum(model_cfg)
    device = _device(group)
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(high, op=dist.ReduceOp.MAX, group=group)
    if int(low) != int(high):
        step = "dense" if plan is None else plan.step
        raise RuntimeError(f"ranks hold different subnetwork plans at step {step} (checksums {int(low)} .. "
                           f"{int(high)}); every rank must use the plan broadcast from rank 0")
