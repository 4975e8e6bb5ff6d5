"""AdamW that updates exactly what the step's subnetwork trained, and leaves the rest untouched.

A zero gradient is not "not trained": plain AdamW moves a parameter whose gradient is zero by its stale momentum
and by weight decay. Under EST a row is in the plan a quarter of the time in stage 1, so it would drift about three
blind steps per real one; measured on the demo corpus (README) that left EST 16.6% above dense validation loss,
against 1.3% with the rest left alone. So for every step's plan (paper eq. 4 trains the subnetwork phi of Phi):
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
parameters themselves): `bind` learns, through est_megatron.training.optimizer_layout, which element range of which
parameter each range of those tensors holds. Untrained layers are skipped outright, so a sampled step costs less than
a dense one; a range the plan trains whole, with one bias correction, is one plain AdamW update (torch's fused
kernel). Every partly trained block of a parameter group goes to one kernel call that reads and writes just
the trained rows (est_megatron.training.selected_adamw: Triton on CUDA, C on the CPU). Where no kernel runs (no
Triton on a GPU, no C compiler, a dtype the C kernel lacks) runs of trained rows go to the fused kernel as views
and scattered ones are copied out, stepped by it and written back; unequal counts take a masked multi-pass update.
"""
from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from est_megatron.subnet.plan import StepPlan
from est_megatron.training import selected_adamw


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


ALL = None  # a trained index of ALL: the whole parameter trains this step
SKIP = "skip"  # nothing of the parameter trains this step


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
        self.lr_scales: Dict[int, float] = {}  # id(param) -> this step's learning-rate factor (absent: 1)
        self.units: Dict[int, Unit] = {}
        self.layers: Dict[int, object] = {}  # global layer number -> module with trained_slices(layer_plan)
        self.segments: Dict[int, List[Segment]] = {}  # id(optimizer tensor) -> its parameters' ranges
        self.localize = lambda plan: plan
        self.counts: Dict[int, torch.Tensor] = {}  # id(param) -> int64 steps trained, one per unit (CPU)
        self.trained: Dict[int, object] = {}  # id(param) -> ALL | SKIP | sorted index of its trained rows (CPU)
        self.extremes: Dict[int, Tuple[int, int]] = {}  # id(param) -> (least, most) of its counts
        self._counted = True  # the current plan's counts are in (set_plan clears it)
        self._tables: Dict[tuple, object] = {}  # this step's device copies (_device_indices, _device_corrections)

    # ---- wiring ------------------------------------------------------------------------------------------------
    def bind(self, named_parameters, layers, segments: Dict[int, List[Segment]], localize=None) -> None:
        """`named_parameters`: (global name, parameter) of this rank's model; `layers`: its transformer layers
        (each with `.index` and `trained_slices(layer_plan)`); `segments`: where each parameter lives in the
        optimizer's tensors (optimizer_layout.segments_of); `localize`: global plan -> this tensor-parallel rank's."""
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
            self.units[id(param)] = unit = Unit(name, shape, axes.get(id(param)))
            self.counts.setdefault(id(param), torch.zeros(unit.size, dtype=torch.int64))
            self._measure(id(param))
        self.segments = segments
        self.localize = localize or self.localize
        self.set_plan(None)

    def set_plan(self, plan: Optional[StepPlan]) -> None:
        """What the next optimizer step trains: a global plan (None: the dense model, everything). A unit of a
        layer the plan runs trains at rate p = (the fraction of the parameter's rows the plan trains) x (the
        fraction of layers it runs), and under `lr_power` its step size has learning rate lr * p^lr_power."""
        self.trained = {key: ALL for key in self.units}
        self.lr_scales = {}
        if plan is not None and not plan.is_dense:
            local = self.localize(plan)
            for number, layer in self.layers.items():
                layer_plan = local.layers[number]
                for param, _, index in layer.trained_slices(layer_plan if layer_plan.active else None):
                    if not layer_plan.active:
                        self.trained[id(param)] = SKIP
                        continue
                    if index is not None:
                        self.trained[id(param)] = index.cpu()
                    if self.lr_power:
                        rate = plan.rates[2] * (1.0 if index is None else index.numel() / self.units[id(param)].size)
                        if rate < 1.0:
                            self.lr_scales[id(param)] = rate ** self.lr_power
        self._counted = False

    # ---- state -------------------------------------------------------------------------------------------------
    def _count_trained(self) -> None:
        """Add this step to the counts of what it trains (once per step: ZeRO-3 steps sub-group by sub-group)."""
        if self._counted:
            return
        for key, trained in self.trained.items():
            if trained is ALL or self.bias_correction == "step":
                self.counts[key] += 1
                self.extremes[key] = tuple(x + 1 for x in self.extremes[key])  # every count moved up by one
            elif trained is not SKIP:
                self.counts[key][trained] += 1
                self._measure(key)
        self._counted = True
        self._tables = {}

    def _measure(self, key: int) -> None:
        self.extremes[key] = tuple(int(x) for x in torch.aminmax(self.counts[key]))

    def _span(self, key: int) -> Tuple[int, int]:
        """The least and most of a parameter's counts, each at least 1 (a count never trained is 1 to
        bias_corrections)."""
        least, most = self.extremes[key]
        return max(least, 1), max(most, 1)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["unit_steps"] = {self.units[key].name: count.clone() for key, count in self.counts.items()}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("unit_steps", {})
        super().load_state_dict(state_dict)
        by_name = {unit.name: key for key, unit in self.units.items()}
        self.set_counts({by_name[name]: count for name, count in saved.items() if name in by_name})

    def set_counts(self, counts: Dict[int, torch.Tensor]) -> None:
        """Replace the step counts of the parameters given (id(param) -> counts), e.g. from a checkpoint."""
        for key, count in counts.items():
            self.counts[key].copy_(count)
            self._measure(key)
        self._tables = {}  # device copies of the counts' corrections are stale now

    # ---- the step ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        self._count_trained()
        for group in self.param_groups:
            hyper = (group["lr"], group["weight_decay"], *group["betas"], group["eps"])
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
                        batches[key] = FusedBatch(flat, scaled_lr(hyper, scale))
                    return batches[key]
                segments = self.segments[id(flat)]
                scales = {self.lr_scales.get(s.param, 1.0) for s in segments}
                if len(scales) == 1 and self._trains_whole(segments):  # one piece, if one correction does
                    batch = batch_of(*scales)
                    spans = [self._span(s.param) for s in segments]
                    step = uniform_step(min(low for low, _ in spans), max(high for _, high in spans), batch.hyper,
                                        flat.dtype)
                    if batch.available and step is not None:
                        batch.add([[t] for t in tensors], step)
                        continue
                tensors = tuple(t.view(-1) for t in tensors)
                kernel = selected_adamw.available(flat)
                for segment in segments:
                    self._update_segment(tensors, segment, hyper, batch_of, blocks if kernel else None)
            if blocks:
                selected_adamw.adamw_blocks_(blocks, hyper)
            for batch in batches.values():
                batch.run()
        return loss

    def _trains_whole(self, segments: List[Segment]) -> bool:
        return all(self.trained[segment.param] is ALL for segment in segments)

    def _update_segment(self, tensors, segment: Segment, hyper, batch_of,
                        blocks: Optional[List[selected_adamw.Block]]) -> None:
        trained = self.trained[segment.param]
        if trained is SKIP:
            return
        scale = self.lr_scales.get(segment.param, 1.0)
        hyper, batch = scaled_lr(hyper, scale), batch_of(scale)
        unit = self.units[segment.param]
        if unit.axis is not None and blocks is not None:
            self._select_blocks(tensors, segment, unit, trained, hyper, batch, blocks)
            return
        count, span = self.counts[segment.param], self._span(segment.param)
        parts = [t.narrow(0, segment.offset, segment.numel) for t in tensors]
        if unit.axis is None:  # trains whole or not at all (SKIP, above)
            update_block(parts, count, None, span, hyper, batch)
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
            update_block(views, count[row_slice], piece_mask, span, hyper, batch)

    def _select_blocks(self, tensors, segment: Segment, unit: Unit, trained, hyper, batch: FusedBatch,
                       blocks: List[selected_adamw.Block]) -> None:
        """The kernel route (selected_adamw): each rectangle of the segment becomes a block of the group's one
        kernel call, its trained rows with this step's device tables, so a block costs its selected elements and a
        table entry of host work. (The masked and copying routes spend tens of small torch calls on every block;
        on a GPU that host work, not memory traffic, is what a sampled step costs.)"""
        step = uniform_step(*self._span(segment.param), hyper, tensors[0].dtype)
        for start, rows, cols, row_slice in rectangles(segment.start, segment.numel, unit):
            index = self._selected_index(segment.param, trained, row_slice, unit, tensors[0].device)
            if index is not None and index.numel() == 0:
                continue
            offset = segment.offset + start
            if index is None and step is not None:
                batch.add([[t.narrow(0, offset, rows * cols)] for t in tensors], step)
                continue
            if step is not None:
                corrections = step_corrections(step, hyper)
            else:
                corrections = tuple(table[segment.param][row_slice]
                                    for table in self._device_corrections(tensors[0].device, hyper))
            blocks.append(selected_adamw.Block(tensors, offset, rows, cols, index, corrections, hyper[0]))

    def _selected_index(self, key: int, trained, row_slice: slice, unit: Unit, device) -> Optional[torch.Tensor]:
        """The trained rows inside `row_slice`, on `device`, counted from the slice's start (None: all of them)."""
        if trained is ALL:
            return None
        if row_slice.start == 0 and row_slice.stop == unit.size:
            return self._device_indices(device)[key]
        inside = trained[(trained >= row_slice.start) & (trained < row_slice.stop)] - row_slice.start
        if inside.numel() == row_slice.stop - row_slice.start:
            return None
        return inside.to(device, non_blocking=True)

    def _device_indices(self, device) -> Dict[int, torch.Tensor]:
        """This step's trained indices of every parameter on `device`, moved in one copy (_to_device)."""
        key = ("indices", device)
        if key not in self._tables:
            self._tables[key] = self._to_device({k: t for k, t in self.trained.items() if torch.is_tensor(t)}, device)
        return self._tables[key]

    def _device_corrections(self, device, hyper) -> Tuple[Dict[int, torch.Tensor], Dict[int, torch.Tensor]]:
        """Every unit's bias corrections (bias_corrections of its count) on `device`, per parameter, moved in one
        copy each; keyed by the betas, which they depend on."""
        key = ("corrections", device, hyper[2:4])
        if key not in self._tables:
            sizes = [count.numel() for count in self.counts.values()]
            self._tables[key] = tuple(self._to_device(dict(zip(self.counts, c.float().split(sizes))), device)
                                      for c in bias_corrections(torch.cat(list(self.counts.values())), hyper))
        return self._tables[key]

    @staticmethod
    def _to_device(host: Dict[int, torch.Tensor], device) -> Dict[int, torch.Tensor]:
        if not host or torch.device(device).type == "cpu":  # already there: no copy to make
            return host
        moved = torch.cat(list(host.values())).to(device, non_blocking=True)
        return dict(zip(host, moved.split([t.numel() for t in host.values()])))


def scaled_lr(hyper, scale: float) -> tuple:
    """`hyper` (lr, weight decay, beta1, beta2, eps) with the step size's learning rate times `scale` and the
    decoupled weight decay per step, lr * weight_decay, as it was."""
    lr, weight_decay, *rest = hyper
    return hyper if scale == 1.0 else (lr * scale, weight_decay / scale, *rest)


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


# Fewest elements per trained run for which handing the fused kernel one piece per run beats copying the selected
# rows out and back. CPU: measured on bench-cpu's MLP rows (a piece costs a few microseconds of views and dispatch;
# break-even near 2,000 elements per run). Elsewhere an estimate: a piece's few microseconds of host time against
# the copies' extra ~12 bytes per element of GPU memory traffic. (Where selected_adamw has a kernel, the usual
# case, selected rows take it instead, and this setting does not apply.)
PIECE_ELEMENTS = {"cpu": 4096}
DEFAULT_PIECE_ELEMENTS = 1 << 17


class FusedBatch:
    """Contiguous pieces of optimizer tensors for one call of torch's fused AdamW kernel (one pass over memory where
    the masked update takes eight), each with its own step count; `run` makes the call. Selected rows that are
    scattered are copied out (index_select), stepped by the kernel and written back into the parameter and
    moments at once, block by block, so the copies never add up: 2 more passes over the selected elements, against
    8 over the whole block for the masked update."""

    def __init__(self, like: torch.Tensor, hyper):
        self.available = like.grad.dtype == like.dtype and fused_available(like)
        self.device, self.hyper = like.device, hyper
        self.min_elements = PIECE_ELEMENTS.get(like.device.type, DEFAULT_PIECE_ELEMENTS)
        self.lists = ([], [], [], [])
        self.steps: List[torch.Tensor] = []
        self._step_tensors: Dict[int, torch.Tensor] = {}

    def update(self, views, mask: Optional[torch.Tensor], step: int) -> bool:
        """AdamW at `step` on the rows `mask` selects of a [rows, cols] block (`views`: parameter, gradient and
        moments; mask None: all of it), as views of long runs (batched for `run`) or as copies; False (nothing
        done) where the fused kernel does not apply."""
        if not self.available:
            return False
        if mask is None:
            self.add([[t] for t in views], step)
            return True
        sizes = _runs(mask)
        if views[0].numel() >= self.min_elements * (len(sizes) // 2):
            self.add([list(t.split(sizes)[1::2]) for t in views], step)
            return True
        index = mask.nonzero().flatten().to(self.device, non_blocking=True)
        copies = [t.index_select(0, index) for t in views]
        fused_adamw_(*([c] for c in copies), [self._step_tensor(step)], self.hyper)
        for i in (0, 2, 3):  # parameter, exp_avg, exp_avg_sq (the gradient's copy is spent)
            views[i].index_copy_(0, index, copies[i])
        return True

    def add(self, pieces, step: int) -> None:
        """`pieces`: lists of parameter, gradient and moment pieces, all corrected as at `step`."""
        for into, more in zip(self.lists, pieces):
            into.extend(more)
        self.steps.extend([self._step_tensor(step)] * len(pieces[0]))

    def _step_tensor(self, step: int) -> torch.Tensor:
        if step not in self._step_tensors:
            self._step_tensors[step] = torch.tensor(float(step), device=self.device)
        return self._step_tensors[step]

    def run(self) -> None:
        if self.steps:
            fused_adamw_(*self.lists, self.steps, self.hyper)


def update_block(views, counts: torch.Tensor, mask: Optional[torch.Tensor], span: Tuple[int, int], hyper,
                 batch: FusedBatch) -> None:
    """AdamW on the rows of a block (`views`: parameter, gradient and moments, [rows, cols] or flat) that `mask`
    selects (None: all of them), each bias-corrected by its count in `counts` (`span`: the least and
    most count of the whole parameter). Where one correction serves them all, the fused kernel updates just them
    (`batch`: views of contiguous runs, or copies of scattered rows); else the masked multi-pass `adamw_` does."""
    step = uniform_step(*span, hyper, views[0].dtype)
    if step is None:  # the parameter's counts are too far apart (early in training): perhaps the block's are not
        selected = (counts if mask is None else counts[mask]).clamp(min=1)
        step = uniform_step(int(selected.min()), int(selected.max()), hyper, views[0].dtype)
    if step is None:
        corrections = tuple(c.to(views[0].dtype).view(-1, 1).to(views[0].device, non_blocking=True)
                            for c in bias_corrections(counts, hyper))
    else:
        if batch.update(views, mask, step):
            return
        corrections = step_corrections(step, hyper)
    weight = None
    if mask is not None:
        weight = mask.to(views[0].dtype).view(-1, 1).to(views[0].device, non_blocking=True)
    adamw_(*views, weight, *corrections, hyper)


def _runs(mask: torch.Tensor) -> List[int]:
    """Lengths of the alternating runs of a boolean mask, unselected first (that one possibly empty): split sizes
    whose odd-numbered pieces are the selected units."""
    edges = (torch.nonzero(mask[1:] != mask[:-1]).flatten() + 1).tolist()
    bounds = ([0, 0] if bool(mask[0]) else [0]) + edges + [mask.numel()]
    return [b - a for a, b in zip(bounds, bounds[1:])]


@functools.lru_cache(maxsize=4096)  # a step asks the same few questions of every block
def uniform_step(low: int, high: int, hyper, dtype: torch.dtype) -> Optional[int]:
    """A step count whose bias corrections give every count in [low, high] (all at least 1) exactly the update its
    own count gives, or None. AdamW, fused or not, uses lr / (1 - beta1^n) and sqrt(1 - beta2^n), computed in
    double and rounded to the update's precision (fp32 but for fp64 tensors); both are monotonic in n, so equal
    at `low` and `high` means equal throughout, and they stop changing after a few hundred steps (~330 at
    beta2 = 0.95), so in a long run every count soon shares them."""
    lr, _, beta1, beta2, _ = hyper

    def seen(n):
        return tuple(_rounded(x, dtype) for x in (lr / (1 - beta1 ** n), math.sqrt(1 - beta2 ** n)))
    return high if low == high or seen(low) == seen(high) else None


def _rounded(x: float, dtype: torch.dtype) -> float:
    return x if dtype == torch.float64 else struct.unpack("f", struct.pack("f", x))[0]


def step_corrections(step: int, hyper) -> Tuple[float, float]:
    """(1 - beta1^n, sqrt(1 - beta2^n)) for one step count n shared by every unit updated."""
    _, _, beta1, beta2, _ = hyper
    return 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)


def bias_corrections(counts: torch.Tensor, hyper) -> Tuple[torch.Tensor, torch.Tensor]:
    """(1 - beta1^n, sqrt(1 - beta2^n)) of every unit's step count n, in float64 (a unit never trained is outside
    this step's plan: any finite value does), looked up in a table of every count up to the largest: a gather per
    unit instead of two powers (tens of thousands of units, every step while counts are unequal)."""
    _, _, beta1, beta2, _ = hyper
    largest = int(counts.max()) if counts.numel() else 0
    table1, table2 = _correction_table(beta1, beta2, 1 << max(largest, 1).bit_length())  # grows by doubling
    n = counts.clamp(min=1)
    return table1[n], table2[n]


@functools.lru_cache(maxsize=8)
def _correction_table(beta1: float, beta2: float, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """bias_corrections of the counts 0 .. size - 1 (0 as 1)."""
    n = torch.arange(size, dtype=torch.float64).clamp(min=1)
    return 1 - beta1 ** n, (1 - beta2 ** n).sqrt()


_FUSED_AVAILABLE: Dict[tuple, bool] = {}  # (device type, dtype) -> whether this torch has a fused AdamW kernel


def fused_available(like: torch.Tensor) -> bool:
    """Whether torch's fused AdamW kernel runs on `like`'s device and dtype (tried once, on one-element tensors)."""
    key = (like.device.type, like.dtype)
    if key not in _FUSED_AVAILABLE:
        probe = [[torch.zeros(1, dtype=like.dtype, device=like.device)] for _ in range(4)]
        try:
            fused_adamw_(*probe, [torch.ones((), device=like.device)], (0.0, 0.0, 0.9, 0.95, 1e-8))
            _FUSED_AVAILABLE[key] = True
        except (AttributeError, NotImplementedError, RuntimeError):
            _FUSED_AVAILABLE[key] = False
    return _FUSED_AVAILABLE[key]


def fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, hyper) -> None:
    """torch's fused AdamW kernel (what torch.optim.AdamW(fused=True) calls) over lists of contiguous tensors, each
    at the step count in `steps` (0-d float tensors on the device, shared: the public functional form would add 1
    to a step tensor once per appearance in the list)."""
    lr, weight_decay, beta1, beta2, eps = hyper
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                        weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)


def adamw_(param, grad, exp_avg, exp_avg_sq, weight, correction1, correction2_sqrt, hyper) -> None:
    """One AdamW update in place. `weight`: None (every element trains) or 1/0 per row, broadcasting;
    where it is 0 every tensor keeps its exact value. The bias corrections are floats (then with no weight this is
    torch.optim.AdamW's arithmetic exactly) or tensors broadcasting over rows, one per row. Either way
    the update takes as many passes over memory as torch's."""
    lr, weight_decay, beta1, beta2, eps = hyper
    if weight_decay:
        param.mul_(1 - lr * weight_decay if weight is None else 1 - (lr * weight_decay) * weight)
    if weight is None:
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    else:
        exp_avg.lerp_(grad, (1 - beta1) * weight)
        exp_avg_sq.lerp_(grad * grad, (1 - beta2) * weight)
    if lr == 0:
        return
    if weight is None and not torch.is_tensor(correction1):
        denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / correction1)
        return
    # lr/c1 * m / (sqrt(v)/c2 + eps) = m / ((sqrt(v) + eps*c2) * c1/(lr*c2)); dividing that scale by the weight
    # gives an element outside the plan an infinite denominator, so it moves by exactly zero
    scale = correction1 / (lr * correction2_sqrt)
    if weight is not None:
        scale = scale / weight
    denom = exp_avg_sq.sqrt().add_(eps * correction2_sqrt).mul_(scale)
    param.addcdiv_(exp_avg, denom, value=-1.0)
