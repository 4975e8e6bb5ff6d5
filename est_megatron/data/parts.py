"""Preprocessing split across machines, and the parts joined again.

Part K of N (`--num-parts N --part K`) takes a contiguous run of the sorted input files, cut so that the parts hold
about equal bytes; each part writes PREFIX.partK-of-N_NNNNN shards and its own manifest. Because the runs are
contiguous, the parts' documents read in part order are exactly those one machine would write, in the same order:
`merge_parts` lists every part's shards, in that order, in one PREFIX.manifest.json (no data is copied), and
`--data-path PREFIX` trains on the whole.
"""
import glob
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Sequence, Tuple

from est_megatron.data.atomic import save_json
from est_megatron.data.progress_record import SETTING_NAMES
from est_megatron.data.shard_writer import manifest_path
from est_megatron.errors import UsageError


def part_prefix(prefix: str, part: int, num_parts: int) -> str:
    """Where part `part` (0-based) of `num_parts` writes; one part writes PREFIX itself."""
    return prefix if num_parts == 1 else f"{prefix}.part{part}-of-{num_parts}"


def file_sizes(files: Sequence[str]) -> List[int]:
    """On-disk bytes of each file (0 for one that cannot be read: the reader reports it)."""
    return [os.path.getsize(f) if os.path.isfile(f) else 0 for f in files]


def files_digest(files: Sequence[str], sizes: Sequence[int]) -> str:
    """Names the whole sorted input (paths and sizes), so that parts of different inputs are never joined."""
    h = hashlib.sha256()
    for path, size in zip(files, sizes):
        h.update(f"{path}\0{size}\n".encode())
    return h.hexdigest()


def share(sizes: Sequence[int], num_parts: int, part: int) -> Tuple[int, int]:
    """[start, stop) of the files of part `part`: contiguous, at least one file each, cut where the running total of
    bytes comes closest to k/N of the whole."""
    if num_parts < 1 or not 0 <= part < num_parts:
        raise UsageError(f"--part {part} --num-parts {num_parts}: need 0 <= --part < --num-parts")
    if num_parts > len(sizes):
        raise UsageError(f"--num-parts {num_parts} is more than the {len(sizes)} input files; use at most "
                         f"{len(sizes)} parts")
    running = [0]
    for size in sizes:
        running.append(running[-1] + size)
    total = running[-1]
    cuts = [0]
    for k in range(1, num_parts):
        target = total * k / num_parts
        lowest, highest = cuts[-1] + 1, len(sizes) - (num_parts - k)
        cuts.append(min(range(lowest, highest + 1), key=lambda i: (abs(running[i] - target), i)))
    cuts.append(len(sizes))
    return cuts[part], cuts[part + 1]


PART_PATTERN = re.compile(r"\.part(\d+)-of-(\d+)\.manifest\.json$")


def merge_parts(prefix: str) -> Dict[str, Any]:
    """Join the parts' manifests into PREFIX.manifest.json (shards listed in part order); returns it."""
    found = sorted(glob.glob(glob.escape(prefix) + ".part*-of-*.manifest.json"))
    parts = {}
    for path in found:
        match = PART_PATTERN.search(path)
        if match:
            parts[(int(match.group(2)), int(match.group(1)))] = path
    if not parts:
        raise UsageError(f"no part manifests {prefix}.partK-of-N.manifest.json found; run tools/preprocess_data.py "
                         f"with --num-parts N --part K for every K, with this --output-prefix, and copy the parts "
                         f"into one folder")
    counts = sorted({n for n, _ in parts})
    if len(counts) > 1:
        raise UsageError(f"{prefix} has parts of different splits (--num-parts {', '.join(map(str, counts))}); "
                         f"remove the parts of the split you do not want")
    num_parts = counts[0]
    missing = [k for k in range(num_parts) if (num_parts, k) not in parts]
    if missing:
        raise UsageError(f"{prefix}: part(s) {', '.join(map(str, missing))} of {num_parts} have no manifest (still "
                         f"running, failed, or not copied here); finish them, then merge")
    manifests = []
    for k in range(num_parts):
        with open(parts[(num_parts, k)]) as f:
            manifests.append(json.load(f))
    first = manifests[0]
    for k, manifest in enumerate(manifests):
        changed = [SETTING_NAMES.get(key, key) for key, value in first["settings"].items()
                   if key != "part" and manifest["settings"].get(key) != value]
        if changed:
            raise UsageError(f"part {k} of {prefix} was made with another {', '.join(changed)} than part 0; rerun "
                             f"that part with the flags and inputs of the others")
    shards = [s for m in manifests for s in m["shards"]]
    skipped = {}
    for manifest in manifests:
        for reason, n in manifest["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + n
    merged = {key: first[key] for key in ("format", "version", "dtype", "append_eod", "add_bos", "tokenizer",
                                          "input_format")}
    merged.update(
        shards=shards, documents=sum(m["documents"] for m in manifests), tokens=sum(m["tokens"] for m in manifests),
        max_token_id=max(m["max_token_id"] for m in manifests),
        sources=[s for m in manifests for s in m["sources"]], skipped=dict(sorted(skipped.items())),
        bad_record_examples=[e for m in manifests for e in m["bad_record_examples"]][:100],
        settings={key: value for key, value in first["settings"].items() if key != "part"},
        merged_from=[os.path.basename(parts[(num_parts, k)]) for k in range(num_parts)],
        run={"elapsed_s": round(sum(m["run"]["elapsed_s"] for m in manifests), 3),
             "workers": sum(m["run"]["workers"] for m in manifests)})
    save_json(manifest_path(prefix), merged)
    return merged
