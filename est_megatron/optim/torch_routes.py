"""The sparse step's updates in torch alone, where no selected-rows kernel runs (no Triton on a GPU, no C compiler,
a dtype the C kernel lacks), and for ranges trained whole.

A range with one bias correction is one plain AdamW update with torch's fused kernel (`FusedBatch`): runs of
trained rows go to it as views, scattered ones are copied out, stepped and written back. Where counts differ too
much for one correction to serve, the masked multi-pass update (`adamw_`) corrects each row by its own count.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from est_megatron.optim.hyper import AdamHyper, bias_corrections, step_corrections, uniform_step

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

    def __init__(self, like: torch.Tensor, hyper: AdamHyper):
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


def update_block(views, counts: torch.Tensor, mask: Optional[torch.Tensor], span: Tuple[int, int],
                 hyper: AdamHyper, batch: FusedBatch) -> None:
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


_FUSED_AVAILABLE: Dict[tuple, bool] = {}  # (device type, dtype) -> whether this torch has a fused AdamW kernel


def fused_available(like: torch.Tensor) -> bool:
    """Whether torch's fused AdamW kernel runs on `like`'s device and dtype (tried once, on one-element tensors)."""
    key = (like.device.type, like.dtype)
    if key not in _FUSED_AVAILABLE:
        probe = [[torch.zeros(1, dtype=like.dtype, device=like.device)] for _ in range(4)]
        try:
            fused_adamw_(*probe, [torch.ones((), device=like.device)],
                         AdamHyper(lr=0.0, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0))
            _FUSED_AVAILABLE[key] = True
        except (AttributeError, NotImplementedError, RuntimeError):
            _FUSED_AVAILABLE[key] = False
    return _FUSED_AVAILABLE[key]


def fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, hyper: AdamHyper) -> None:
    """torch's fused AdamW kernel (what torch.optim.AdamW(fused=True) calls) over lists of contiguous tensors, each
    at the step count in `steps` (0-d float tensors on the device, shared: the public functional form would add 1
    to a step tensor once per appearance in the list)."""
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=hyper.lr, beta1=hyper.beta1,
                        beta2=hyper.beta2, weight_decay=hyper.weight_decay, eps=hyper.eps, amsgrad=False,
                        maximize=False)


def adamw_(param, grad, exp_avg, exp_avg_sq, weight, correction1, correction2_sqrt, hyper: AdamHyper) -> None:
    """One AdamW update in place. `weight`: None (every element trains) or 1/0 per row, broadcasting;
    where it is 0 every tensor keeps its exact value. The bias corrections are floats (then with no weight this is
    torch.optim.AdamW's arithmetic exactly) or tensors broadcasting over rows, one per row. Either way
    the update takes as many passes over memory as torch's."""
    lr, beta1, beta2, eps, weight_decay = hyper
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
