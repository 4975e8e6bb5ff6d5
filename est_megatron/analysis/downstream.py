"""Downstream results of a compared run: tools/evaluate.py on its final checkpoint, kept beside its logs as
downstream_step_N.json (N: the checkpoint's step, so a longer run is evaluated again): lm-eval accuracy per task,
compared with the baseline seed by seed in points (a difference of rates, not a ratio), and the loss on each held-out
corpus, compared in percent like the training losses."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional, Sequence

from est_megatron.analysis.curves import mean_and_spread
from est_megatron.data import corpus_names

METRIC = "acc"


def downstream_path(run_directory: str, step: int) -> str:
    return os.path.join(run_directory, f"downstream_step_{step}.json")


def read_downstream(run_directory: str, step: int) -> Optional[dict]:
    """{"acc": {task: acc}, "loss": {corpus: loss}} of tools/evaluate.py's output at `step`, or None when not
    evaluated (or unreadable)."""
    try:
        with open(downstream_path(run_directory, step)) as f:
            report = json.load(f)
        rows = report.get("lm_eval", {}).get("table", [])
        corpora = report.get("perplexity", {}).get("corpora", [])
        return {"acc": {row["task"]: row["value"] for row in rows if row.get("metric") == METRIC},
                "loss": {c["name"]: c["loss"] for c in corpora}}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def evaluated(run_directory: str, step: int, tasks: Sequence[str], corpora: Sequence[str]) -> bool:
    """Whether every task (a group task through its name) and every corpus prefix (under the name the evaluation
    gives it) has a result at `step`."""
    result = read_downstream(run_directory, step)
    return result is not None and all(t in result["acc"] for t in tasks) and \
        all(name in result["loss"] for name in corpus_names(corpora))


def _compared(run: dict, base: Optional[dict], kind: str, difference) -> Dict[str, dict]:
    def values(seed_report):
        return (seed_report.get("downstream") or {}).get(kind) or {}
    names = sorted({name for s in run["seeds"] for name in values(s)})
    theirs = {s["seed"]: values(s) for s in (base or {}).get("seeds", [])}
    out = {}
    for name in names:
        mine = [(s["seed"], values(s).get(name)) for s in run["seeds"]]
        mean, sd = mean_and_spread([v for _, v in mine])
        diff = mean_and_spread([difference(v, theirs[seed][name]) for seed, v in mine if v is not None
                                and theirs.get(seed, {}).get(name) is not None]) \
            if base is not None and base is not run else (None, None)
        out[name] = {"mean": mean, "sd": sd, "vs_baseline_mean": diff[0], "vs_baseline_sd": diff[1]}
    return out


def compare_downstream(run: dict, base: Optional[dict]) -> dict:
    """{"acc": {task: mean, sd, difference to base in points}, "loss": {corpus: mean, sd, relative to base in %}},
    over seeds, each seed against base's same seed."""
    return {"acc": _compared(run, base, "acc", lambda mine, theirs: (mine - theirs) * 100),
            "loss": _compared(run, base, "loss", lambda mine, theirs: (mine / theirs - 1.0) * 100)}
