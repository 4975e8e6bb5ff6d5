"""AdamW that updates exactly what the step's subnetwork trained, and leaves the rest untouched.

A zero gradient is not "not trained": plain AdamW moves a parameter whose gradient is zero by its stale momentum
and by weight decay. Under EST a row is in the plan a quarter of the time in stage 1, so it would drift about three
blind steps per real one, which costs EST much of its validation loss against dense training (the README measures
it). So for every step's plan (paper eq. 4 trains the subnetwork phi of Phi):
- a skipped layer's parameters and the unsampled rows of the fused QKV and [gate; up] weights and of the
  (input-major) output and down projections keep their values and both Adam moments, and get no weight decay;
- everything the plan trains gets AdamW's update.

Bias correction (`bias_correction="unit"`, the default): every *unit* (a row of a QKV, up, output or down
projection, a layer's norms and output biases, a parameter outside the layers) counts the steps that
trained it, and its moments are corrected with its own count, 1 - beta^count. A unit trained n times has then had
exactly AdamW over its n gradients, as if the rest of the model did not exist. (Corrected with the global step
instead, a unit first trained at step t >> 1 would move by (1 - beta1) / sqrt(1 - beta2) = 0.45 of a normal first
step.) The counts are per row, not per element, so they cost nothing next to the moments; they travel in
the optimizer's state dict. `bias_correction="step"` uses the optimizer's step count for every unit instead
(TensorFlow's LazyAdam), kept for ablations.

The optimizer runs on whatever tensors DeepSpeed hands it (the flat fp32 partitions of ZeRO-1/2/3, or the
parameters themselves): `bind` learns, through est_megatron.optim.partitions, which element range of which
parameter each range of those tensors holds. Untrained layers are skipped outright, so a sampled step costs less than
a dense one; a range the plan trains whole, with one bias correction, is one plain AdamW update (torch's fused
kernel). Every partly trained block of a parameter group goes to one kernel call that reads and writes just
the trained rows (est_megatron.optim.selected_adamw: Triton on CUDA, C on the CPU); where no kernel runs, the torch
routes of est_megatron.optim.torch_routes do.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from est_megatron.optim import selected_adamw
from est_megatron.optim.hyper import AdamHyper, bias_corrections, step_corrections, uniform_step
from est_megatron.optim.param_state import ALL, SKIP, ParamRecord, Segment, Unit, rectangles
from est_megatron.optim.torch_routes import FusedBatch, update_block
from est_megatron.subnet.plan import StepPlan


class SparseAdamW(torch.optim.Optimizer):
    """AdamW (decoupled weight decay) over the step's plan. Call `bind` once after `deepspeed.initialize` and
    `set_plan` before every optimizer step; with no plan set (or a dense one) every unit trains."""

    def __init__(self, params, lr: float, betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, bias_correction: str = "unit", lr_power: float = 0.0):
        """`bias_correction`: "unit" corrects each row by the steps that trained it; "step" by the optimizer's
        step count for everything (as TensorFlow's LazyAdam does), an ablation. `lr_power`: a unit that a sampled
        plan trains at rate p (set_plan) takes steps of learning rate lr * p^lr_power (0: lr for all); its
        decoupled weight decay stays lr * weight_decay per step it trains."""
        if bias_correction not in ("unit", "step"):
            raise ValueError(f"bias_correction {bias_correction!r}: use 'unit' or 'step'")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.bias_correction = bias_correction
        self.lr_power = lr_power
        self.records: Dict[int, ParamRecord] = {}  # id(param) -> its record
        self.layers: Dict[int, object] = {}  # global layer number -> module with trained_slices(layer_plan)
        self.segments: Dict[int, List[Segment]] = {}  # id(optimizer tensor) -> its parameters' ranges
        self.localize = lambda plan: plan
        self._counted = True  # the current plan's counts are in (set_plan clears it)

    # ---- wiring ------------------------------------------------------------------------------------------------
    def bind(self, named_parameters, layers, segments: Dict[int, List[Segment]], localize=None) -> None:
        """`named_parameters`: (global name, parameter) of this rank's model; `layers`: its transformer layers
        (each with `.index` and `trained_slices(layer_plan)`); `segments`: where each parameter lives in the
        optimizer's tensors (partitions.segments_of); `localize`: global plan -> this tensor-parallel rank's."""
        axes = {}  # a parameter outside the layers trains whole at every step
        for layer in layers:
            self.layers[layer.index] = layer
            for param, axis, _ in layer.trained_slices(None):
                if axis not in (0, None):
                    raise ValueError(f"trained_slices gave axis {axis}: the sparse step trains rows (0) or whole "
                                     "tensors (None); store a weight so that its sampled units are rows")
                axes[id(param)] = axis
        for name, param in named_parameters:
            shape = tuple(getattr(param, "ds_shape", param.shape))  # ZeRO-3 keeps the full shape aside
            unit = Unit(name, shape, axes.get(id(param)))
            known = self.records.get(id(param))  # bound before: its counts stay
            counts = known.counts if known else torch.zeros(unit.size, dtype=torch.int64)
            self.records[id(param)] = record = ParamRecord(unit, counts)
            record.measure()
        self.segments = segments
        self.localize = localize or self.localize
        self.set_plan(None)

    def set_plan(self, plan: Optional[StepPlan]) -> None:
        """What the next optimizer step trains: a global plan (None: the dense model, everything). A unit of a
        layer the plan runs trains at rate p = (the fraction of the parameter's rows the plan trains) x (the
        fraction of layers it runs), and under `lr_power` its step size has learning rate lr * p^lr_power."""
        for record in self.records.values():
            record.trained, record.lr_scale = ALL, 1.0
        if plan is not None and not plan.is_dense:
            local = self.localize(plan)
            for number, layer in self.layers.items():
                layer_plan = local.layers[number]
                for param, _, index in layer.trained_slices(layer_plan if layer_plan.active else None):
                    record = self.records[id(param)]
                    if not layer_plan.active:
                        record.trained = SKIP
                        continue
                    if index is not None:
                        record.trained = index.cpu()
                    if self.lr_power:
                        rate = plan.rates[2] * (1.0 if index is None else index.numel() / record.unit.size)
                        if rate < 1.0:
                            record.lr_scale = rate ** self.lr_power
        self._counted = False

    # ---- state -------------------------------------------------------------------------------------------------
    def _count_trained(self) -> None:
        """Add this step to the counts of what it trains (once per step: ZeRO-3 steps sub-group by sub-group)."""
        if self._counted:
            return
        for record in self.records.values():
            if record.trained is ALL or self.bias_correction == "step":
                record.counts += 1
                record.least, record.most = record.least + 1, record.most + 1  # every count moved up by one
            elif record.trained is not SKIP:
                record.counts[record.trained] += 1
                record.measure()
        self._counted = True
        self._forget_device_copies()

    def _forget_device_copies(self) -> None:
        for record in self.records.values():
            record.on_device.clear()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["unit_steps"] = {record.unit.name: record.counts.clone() for record in self.records.values()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("unit_steps", {})
        super().load_state_dict(state_dict)
        by_name = {record.unit.name: key for key, record in self.records.items()}
        self.set_counts({by_name[name]: count for name, count in saved.items() if name in by_name})

    def set_counts(self, counts: Dict[int, torch.Tensor]) -> None:
        """Replace the step counts of the parameters given (id(param) -> counts), e.g. from a checkpoint."""
        for key, count in counts.items():
            record = self.records[key]
            record.counts.copy_(count)
            record.measure()
        self._forget_device_copies()  # device copies of the counts' corrections are stale now

    # ---- the step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        self._count_trained()
        for group in self.param_groups:
            hyper = AdamHyper(lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
                              weight_decay=group["weight_decay"])
            batches: Dict[tuple, FusedBatch] = {}
            blocks: List[selected_adamw.Block] = []  # the kernel route's, for one call per group
            for flat in group["params"]:
                if flat.grad is None:
                    continue
                state = self.state[flat]
                if not state:
                    state["exp_avg"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(flat, memory_format=torch.preserve_format)
                tensors = (flat, flat.grad, state["exp_avg"], state["exp_avg_sq"])

                def batch_of(scale: float, flat=flat) -> FusedBatch:
                    """The fused kernel's batch for `flat`'s device and dtypes at learning rate lr * scale."""
                    key = (flat.device, flat.dtype, flat.grad.dtype, scale)
                    if key not in batches:
                        batches[key] = FusedBatch(flat, hyper.scaled(scale))
                    return batches[key]
                records = [self.records[segment.param] for segment in self.segments[id(flat)]]
                scales = {record.lr_scale for record in records}
                if len(scales) == 1 and all(record.trained is ALL for record in records):
                    batch = batch_of(*scales)  # one piece, if one correction does
                    spans = [record.span() for record in records]
                    step = uniform_step(min(low for low, _ in spans), max(high for _, high in spans), batch.hyper,
                                        flat.dtype)
                    if batch.available and step is not None:
                        batch.add([[t] for t in tensors], step)
                        continue
                tensors = tuple(t.view(-1) for t in tensors)
                kernel = selected_adamw.available(flat)
                for segment in self.segments[id(flat)]:
                    self._update_segment(tensors, segment, hyper, batch_of, blocks if kernel else None)
            if blocks:
                selected_adamw.adamw_blocks_(blocks, hyper)
            for batch in batches.values():
                batch.run()
        return loss

    def _update_segment(self, tensors, segment: Segment, hyper: AdamHyper, batch_of,
                        blocks: Optional[List[selected_adamw.Block]]) -> None:
        record = self.records[segment.param]
        trained = record.trained
        if trained is SKIP:
            return
        hyper, batch = hyper.scaled(record.lr_scale), batch_of(record.lr_scale)
        unit = record.unit
        if unit.axis is not None and blocks is not None:
            self._select_blocks(tensors, segment, record, hyper, batch, blocks)
            return
        parts = [t.narrow(0, segment.offset, segment.numel) for t in tensors]
        if unit.axis is None:  # trains whole or not at all (SKIP, above)
            update_block(parts, record.counts, None, record.span(), hyper, batch)
            return
        mask = None
        if trained is not ALL:
            mask = torch.zeros(unit.size, dtype=torch.bool)
            mask[trained] = True
        for start, rows, cols, row_slice in rectangles(segment.start, segment.numel, unit):
            piece_mask = None if mask is None else mask[row_slice]
            if piece_mask is not None:
                if not piece_mask.any():
                    continue
                if piece_mask.all():
                    piece_mask = None
            views = [t.narrow(0, start, rows * cols).view(rows, cols) for t in parts]
            update_block(views, record.counts[row_slice], piece_mask, record.span(), hyper, batch)

    def _select_blocks(self, tensors, segment: Segment, record: ParamRecord, hyper: AdamHyper, batch: FusedBatch,
                       blocks: List[selected_adamw.Block]) -> None:
        """The kernel route (selected_adamw): each rectangle of the segment becomes a block of the group's one
        kernel call, its trained rows with this step's device tables, so a block costs its selected elements and a
        table entry of host work. (The masked and copying routes spend tens of small torch calls on every block;
        on a GPU that host work, not memory traffic, is what a sampled step costs.)"""
        step = uniform_step(*record.span(), hyper, tensors[0].dtype)
        for start, rows, cols, row_slice in rectangles(segment.start, segment.numel, record.unit):
            index = self._selected_index(record, row_slice, tensors[0].device)
            if index is not None and index.numel() == 0:
                continue
            offset = segment.offset + start
            if index is None and step is not None:
                batch.add([[t.narrow(0, offset, rows * cols)] for t in tensors], step)
                continue
            if step is not None:
                corrections = step_corrections(step, hyper)
            else:
                corrections = tuple(c[row_slice] for c in self._device_corrections(record, tensors[0].device, hyper))
            blocks.append(selected_adamw.Block(tensors, offset, rows, cols, index, corrections, hyper.lr))

    def _selected_index(self, record: ParamRecord, row_slice: slice, device) -> Optional[torch.Tensor]:
        """The trained rows inside `row_slice`, on `device`, counted from the slice's start (None: all of them)."""
        trained = record.trained
        if trained is ALL:
            return None
        if row_slice.start == 0 and row_slice.stop == record.unit.size:
            return self._device_index(record, device)
        inside = trained[(trained >= row_slice.start) & (trained < row_slice.stop)] - row_slice.start
        if inside.numel() == row_slice.stop - row_slice.start:
            return None
        return inside.to(device, non_blocking=True)

    def _device_index(self, record: ParamRecord, device) -> torch.Tensor:
        """`record`'s trained index on `device`: this step's indices of every parameter move there in one copy
        (_to_device) on the first request."""
        key = ("index", device)
        if key not in record.on_device:
            holders = [r for r in self.records.values() if torch.is_tensor(r.trained)]
            for holder, moved in zip(holders, _to_device([r.trained for r in holders], device)):
                holder.on_device[key] = moved
        return record.on_device[key]

    def _device_corrections(self, record: ParamRecord, device, hyper: AdamHyper) -> Tuple[torch.Tensor, ...]:
        """`record`'s bias corrections (bias_corrections of its counts) on `device`: every parameter's move there
        in one copy each on the first request; keyed by the betas, which they depend on."""
        key = ("corrections", device, (hyper.beta1, hyper.beta2))
        if key not in record.on_device:
            records = list(self.records.values())
            sizes = [r.counts.numel() for r in records]
            moved = [_to_device(c.float().split(sizes), device)
                     for c in bias_corrections(torch.cat([r.counts for r in records]), hyper)]
            for holder, pair in zip(records, zip(*moved)):
                holder.on_device[key] = pair
        return record.on_device[key]


def _to_device(host: Sequence[torch.Tensor], device) -> Sequence[torch.Tensor]:
    """`host`'s tensors on `device`, moved in one copy."""
    if not host or torch.device(device).type == "cpu":  # already there: no copy to make
        return host
    moved = torch.cat(list(host)).to(device, non_blocking=True)
    return moved.split([t.numel() for t in host])
