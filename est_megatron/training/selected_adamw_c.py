"""The CPU build of the selected-units AdamW kernel: a few lines of C compiled on first use, called through ctypes.

On the CPU, torch has no way to run AdamW on scattered rows or columns in one pass: its fused kernel needs
contiguous tensors, so the sparse step's alternatives were the masked update (eight passes over the whole block)
or copying the selected rows out and back (measured no cheaper at bench-cpu sizes), which made a sampled plan's
optimizer step dearer than AdamW over every parameter. This loop reads parameter, gradient and both moments of the
selected units once and writes the three it updates once, with torch's fused-kernel arithmetic (fp32, the same
order of operations), in parallel over rows with OpenMP (the same libgomp torch loaded, matched by its soname).

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
#include <stdlib.h>

/* AdamW in torch's fused kernel's arithmetic: from parameter P, gradient G and moments M, V, the new values
   P_, M_, V_ (step size lr / (1 - beta1^n), correction sqrt(1 - beta2^n)). */
#define ADAMW(P, G, M, V, STEP_SIZE, C2_SQRT)                                                  \
    const float M_ = (M) + (1.0f - beta1) * ((G) - (M));                                     \
    const float V_ = beta2 * (V) + (1.0f - beta2) * (G) * (G);                               \
    const float P_ = (P) * decay - (STEP_SIZE) * M_ / (sqrtf(V_) / (C2_SQRT) + eps)

/* n contiguous elements sharing one bias correction (a row, or a whole block). */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void update_run(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                       int64_t n, float step_size, float c2_sqrt, float decay, float beta1, float beta2, float eps) {
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        ADAMW(p[k], g[k], m[k], v[k], step_size, c2_sqrt);
        p[k] = P_; m[k] = M_; v[k] = V_;
    }
}

/* Columns of a row with their own corrections, the unselected ones (keep[k]) keeping their exact values: one
   pass that reads and writes every element of the span, vectorised, where gathering scattered columns (one
   element per instruction) measured 3.5x a dense row at half the columns. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void update_columns(float *restrict p, const float *restrict g, float *restrict m, float *restrict v,
                           int64_t n, const float *restrict step_size, const float *restrict c2_sqrt,
                           const int32_t *restrict keep, float decay, float beta1, float beta2, float eps) {
#pragma omp simd
    for (int64_t k = 0; k < n; k++) {
        const float p0 = p[k], m0 = m[k], v0 = v[k];
        const int kept = keep[k];
        ADAMW(p0, g[k], m0, v0, step_size[k], c2_sqrt[k]);
        p[k] = kept ? p0 : P_; m[k] = kept ? m0 : M_; v[k] = kept ? v0 : V_;
    }
}

/* The units `index` (n_index of them, sorted; NULL: all) along `axis` (0 rows, 1 columns) of a contiguous
   [rows, cols] block. Bias corrections: per unit (c1, c2_sqrt, indexed like the block's units) or the scalars.
   Selected columns are covered by spans that bridge gaps shorter than GAP columns: a head's run of head_dim
   columns is one span and its neighbours are skipped, scattered MLP columns make one span of the whole row. */
#define GAP 16
void adamw_selected_f32(float *p, const float *g, float *m, float *v, int64_t rows, int64_t cols, int axis,
                        const int64_t *index, int64_t n_index, const float *c1, const float *c2_sqrt,
                        double c1_scalar, double c2_sqrt_scalar, double lr, double weight_decay, double beta1,
                        double beta2, double eps, int threads) {
    const float decay = (float)(1.0 - lr * weight_decay), b1 = (float)beta1, b2 = (float)beta2, e = (float)eps;
    const int64_t n_rows = (axis == 0 && index) ? n_index : rows;
    const int per_column = axis == 1 && (index || c1);
    float *step_size = NULL, *c2 = NULL;
    int32_t *keep = NULL;
    int64_t *spans = NULL, n_spans = 0;
    if (per_column) {  /* per column: step size, correction, keep flag; and the spans, shared by every row */
        step_size = malloc(sizeof(float) * 2 * cols);
        c2 = step_size + cols;
        keep = malloc(sizeof(int32_t) * cols);
        spans = malloc(sizeof(int64_t) * 2 * (index ? n_index : 1));
        for (int64_t c = 0; c < cols; c++) {
            step_size[c] = (float)(lr / (c1 ? (double)c1[c] : c1_scalar));
            c2[c] = (float)(c1 ? c2_sqrt[c] : c2_sqrt_scalar);
            keep[c] = index != NULL;
        }
        for (int64_t j = 0; j < (index ? n_index : 1); j++) {
            const int64_t start = index ? index[j] : 0, end = index ? start + 1 : cols;
            if (index)
                keep[start] = 0;
            if (n_spans && start - spans[2 * n_spans - 1] < GAP)
                spans[2 * n_spans - 1] = end;
            else
                spans[2 * n_spans++] = start, spans[2 * n_spans - 1] = end;
        }
    }
#pragma omp parallel for num_threads(threads) schedule(static) if (n_rows > 1 && n_rows * cols >= 32768)
    for (int64_t i = 0; i < n_rows; i++) {
        const int64_t r = (axis == 0 && index) ? index[i] : i;
        float *pr = p + r * cols, *mr = m + r * cols, *vr = v + r * cols;
        const float *gr = g + r * cols;
        if (!per_column) {
            const int unit = axis == 0 && c1;
            update_run(pr, gr, mr, vr, cols, (float)(lr / (unit ? (double)c1[r] : c1_scalar)),
                       (float)(unit ? c2_sqrt[r] : c2_sqrt_scalar), decay, b1, b2, e);
            continue;
        }
        for (int64_t k = 0; k < n_spans; k++) {
            const int64_t a = spans[2 * k], n = spans[2 * k + 1] - a;
            update_columns(pr + a, gr + a, mr + a, vr + a, n, step_size + a, c2 + a, keep + a, decay, b1, b2, e);
        }
    }
    free(step_size);
    free(keep);
    free(spans);
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
    """The kernel's ctypes function, or None (turned off, or no compiler: a warning says which)."""
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
        function.argtypes = [p, p, p, p, i64, i64, ctypes.c_int, p, i64, p, p, d, d, d, d, d, d, d, ctypes.c_int]
        function.restype = None
        _library = function
    return _library or None


def available(like: torch.Tensor) -> bool:
    """Whether the kernel runs on `like`: an fp32 CPU tensor, the compiler having built the kernel."""
    return like.device.type == "cpu" and like.dtype == torch.float32 and library() is not None


def adamw_selected_(views, axis: Optional[int], index: Optional[torch.Tensor], corrections, hyper) -> None:
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
    library()(*(t.data_ptr() for t in views), rows, cols, 0 if axis is None else axis,
              None if index is None else index.data_ptr(), 0 if index is None else index.numel(), *tables,
              *scalars, lr, weight_decay, beta1, beta2, eps, torch.get_num_threads())
