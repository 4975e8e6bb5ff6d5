"""The checksum manifest of a training checkpoint: `checksums.json`, the size and SHA-256 of every file of the tag,
written last, so a tag that has one is complete and a file that differs from it is damaged. Training's --load and
every reader of a checkpoint's weights check it before trusting a file."""
from __future__ import annotations

import hashlib
import json
import os
from typing import List, Optional

from est_megatron.checkpoint.durable import write_durably

CHECKSUMS = "checksums.json"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _tag_files(tag_dir: str) -> List[str]:
    """Every file of a tag (relative paths, sorted) except the checksum manifest and temporary files."""
    found = []
    for root, _, names in os.walk(tag_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), tag_dir)
            if rel != CHECKSUMS and ".tmp." not in name:
                found.append(rel)
    return sorted(found)


def write_checksums(tag_dir: str) -> None:
    files = {rel: {"bytes": os.path.getsize(os.path.join(tag_dir, rel)), "sha256": _sha256(os.path.join(tag_dir, rel))}
             for rel in _tag_files(tag_dir)}
    write_durably(os.path.join(tag_dir, CHECKSUMS), json.dumps({"files": files}, indent=1) + "\n")


def damaged_file(tag_dir: str) -> Optional[str]:
    """None when every file listed in the tag's checksums is there with its size and hash, else what is wrong."""
    path = os.path.join(tag_dir, CHECKSUMS)
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except FileNotFoundError:
        return f"it has no {CHECKSUMS} (an incomplete save, or a checkpoint of an older version)"
    except (ValueError, KeyError, TypeError):
        return f"its {CHECKSUMS} is unreadable"
    for rel, expected in sorted(files.items()):
        full = os.path.join(tag_dir, rel)
        if not os.path.isfile(full):
            return f"{rel} is missing"
        if os.path.getsize(full) != expected["bytes"] or _sha256(full) != expected["sha256"]:
            return f"{rel} does not match its checksum (damaged or modified)"
    return None
