"""Downstream accuracy of a compared run: tools/evaluate.py's lm-eval results on its final checkpoint, kept beside
its logs as downstream_step_N.json (N: the checkpoint's step, so a longer run is evaluated again), and compared
with the baseline seed by seed in accuracy points (a difference of rates, not a ratio)."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

from est_megatron.analysis.curves import mean_and_spread

METRIC = "acc"


def downstream_path(run_directory: str, step: int) -> str:
    return os.path.join(run_directory, f"downstream_step_{step}.json")


def read_accuracy(run_directory: str, step: int) -> Optional[Dict[str, float]]:
    """{task: acc} of tools/evaluate.py's output at `step`, or None when not evaluated (or unreadable)."""
    try:
        with open(downstream_path(run_directory, step)) as f:
            rows = json.load(f)["lm_eval"]["table"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {row["task"]: row["value"] for row in rows if row.get("metric") == METRIC}


def evaluated(run_directory: str, step: int, tasks: Sequence[str]) -> bool:
    """Whether every task of `tasks` has an accuracy at `step` (a group task counts through its name)."""
    accuracy = read_accuracy(run_directory, step)
    return accuracy is not None and all(task in accuracy for task in tasks)


def compare_accuracy(run: dict, base: Optional[dict]) -> Dict[str, dict]:
    """Per task: mean ± sd over seeds of the run's accuracy, and of its difference in points (x100) to `base`
    with the same seed."""
    names = sorted({task for s in run["seeds"] for task in (s.get("downstream") or {})})
    theirs = {s["seed"]: s.get("downstream") or {} for s in (base or {}).get("seeds", [])}
    out = {}
    for task in names:
        mine = [(s["seed"], (s.get("downstream") or {}).get(task)) for s in run["seeds"]]
        mean, sd = mean_and_spread([acc for _, acc in mine])
        diff = mean_and_spread([(acc - theirs[seed][task]) * 100 for seed, acc in mine if acc is not None
                                and theirs.get(seed, {}).get(task) is not None]) \
            if base is not None and base is not run else (None, None)
        out[task] = {"mean": mean, "sd": sd, "vs_baseline_points_mean": diff[0], "vs_baseline_points_sd": diff[1]}
    return out
