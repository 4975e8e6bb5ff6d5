"""Where each model parameter's elements live in the tensors DeepSpeed hands the base optimizer.

DeepSpeed wraps the optimizer we build: ZeRO-1/2 and its bf16 optimizer flatten every parameter group, split the
flat buffer over the data-parallel ranks and give the base optimizer one fp32 partition per group; ZeRO-3 gives it
one flat fp32 tensor per sub-group, the concatenated partitions of that sub-group's parameters; without a wrapper it
steps the parameters themselves. The sparse AdamW step needs, for each of those tensors, which element range of
which parameter each of its ranges holds (`Segment`s). We read that from DeepSpeed's own bookkeeping:
- ZeRO-1/2 and the bf16 optimizer: `param._hp_mapping` (DeepSpeed's tensor-fragment link, also behind its
  `safe_get_full_fp32_param`): the parameter's fragment on this rank and where it sits in the group's partition;
- ZeRO-3: `grad_position[param_id] = (sub-group, offset, partition numel)`, each parameter's partition covering
  its flat elements [rank * numel, (rank + 1) * numel);
- stage 0 with an fp16/bf16 wrapper: the groups flattened in order.
`segments_of` checks the result against the values DeepSpeed copied there, so a DeepSpeed release that changes this
bookkeeping fails at start-up with one line instead of training the wrong elements.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.distributed as dist

from est_megatron.errors import UsageError
from est_megatron.optim.param_state import Segment

UNSUPPORTED = ("--est-optimizer sparse does not know how {name} lays out the optimizer's tensors (DeepSpeed "
               "{version}); use a ZeRO stage 1-3 config or --est-optimizer dense")


def segments_of(engine, base_optimizer) -> Dict[int, List[Segment]]:
    """id(optimizer tensor) -> the Segments it holds, for the engine's optimizer wrapper around `base_optimizer`."""
    wrapper = engine.optimizer
    params = [p for p in engine.module.parameters() if p.requires_grad]
    if wrapper is base_optimizer:
        layout = own_segments(params)
    elif hasattr(wrapper, "fp32_partitioned_groups_flat"):
        layout = _zero3(wrapper)
    elif params and all(hasattr(p, "_hp_mapping") for p in params):
        layout = _fragments(params, base_optimizer)
    elif hasattr(wrapper, "fp32_groups_flat") and hasattr(wrapper, "fp16_groups"):
        layout = _flat_groups(wrapper.fp16_groups, wrapper.fp32_groups_flat)
    else:
        import deepspeed
        raise UsageError(UNSUPPORTED.format(name=type(wrapper).__name__, version=deepspeed.__version__))
    _check(layout, params, wrapper, base_optimizer)
    return layout


def own_segments(params) -> Dict[int, List[Segment]]:
    """The layout of an optimizer that steps the parameters themselves."""
    return {id(p): [Segment(id(p), 0, 0, p.numel())] for p in params}


def _fragments(params, base_optimizer) -> Dict[int, List[Segment]]:
    layout: Dict[int, List[Segment]] = {}
    for param in params:
        link = param._hp_mapping
        if link is None:  # no element of it in this rank's partition
            continue
        flat = base_optimizer.param_groups[link.param_group_index]["params"][0]
        layout.setdefault(id(flat), []).append(
            Segment(id(param), link.hp_fragment_address.start, link.lp_fragment_address.start,
                    link.lp_fragment_address.numel))
    return layout


def _zero3(wrapper) -> Dict[int, List[Segment]]:
    layout: Dict[int, List[Segment]] = {}
    for group, flat in zip(wrapper.fp16_groups, wrapper.fp32_partitioned_groups_flat):
        segments = layout.setdefault(id(flat), [])
        for param in group:
            _, offset, partition = wrapper.grad_position[wrapper.get_param_id(param)]
            start = dist.get_rank(group=param.ds_process_group) * partition
            numel = min(partition, param.ds_numel - start)
            if numel > 0:
                segments.append(Segment(id(param), offset, start, numel))
    return layout


def _flat_groups(groups, flats) -> Dict[int, List[Segment]]:
    layout: Dict[int, List[Segment]] = {}
    for group, flat in zip(groups, flats):
        offset, segments = 0, layout.setdefault(id(flat), [])
        for param in group:
            segments.append(Segment(id(param), offset, 0, param.numel()))
            offset += param.numel()
    return layout


def _check(layout: Dict[int, List[Segment]], params, wrapper, base_optimizer) -> None:
    """Each segment must hold the values of its parameter's elements (the fp32 copy DeepSpeed made of them)."""
    flats = {id(p): p for group in base_optimizer.param_groups for p in group["params"]}
    if hasattr(wrapper, "fp32_partitioned_groups_flat"):  # ZeRO-3 empties the groups between steps
        flats.update({id(p): p for p in wrapper.fp32_partitioned_groups_flat})
    by_id = {id(p): p for p in params}
    for key, segments in layout.items():
        if key not in flats:
            raise RuntimeError("optimizer layout: a DeepSpeed tensor is not among the base optimizer's; "
                               "use --est-optimizer dense and report the DeepSpeed version")
        flat = flats[key].detach().view(-1)
        for seg in segments:
            param = by_id[seg.param]
            source = param.ds_tensor.view(-1)[:seg.numel] if hasattr(param, "ds_tensor") else \
                param.detach().reshape(-1)[seg.start: seg.start + seg.numel]
            if not torch.equal(flat[seg.offset: seg.offset + seg.numel], source.to(flat.dtype)):
                raise RuntimeError(f"optimizer layout: the fp32 copy of a parameter of shape {tuple(param.shape)} "
                                   f"is not where DeepSpeed's bookkeeping says ({type(wrapper).__name__}); use "
                                   "--est-optimizer dense and report the DeepSpeed version")
