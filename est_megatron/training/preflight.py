"""Fail fast: the directories a run writes are checked before step 1, not at the first save hours in.

`--save`, `--log-dir` and `--data-cache-dir` must be (or become) writable directories, and `--save` must have free
space for one checkpoint, estimated from the parameter count. Every rank checks what it writes (a node's local
disk may differ) and all ranks stop with the same one-line error.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Optional, Tuple

from est_megatron.errors import UsageError
from est_megatron.training.distributed import agree

# fp32 master weights, both Adam moments and the saved module weights: 16 bytes per parameter (bf16 runs: 14).
CHECKPOINT_BYTES_PER_PARAM = 16


def checkpoint_bytes(num_parameters: int) -> int:
    """An upper estimate of one checkpoint's size on disk, all ranks together."""
    return num_parameters * CHECKPOINT_BYTES_PER_PARAM


def directory_problem(flag: str, path: str, need_bytes: int = 0) -> Optional[str]:
    """None if `path` is (or can be made) a writable directory with `need_bytes` free, else the one-line error."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{flag} {path} is a file, not a directory; give a directory path"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test.") as f:
            f.write(b"x")
            f.flush()
    except OSError as err:
        return f"{flag} {path} is not writable ({err.strerror or err}); give a directory you can write to"
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        return (f"{flag} {path} has {free / 2**30:.2f} GiB free but one checkpoint needs about "
                f"{need_bytes / 2**30:.2f} GiB; free space or point {flag} elsewhere")
    return None


def check_directories(entries: Iterable[Tuple[str, Optional[str], int]]) -> None:
    """Collective: (flag, path or None, bytes needed) for each directory this rank writes; one UsageError on
    every rank if any rank found a problem."""
    problem = None
    for flag, path, need in entries:
        if path and problem is None:
            problem = directory_problem(flag, path, need)
    problem = agree(problem)
    if problem is not None:
        raise UsageError(problem)
