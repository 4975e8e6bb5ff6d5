"""AdamW on the selected rows of a block in one pass over just those elements: a Triton kernel on CUDA, its C
twin on the CPU (est_megatron.training.selected_adamw_c).

Without a kernel the sparse step's alternatives both cost more than AdamW over the whole model: the masked update
reads and writes the whole block eight times, and copying the selected rows out and back for torch's fused kernel
moves each selected element three times. The kernel reads parameter, gradient and both moments of the selected
rows once and writes the three it updates once, the fused kernel's traffic over the selected part only; the rows'
bias corrections come as scalars (one step count serves them all) or as one value per row (unequal counts, early
in a run), so one kernel serves every case. On the CPU one call takes a table of every block of a parameter
group that the step trains in part: the host work per block is a table entry, not a call with a dozen
arguments, and the threads share one parallel region. Triton is used on CUDA when importable (it ships with torch's
CUDA builds); `TRITON_INTERPRET=1` runs the Triton kernel on the CPU, which is how the tests check it without a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from est_megatron.training import selected_adamw_c

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch comes without Triton
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_ROWS, BLOCK_COLS = 4, 256


def _triton_runs(like: torch.Tensor) -> bool:
    return triton is not None and (like.is_cuda or (INTERPRETED and like.device.type == "cpu"))


def available(like: torch.Tensor) -> bool:
    """Whether a kernel runs on `like`: Triton on CUDA (or on the CPU under TRITON_INTERPRET=1), else the C kernel
    on fp32 CPU tensors where it could be built."""
    return _triton_runs(like) or selected_adamw_c.available(like)


if triton is not None:
    # the selected counts change every step: specialising on them (==1, %16) would compile new variants mid-run
    @triton.jit(do_not_specialize=["row_index", "corr1", "corr2", "n_rows", "n_cols"])
    def _adamw_selected_kernel(param, grad, exp_avg, exp_avg_sq, row_index, corr1, corr2, n_rows, n_cols,
                               lr, weight_decay, beta1, beta2, eps, scalar1, scalar2, ROWS_INDEXED: tl.constexpr,
                               PER_ROW: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        r_ok, c_ok = r < n_rows, c < n_cols
        rows = tl.load(row_index + r, mask=r_ok, other=0) if ROWS_INDEXED else r
        offsets = rows.to(tl.int64)[:, None] * n_cols + c.to(tl.int64)[None, :]
        ok = r_ok[:, None] & c_ok[None, :]
        p = tl.load(param + offsets, mask=ok).to(tl.float32)
        g = tl.load(grad + offsets, mask=ok).to(tl.float32)
        m = tl.load(exp_avg + offsets, mask=ok).to(tl.float32)
        v = tl.load(exp_avg_sq + offsets, mask=ok).to(tl.float32)
        if PER_ROW:
            c1 = tl.load(corr1 + rows, mask=r_ok, other=1.0)[:, None]
            c2 = tl.load(corr2 + rows, mask=r_ok, other=1.0)[:, None]
        else:
            c1, c2 = scalar1, scalar2
        p = p * (1.0 - lr * weight_decay)
        m = m + (1.0 - beta1) * (g - m)
        v = beta2 * v + (1.0 - beta2) * g * g
        p = p - (lr / c1) * m / (tl.sqrt(v) / c2 + eps)
        tl.store(param + offsets, p.to(param.dtype.element_ty), mask=ok)
        tl.store(exp_avg + offsets, m.to(exp_avg.dtype.element_ty), mask=ok)
        tl.store(exp_avg_sq + offsets, v.to(exp_avg_sq.dtype.element_ty), mask=ok)


Corrections = Tuple[Union[float, torch.Tensor], Union[float, torch.Tensor]]


@dataclass(frozen=True)
class Block:
    """A [rows, cols] rectangle of flat optimizer tensors (`tensors`: parameter, gradient, both moments, contiguous;
    the rectangle from element `offset`) and which of its rows train: `index` (int64, counted from the rectangle's
    first row; None: every row) with `corrections`, (1 - beta1^n, sqrt(1 - beta2^n)) as floats, or as float32
    tensors with one value per row of the rectangle."""

    tensors: Tuple[torch.Tensor, ...]
    offset: int
    rows: int
    cols: int
    index: Optional[torch.Tensor]
    corrections: Corrections


def adamw_blocks_(blocks: Sequence[Block], hyper) -> None:
    """AdamW in place on the trained rows of `blocks` (all on one device): one C call for all of them on the CPU,
    one Triton launch per block on CUDA. Everything else of their tensors is neither read nor written."""
    if not _triton_runs(blocks[0].tensors[0]):
        selected_adamw_c.adamw_blocks_(blocks, hyper)
        return
    for block in blocks:
        views = [t.narrow(0, block.offset, block.rows * block.cols).view(block.rows, block.cols)
                 for t in block.tensors]
        _launch(views, block.index, block.corrections, hyper)


def _launch(views: Sequence[torch.Tensor], index: Optional[torch.Tensor], corrections: Corrections, hyper) -> None:
    """The Triton kernel on one [rows, cols] block (`views`: parameter, gradient and both moments)."""
    param = views[0]
    rows, cols = param.shape
    lr, weight_decay, beta1, beta2, eps = hyper
    per_unit = torch.is_tensor(corrections[0])
    if per_unit:
        corr1, corr2 = (c.to(device=param.device, dtype=torch.float32).contiguous() for c in corrections)
        scalar1 = scalar2 = 1.0
    else:
        corr1 = corr2 = param  # unused: the scalars serve
        scalar1, scalar2 = corrections
    index = None if index is None else index.to(param.device, non_blocking=True)
    n_rows = rows if index is None else index.numel()
    if n_rows == 0 or cols == 0:
        return
    grid = (triton.cdiv(n_rows, BLOCK_ROWS), triton.cdiv(cols, BLOCK_COLS))
    _adamw_selected_kernel[grid](
        *views, param if index is None else index, corr1, corr2, n_rows, cols, lr, weight_decay, beta1, beta2,
        eps, scalar1, scalar2, ROWS_INDEXED=index is not None, PER_ROW=per_unit, BLOCK_R=BLOCK_ROWS,
        BLOCK_C=BLOCK_COLS)
