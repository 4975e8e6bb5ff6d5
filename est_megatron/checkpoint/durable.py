"""Writing a checkpoint's small files so that a crash or a full disk never leaves half of one: a temporary file,
fsync, then os.replace onto the name."""
from __future__ import annotations

import os

from est_megatron.data.atomic import atomic_open


def write_durably(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
