"""AdamW on the selected rows of blocks in one pass over just those elements: a Triton kernel on CUDA, its C twin
on the CPU (est_megatron.optim.selected_adamw_c).

Without a kernel the sparse step's alternatives both cost more than AdamW over the whole model: the masked update
reads and writes the whole block eight times, and copying the selected rows out and back for torch's fused kernel
moves each selected element three times. The kernel reads parameter, gradient and both moments of the selected
rows once and writes the three it updates once, the fused kernel's traffic over the selected part only; the rows'
bias corrections come as scalars (one step count serves them all) or as one value per row (unequal counts, early
in a run), so one kernel serves every case. One call takes a table of every partly trained block of a parameter
group (pointers, rows, index, corrections), as multi-tensor and grouped-GEMM kernels do: the host work per block
is a table entry, not a call or a launch (on a GPU the launches, not the memory traffic, were what a sampled step
cost). Triton is used on CUDA when importable (it ships with torch's CUDA builds); `TRITON_INTERPRET=1` runs the
Triton kernel on the CPU, which is how the tests check it without a GPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from est_megatron.optim import selected_adamw_c
from est_megatron.optim.hyper import AdamHyper

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU build of torch comes without Triton
    triton = None

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_ROWS, BLOCK_COLS = 8, 256
INT_FIELDS = 9  # an entry's int64 fields (_entries), then its FLOAT_FIELDS:
FLOAT_FIELDS = 3  # two scalar corrections and the learning rate of its step size


def _triton_runs(like: torch.Tensor) -> bool:
    return triton is not None and (like.is_cuda or (INTERPRETED and like.device.type == "cpu"))


def available(like: torch.Tensor) -> bool:
    """Whether a kernel runs on `like`: Triton on CUDA (or on the CPU under TRITON_INTERPRET=1), else the C kernel
    on fp32 CPU tensors where it could be built."""
    return _triton_runs(like) or selected_adamw_c.available(like)


if triton is not None:
    # The block table: one row of int64 fields per block (what _launch writes): the addresses of the rectangle's
    # first element in parameter, gradient and both moments, its trained rows, its row length, the addresses of its
    # row index (0: every row) and of its per-row corrections (0: the block's scalars, in the float table, which
    # also holds the learning rate of each block's step size).
    PARAM, GRAD, EXP_AVG, EXP_AVG_SQ = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2), tl.constexpr(3)
    N_ROWS, COLS, INDEX, CORR1, CORR2 = tl.constexpr(4), tl.constexpr(5), tl.constexpr(6), tl.constexpr(7), \
        tl.constexpr(8)
    FIELDS, FLOATS = tl.constexpr(INT_FIELDS), tl.constexpr(FLOAT_FIELDS)
    TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @triton.jit
    def _adamw_blocks_kernel(blocks, scalars, tiles, decay, beta1, beta2, eps, P_DTYPE: tl.constexpr,
                             G_DTYPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        """One program per tile (`tiles`: block number, first of its BLOCK_R trained rows), as grouped GEMMs
        address their groups: the block table gives the pointers."""
        b = tl.load(tiles + 2 * tl.program_id(0))
        entry = blocks + b * FIELDS
        r = tl.load(tiles + 2 * tl.program_id(0) + 1) + tl.arange(0, BLOCK_R)
        r_ok = r < tl.load(entry + N_ROWS)
        cols = tl.load(entry + COLS)
        index = tl.load(entry + INDEX)
        if index != 0:
            rows = tl.load(index.to(tl.pointer_type(tl.int64)) + r, mask=r_ok, other=0)
        else:
            rows = r.to(tl.int64)
        corr1 = tl.load(entry + CORR1)
        if corr1 != 0:
            c1 = tl.load(corr1.to(tl.pointer_type(tl.float32)) + rows, mask=r_ok, other=1.0)
            c2 = tl.load(tl.load(entry + CORR2).to(tl.pointer_type(tl.float32)) + rows, mask=r_ok, other=1.0)
        else:
            c1 = tl.zeros([BLOCK_R], dtype=tl.float32) + tl.load(scalars + FLOATS * b)
            c2 = tl.zeros([BLOCK_R], dtype=tl.float32) + tl.load(scalars + FLOATS * b + 1)
        lr = tl.load(scalars + FLOATS * b + 2)
        step_size, c2 = (lr / c1)[:, None], c2[:, None]
        param = tl.load(entry + PARAM).to(tl.pointer_type(P_DTYPE))
        grad = tl.load(entry + GRAD).to(tl.pointer_type(G_DTYPE))
        exp_avg = tl.load(entry + EXP_AVG).to(tl.pointer_type(P_DTYPE))
        exp_avg_sq = tl.load(entry + EXP_AVG_SQ).to(tl.pointer_type(P_DTYPE))
        for start in range(0, cols, BLOCK_C):
            c = start + tl.arange(0, BLOCK_C)
            offsets = rows[:, None] * cols + c.to(tl.int64)[None, :]
            ok = r_ok[:, None] & (c < cols)[None, :]
            p = tl.load(param + offsets, mask=ok).to(tl.float32)
            g = tl.load(grad + offsets, mask=ok).to(tl.float32)
            m = tl.load(exp_avg + offsets, mask=ok).to(tl.float32)
            v = tl.load(exp_avg_sq + offsets, mask=ok).to(tl.float32)
            p = p * decay
            m = m + (1.0 - beta1) * (g - m)
            v = beta2 * v + (1.0 - beta2) * g * g
            p = p - step_size * m / (tl.sqrt(v) / c2 + eps)
            tl.store(param + offsets, p.to(P_DTYPE), mask=ok)
            tl.store(exp_avg + offsets, m.to(P_DTYPE), mask=ok)
            tl.store(exp_avg_sq + offsets, v.to(P_DTYPE), mask=ok)


Corrections = Tuple[Union[float, torch.Tensor], Union[float, torch.Tensor]]


@dataclass(frozen=True)
class Block:
    """A [rows, cols] rectangle of flat optimizer tensors (`tensors`: parameter, gradient, both moments, contiguous;
    the rectangle from element `offset`) and which of its rows train: `index` (int64, counted from the rectangle's
    first row; None: every row) with `corrections`, (1 - beta1^n, sqrt(1 - beta2^n)) as floats, or as float32
    tensors with one value per row of the rectangle; `lr`: the learning rate of the block's step size (decoupled
    weight decay is the call's, lr * weight_decay)."""

    tensors: Tuple[torch.Tensor, ...]
    offset: int
    rows: int
    cols: int
    index: Optional[torch.Tensor]
    corrections: Corrections
    lr: float


def adamw_blocks_(blocks: Sequence[Block], hyper: AdamHyper) -> None:
    """AdamW in place on the trained rows of `blocks` (all on one device): one C call for all of them on the CPU,
    one Triton launch per (parameter, gradient) dtype pair on CUDA. Everything else of their tensors is neither
    read nor written."""
    keep = []  # tensors the entries point into, alive until the kernels have been called
    if not _triton_runs(blocks[0].tensors[0]):
        assert all(t.dtype == torch.float32 for block in blocks for t in block.tensors)
        selected_adamw_c.adamw_entries_(_entries(blocks, keep), hyper)
        return
    by_dtype = {}
    for block in blocks:
        by_dtype.setdefault((block.tensors[0].dtype, block.tensors[1].dtype), []).append(block)
    for (param_dtype, grad_dtype), same in by_dtype.items():
        _launch(_entries(same, keep), same[0].tensors[0].device, param_dtype, grad_dtype, hyper)


def _entries(blocks: Sequence[Block], keep: list) -> List[tuple]:
    """What both kernels read of each block: the addresses of its first element in parameter, gradient and both
    moments, its trained rows, its row length, the addresses of its row index (0: every row) and of its per-row
    corrections (0: none), its scalar corrections and its learning rate. The tensors the addresses point into go
    to `keep`."""
    device = blocks[0].tensors[0].device
    entries = []
    for block in blocks:
        assert all(t.is_contiguous() for t in block.tensors)
        pointers = [t.data_ptr() + block.offset * t.element_size() for t in block.tensors]
        n_rows, index = block.rows, 0
        if block.index is not None:
            keep.append(block.index.to(device=device, dtype=torch.int64).contiguous())
            n_rows, index = keep[-1].numel(), keep[-1].data_ptr()
        c1, c2 = block.corrections
        if torch.is_tensor(c1):
            keep += [c.to(device=device, dtype=torch.float32).contiguous() for c in (c1, c2)]
            tables, scalars = [keep[-2].data_ptr(), keep[-1].data_ptr()], [1.0, 1.0]
        else:
            tables, scalars = [0, 0], [c1, c2]
        entries.append((*pointers, n_rows, block.cols, index, *tables, *scalars, block.lr))
    return entries


def _launch(entries: Sequence[tuple], device: torch.device, param_dtype: torch.dtype, grad_dtype: torch.dtype,
            hyper: AdamHyper) -> None:
    """The Triton kernel over `entries` (_entries): their table, scalar corrections and tiles built on the host,
    moved in one copy, one launch."""
    table = [field for entry in entries for field in entry[:INT_FIELDS]]
    scalars = [value for entry in entries for value in entry[INT_FIELDS:]]
    tiles = _tiles(torch.tensor(table[4::INT_FIELDS]))  # each entry's trained rows
    if tiles.numel() == 0:
        return
    packed = torch.cat([torch.tensor(table, dtype=torch.int64), tiles.flatten()]).to(device)
    _adamw_blocks_kernel[(tiles.shape[0],)](
        packed, torch.tensor(scalars, dtype=torch.float32).to(device), packed[len(table):],
        1.0 - hyper.lr * hyper.weight_decay, hyper.beta1, hyper.beta2, hyper.eps,
        P_DTYPE=TRITON_DTYPES[param_dtype], G_DTYPE=TRITON_DTYPES[grad_dtype], BLOCK_R=BLOCK_ROWS, BLOCK_C=BLOCK_COLS)


def _tiles(trained_rows: torch.Tensor) -> torch.Tensor:
    """[tiles, 2] int64: (block number, first row) of every BLOCK_ROWS trained rows of each block."""
    per_block = (trained_rows + BLOCK_ROWS - 1) // BLOCK_ROWS
    block = torch.repeat_interleave(torch.arange(len(per_block)), per_block)
    starts = torch.cumsum(per_block, 0) - per_block  # each block's first tile
    return torch.stack([block, (torch.arange(len(block)) - starts[block]) * BLOCK_ROWS], 1)
