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

/* The rows `index` (n_index of them; NULL: all `rows`) of a contiguous [rows, cols] block. Bias corrections: one
   per row (c1, c2_sqrt, indexed like the block's rows) or the scalars. */
void adamw_selected_f32(float *p, const float *g, float *m, float *v, int64_t rows, int64_t cols,
                        const int64_t *index, int64_t n_index, const float *c1, const float *c2_sqrt,
                        double c1_scalar, double c2_sqrt_scalar, double lr, double weight_decay, double beta1,
                        double beta2, double eps, int threads) {
    const float decay = (float)(1.0 - lr * weight_decay);
    const int64_t n_rows = index ? n_index : rows;
#pragma omp parallel for num_threads(threads) schedule(static) if (n_rows > 1 && n_rows * cols >= 32768)
    for (int64_t i = 0; i < n_rows; i++) {
        const int64_t r = index ? index[i] : i;
        const int64_t at = r * cols;
        update_row(p + at, g + at, m + at, v + at, cols, (float)(lr / (c1 ? (double)c1[r] : c1_scalar)),
                   (float)(c1 ? c2_sqrt[r] : c2_sqrt_scalar), decay, (float)beta1, (float)beta2, (float)eps);
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
            return ctypes.CDLL(_build(compiler, flags)).adamw_selected_f32
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
        p, i64, d = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
        function.argtypes = [p, p, p, p, i64, i64, p, i64, p, p, d, d, d, d, d, d, d, ctypes.c_int]
        function.restype = None
        _library = function
    return _library or None


def available(like: torch.Tensor) -> bool:
    """Whether the kernel runs on `like`: an fp32 CPU tensor, the compiler having built the kernel."""
    return like.device.type == "cpu" and like.dtype == torch.float32 and library() is not None


def adamw_selected_(views, index: Optional[torch.Tensor], corrections, hyper) -> None:
    """selected_adamw.adamw_selected_ on the CPU: the same arguments, the same result."""
    param = views[0]
    rows, cols = param.shape if param.dim() == 2 else (param.numel(), 1)
    lr, weight_decay, beta1, beta2, eps = hyper
    assert all(t.is_contiguous() and t.dtype == torch.float32 for t in views)
    per_unit = torch.is_tensor(corrections[0])
    if per_unit:
        c1, c2 = (c.to(torch.float32).contiguous() for c in corrections)
        tables, scalars = (c1.data_ptr(), c2.data_ptr()), (1.0, 1.0)
    else:
        tables, scalars = (None, None), corrections
    if index is not None:
        index = index.to(torch.int64).contiguous()
    library()(*(t.data_ptr() for t in views), rows, cols, None if index is None else index.data_ptr(),
              0 if index is None else index.numel(), *tables, *scalars, lr, weight_decay, beta1, beta2, eps,
              torch.get_num_threads())
