"""Atomic file creation: readers never see a half-written shard, index cache or manifest.

Everything is written under a temporary name in the target directory and renamed into place only when complete
(`os.replace` is atomic on one filesystem), so a crash leaves a `.tmp` file behind, never a truncated real one.
"""
import contextlib
import json
import os
from typing import IO, Any, Iterator

import numpy as np


def temp_path(path: str) -> str:
    """The temporary name under which `path` is written before it is renamed into place."""
    return f"{path}.tmp.{os.getpid()}"


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open `path` for writing under a temporary name; rename into place on success, delete on error."""
    tmp = temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def save_npy(path: str, array: np.ndarray) -> None:
    """np.save, atomically (index caches may be built by several ranks at once)."""
    with atomic_open(path) as f:
        np.save(f, array, allow_pickle=False)


def save_json(path: str, obj: Any) -> None:
    """Pretty JSON, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
