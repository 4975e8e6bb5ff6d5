"""One run, one `metrics.jsonl`: a new run never appends to another run's records, and a resumed run continues
its own without the records of steps it is about to train again.

A new run (nothing resumed) in a log directory that already holds records moves them aside to
`metrics.<time>.jsonl`. A run resumed at step S keeps the records up to S and drops later ones (written after
the checkpoint by a run that then died), so every step appears once.
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from est_megatron.data.atomic import atomic_open

METRICS = "metrics.jsonl"


def start_metrics_file(log_dir: Optional[str], resumed_step: int) -> Optional[str]:
    """Prepare LOG_DIR/metrics.jsonl for a run starting at `resumed_step` (0: a new run); a line saying what was
    done, or None."""
    path = os.path.join(log_dir, METRICS) if log_dir else None
    if path is None or not os.path.isfile(path) or not os.path.getsize(path):
        return None
    if resumed_step == 0:
        aside = os.path.join(log_dir, f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        os.replace(path, aside)
        return f"{path} held another run's records; moved them to {aside}"
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            try:
                step = json.loads(line).get("step", 0)
            except ValueError:  # a line cut short by a crash
                dropped += 1
                continue
            if isinstance(step, int) and step > resumed_step:
                dropped += 1
            else:
                kept.append(line if line.endswith("\n") else line + "\n")
    if not dropped:
        return None
    with atomic_open(path, "w") as f:
        f.writelines(kept)
    return f"{path}: dropped {dropped} record(s) after step {resumed_step}, which this run trains again"
