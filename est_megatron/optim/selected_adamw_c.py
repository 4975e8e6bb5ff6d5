"""The CPU build of the selected-rows AdamW kernel: a few lines of C compiled on first use, called through ctypes.

On the CPU, torch has no way to run AdamW on scattered rows in one pass: its fused kernel needs contiguous
tensors, so the sparse step's alternatives were the masked update (eight passes over the whole block) or copying
the selected rows out and back (measured no cheaper at bench-cpu sizes), which made a sampled plan's optimizer
step dearer than AdamW over every parameter. This loop reads parameter, gradient and both moments of the selected
rows once and writes the three it updates once, with torch's fused-kernel arithmetic (fp32, the same order of
operations), vectorised for AVX-512/AVX2 where the CPU has them and in parallel over rows with OpenMP (the same
libgomp torch loaded, matched by its soname).

Built with the system C compiler (`$CC`, else `cc`), which DeepSpeed's CPU communication op needs anyway, into
`$EST_MEGATRON_KERNEL_CACHE` (default ~/.cache/est_megatron), named by a hash of source, compiler and flags, so
a changed source is rebuilt and concurrent ranks never see a half-written library. Without a compiler the sparse
step keeps its torch routes, with one warning. `EST_MEGATRON_CPU_KERNEL=0` turns the kernel off (benchmarks,
ablations).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from typing import Optional

import torch

from est_megatron.optim.hyper import AdamHyper

SOURCE = r"""
#include <math.h>
#include <stdint.h>

/* AdamW in torch's fused kernel's arithmetic on n contiguous elements (a row) sharing one bias correction: step
   size lr / (1 - beta1^n), correction sqrt(1 - beta2^n). */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void update_row(float *restrict p, const float *restrict g, float *restrict m, float *restrict v, int64_t n,
                       float step_size, float c2_sqrt, float decay, float beta1, float beta2, float eps) {
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        const float exp_avg = m[k] + (1.0f - beta1) * (g[k] - m[k]);
        const float exp_avg_sq = beta2 * v[k] + (1.0f - beta2) * g[k] * g[k];
        p[k] = p[k] * decay - step_size * exp_avg / (sqrtf(exp_avg_sq) / c2_sqrt + eps);
        m[k] = exp_avg;
        v[k] = exp_avg_sq;
    }
}

/* One rectangle (selected_adamw._entries): parameter, gradient and both moments from the pointers, rows of `cols`
   elements; the rows `index` (n_rows of them, counted from the rectangle's first row; NULL: the first n_rows)
   train, with step size lr / c1 (decoupled weight decay is the call's). Bias corrections: one per row of the
   rectangle (c1, c2_sqrt) or the scalars. */
typedef struct {
    float *p;
    const float *g;
    float *m, *v;
    int64_t n_rows, cols;
    const int64_t *index;
    const float *c1, *c2_sqrt;
    double c1_scalar, c2_sqrt_scalar, lr;
} block_t;

/* Every block in one parallel region: each thread takes its static share of every block's rows, with no barrier
   between blocks (they are disjoint). */
void adamw_blocks_f32(const block_t *blocks, int64_t n_blocks, double lr, double weight_decay, double beta1,
                      double beta2, double eps, int threads) {
    const float decay = (float)(1.0 - lr * weight_decay);
    int64_t work = 0;
    for (int64_t b = 0; b < n_blocks; b++)
        work += blocks[b].n_rows * blocks[b].cols;
#pragma omp parallel num_threads(threads) if (work >= 32768)
    for (int64_t b = 0; b < n_blocks; b++) {
        const block_t *k = &blocks[b];
#pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < k->n_rows; i++) {
            const int64_t r = k->index ? k->index[i] : i;
            const int64_t at = r * k->cols;
            update_row(k->p + at, k->g + at, k->m + at, k->v + at, k->cols,
                       (float)(k->lr / (k->c1 ? (double)k->c1[r] : k->c1_scalar)),
                       (float)(k->c1 ? k->c2_sqrt[r] : k->c2_sqrt_scalar), decay, (float)beta1, (float)beta2,
                       (float)eps);
        }
    }
}
"""
FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp"]
WITHOUT_OPENMP = [flag for flag in FLAGS if flag != "-fopenmp"]  # a compiler without OpenMP: one thread

_library = None  # the loaded kernel, False where it cannot be built or is turned off


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cache_dir() -> str:
    return os.environ.get("EST_MEGATRON_KERNEL_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                         "est_megatron")


def _build(compiler: str, flags) -> str:
    """The library's path, compiling it first if this source, compiler and flags have not been built before."""
    digest = hashlib.sha256("\0".join([SOURCE, compiler, *flags]).encode()).hexdigest()[:16]
    directory = _cache_dir()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"selected_adamw_{digest}.so")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory(dir=directory) as work:
            source = os.path.join(work, "selected_adamw.c")
            with open(source, "w") as f:
                f.write(SOURCE)
            built = os.path.join(work, "selected_adamw.so")
            subprocess.run([compiler, *flags, source, "-o", built, "-lm"], check=True, capture_output=True,
                           text=True)
            os.replace(built, path)  # atomic: another rank building the same file loses nothing
    return path


def _load(compiler: str):
    for flags in (FLAGS, WITHOUT_OPENMP):
        try:
            return ctypes.CDLL(_build(compiler, flags)).adamw_blocks_f32
        except subprocess.CalledProcessError as error:
            failure = error
    raise failure


def library():
    """The kernel's ctypes function, or None: turned off, or it could not be built (a warning says why)."""
    global _library
    if _library is None:
        _library = False
        if os.environ.get("EST_MEGATRON_CPU_KERNEL", "1") == "0":
            return None
        compiler = _compiler()
        try:
            if compiler is None:
                raise OSError("no C compiler (set $CC or install gcc)")
            function = _load(compiler)
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", None) or error
            warnings.warn(f"est_megatron: the CPU sparse-AdamW kernel could not be built ({str(detail).strip()[:200]});"
                          " the sparse step falls back to torch operations, correct but slower")
            return None
        i64, d = ctypes.c_int64, ctypes.c_double
        function.argtypes = [ctypes.POINTER(BlockEntry), i64, d, d, d, d, d, ctypes.c_int]
        function.restype = None
        _library = function
    return _library or None


def available(like: torch.Tensor) -> bool:
    """Whether the kernel runs on `like`: an fp32 CPU tensor, the compiler having built the kernel."""
    return like.device.type == "cpu" and like.dtype == torch.float32 and library() is not None


class BlockEntry(ctypes.Structure):
    """The C kernel's block_t: the fields of selected_adamw._entries, in order."""

    _fields_ = [("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("m", ctypes.c_void_p), ("v", ctypes.c_void_p),
                ("n_rows", ctypes.c_int64), ("cols", ctypes.c_int64), ("index", ctypes.c_void_p),
                ("c1", ctypes.c_void_p), ("c2_sqrt", ctypes.c_void_p), ("c1_scalar", ctypes.c_double),
                ("c2_sqrt_scalar", ctypes.c_double), ("lr", ctypes.c_double)]


def adamw_entries_(entries, hyper: AdamHyper) -> None:
    """selected_adamw.adamw_blocks_ on the CPU, in one call over the blocks' entries (fp32 tensors; each entry
    carries the learning rate of its step size, `hyper`'s gives the weight decay)."""
    table = (BlockEntry * len(entries))(*(BlockEntry(*entry) for entry in entries))
    library()(table, len(entries), hyper.lr, hyper.weight_decay, hyper.beta1, hyper.beta2, hyper.eps,
              torch.get_num_threads())
