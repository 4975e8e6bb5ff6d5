"""The C heap's hold on freed host memory (glibc; nothing happens elsewhere).

glibc keeps freed blocks below its mmap threshold (which grows to 32 MiB as large blocks are freed) in the heap
for reuse, resident. Two start-up steps allocate and free model-sized memory one piece at a time, so the heap
would keep about the whole model resident on every rank, which is what ZeRO-3 exists to avoid:
- the seeded initialisation draws each part of the model whole before keeping its slice (`release_freed`
  between draws);
- ZeRO-3's `deepspeed.initialize` gathers every weight whole, one at a time, to register its gradient hook
  (`large_frees_returned` around it). Measured with tools/bench/memory.py, the heap otherwise kept 0.5 to 1.2 of
  the rank's full weights, depending on the shapes.
A run started with glibc's own MALLOC_MMAP_THRESHOLD_ in its environment keeps that setting throughout
(tools/bench/memory.py sets 1 MiB, so that RSS follows the live tensors as a GPU's allocated-bytes counter does).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Optional, Tuple

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
# Blocks this large are mapped on their own and unmapped when freed inside `large_frees_returned`: every weight
# matrix, none of the small objects (hooks, Python objects) allocated between them.
RETURNED_BLOCK = 1 << 20
# Afterwards, glibc's settings once its dynamic threshold has grown to its maximum (mallopt turns the dynamic
# adjustment off): mmap threshold 32 MiB, trim threshold twice that.
SETTLED_MMAP, SETTLED_TRIM = 32 << 20, 64 << 20


def settled_thresholds() -> Tuple[int, int]:
    """(mmap, trim) thresholds outside `large_frees_returned`: glibc's environment tunables when the run set them,
    else SETTLED_MMAP and SETTLED_TRIM."""
    return _tunable("MALLOC_MMAP_THRESHOLD_", SETTLED_MMAP), _tunable("MALLOC_TRIM_THRESHOLD_", SETTLED_TRIM)


def _tunable(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else default  # glibc ignores what is not a number too


def _libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed() -> None:
    """Hand the heap's free pages back to the OS."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def large_frees_returned(active: bool = True):
    """Inside: blocks of RETURNED_BLOCK bytes and more go back to the OS as soon as they are freed, so allocating
    and freeing weight-sized tensors in turn costs one of them at a time, not all of them."""
    libc = _libc() if active else None
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, RETURNED_BLOCK)
    try:
        yield
    finally:
        if libc is not None:
            mmap, trim = settled_thresholds()
            libc.mallopt(M_MMAP_THRESHOLD, mmap)
            libc.mallopt(M_TRIM_THRESHOLD, trim)
            libc.malloc_trim(0)
