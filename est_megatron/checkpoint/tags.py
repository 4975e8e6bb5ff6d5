"""Tags and the `latest` pointer: where in a run's directory each checkpoint lives.

A `--save DIR` holds one directory per checkpoint, `DIR/step_NNNNNN/` (DeepSpeed's tag), and `DIR/latest`, a text
file naming the newest complete tag (DeepSpeed's own format, so its tools such as zero_to_fp32.py work). Everything
that reads or writes these names goes through here, so a tag is spelled and parsed one way.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Tuple

from est_megatron.checkpoint.checksums import CHECKSUMS
from est_megatron.checkpoint.durable import write_durably
from est_megatron.checkpoint.state import STATE_FILE
from est_megatron.errors import UsageError

TAG_RE = re.compile(r"^step_(\d+)$")
LATEST = "latest"


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def step_of(tag: str) -> Optional[int]:
    """The step a tag names (`step_000123` -> 123), None for any other name."""
    match = TAG_RE.match(tag)
    return int(match.group(1)) if match else None


def complete_tags(save_dir: str) -> List[Tuple[int, str]]:
    """[(step, tag)] of the tags holding a checksum manifest, oldest first."""
    if not os.path.isdir(save_dir):
        return []
    return sorted((step, name) for name in os.listdir(save_dir)
                  if (step := step_of(name)) is not None and os.path.isfile(os.path.join(save_dir, name, CHECKSUMS)))


def previous_tag(directory: str, tag: str) -> Optional[str]:
    """The newest complete tag older than `tag`: what to fall back to when `tag` is damaged."""
    older = [name for _, name in complete_tags(directory) if name < tag]
    return older[-1] if older else None


def latest_tag(directory: str) -> Optional[str]:
    """The tag `directory/latest` names, as written (None when there is no `latest`, or it is empty)."""
    path = os.path.join(directory, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip() or None


def latest_step(directory: str) -> Optional[int]:
    """The step of the checkpoint `directory/latest` names, None when there is none."""
    tag = latest_tag(directory)
    return step_of(tag) if tag else None


def read_latest(load_dir: str) -> Optional[str]:
    """The tag `latest` points to, or None when the directory holds no checkpoint; a UsageError when it points at
    no complete checkpoint."""
    path = os.path.join(load_dir, LATEST)
    if not os.path.isfile(path):
        return None
    tag = latest_tag(load_dir)
    if not tag or not os.path.isfile(os.path.join(load_dir, tag, STATE_FILE)):
        raise UsageError(f"{path} points at {tag or ''!r}, which is not a complete checkpoint; point it at a "
                         f"step_* directory holding {STATE_FILE}")
    return tag


def write_latest(save_dir: str, tag: str) -> None:
    """Moves `latest` to `tag` atomically: a crash leaves it on the old tag or the new one, never half-written."""
    write_durably(os.path.join(save_dir, LATEST), tag)


def tag_dir_of(directory: str) -> Optional[str]:
    """The tag directory of a training checkpoint: the one `latest` names, or `directory` itself when it is a tag
    (it holds our run state or DeepSpeed's model states); None when it is neither."""
    tag = latest_tag(directory)
    if tag is not None:
        return os.path.join(directory, tag)
    if any(os.path.isfile(os.path.join(directory, name)) for name in (STATE_FILE, "mp_rank_00_model_states.pt")):
        return directory
    return None
