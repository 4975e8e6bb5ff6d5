"""est_megatron.host_heap: inside `large_frees_returned`, weight-sized blocks freed in turn (as ZeRO-3's
initialize frees each weight it gathered) go back to the OS instead of staying resident in glibc's heap."""
import ctypes
import platform

import pytest
import torch

from est_megatron import host_heap

MIB = 1 << 20


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def gather_and_free_in_turn(count: int, kept: list) -> None:
    """Allocate, write and free `count` 8 MiB blocks, a small allocation kept between each (hooks, Python objects
    in DeepSpeed's loop), so freed blocks sit below live memory and the heap cannot shrink past them."""
    for i in range(count):
        block = torch.full((2 * MIB,), float(i))
        kept.append(torch.ones(1024))
        del block


@pytest.mark.skipif(platform.system() != "Linux" or host_heap._libc() is None, reason="glibc's mallopt")
def test_blocks_freed_inside_go_back_to_the_os():
    libc = ctypes.CDLL("libc.so.6")
    kept = []
    libc.mallopt(host_heap.M_MMAP_THRESHOLD, 64 * MIB)  # as after glibc's dynamic threshold has grown
    try:
        before = resident_bytes()
        with host_heap.large_frees_returned():
            gather_and_free_in_turn(24, kept)
            inside = resident_bytes() - before
        assert inside < 24 * MIB, f"{inside / MIB:.0f} MiB stayed resident after 24 blocks of 8 MiB were freed"
    finally:
        libc.mallopt(host_heap.M_MMAP_THRESHOLD, host_heap.SETTLED_MMAP)


def test_a_run_started_with_glibc_thresholds_keeps_them(monkeypatch):
    """tools/bench/memory.py starts its workers with MALLOC_MMAP_THRESHOLD_ (live memory); leaving
    `large_frees_returned` must restore that, not the settled 32 MiB. What is not a number glibc ignores, as do we."""
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(MIB))
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert host_heap.settled_thresholds() == (MIB, host_heap.SETTLED_TRIM)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1M")
    assert host_heap.settled_thresholds() == (host_heap.SETTLED_MMAP, host_heap.SETTLED_TRIM)
