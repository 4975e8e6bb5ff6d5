"""Runs compared seed by seed: each seed's curves and final numbers, their mean ± sd over seeds, and the final
validation loss relative to a baseline run with the same seed.

It reads only what the runs left behind (their `metrics.jsonl` and run records), never how they were launched,
so a comparison can be redrawn from the logs alone. Each run is paired with the baseline's run of the same seed,
because the seed also fixes the data order: the per-seed difference compares runs that saw the same batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from est_megatron.analysis.curves import RunCurves, load_curves, mean_and_spread

SEED_MEANS = ("final_val_loss", "final_train_loss", "flops_saved_frac", "wall_clock_s", "train_time_s")


@dataclass
class RunLogs:
    """One run to compare: its name and flags, and per seed its directory (logs/metrics.jsonl inside) and run
    record (dense_step_flops, seq_length, train_steps, method, attempts with their seconds; None if not started)."""

    name: str
    flags: List[str]
    seeds: List[Tuple[int, str, Optional[dict]]]


def seed_report(directory: str, state: Optional[dict]):
    """One run and seed: its curves and final numbers from metrics.jsonl, and its wall-clock from its record.
    Returns (report, curves), curves None for a run not started."""
    metrics = os.path.join(directory, "logs", "metrics.jsonl")
    if state is None or not os.path.isfile(metrics):
        return {"status": "not started", "log_dir": os.path.join(directory, "logs")}, None
    curves = load_curves(metrics, dense_step_flops=state["dense_step_flops"], seq_length=state["seq_length"])
    train, val = curves.train, curves.val
    done = curves.end_step is not None and curves.end_step >= state["train_steps"] and \
        curves.last_step >= state["train_steps"]
    report = {
        "status": "finished" if done else "incomplete",
        "train_steps": state["train_steps"], "last_step": curves.last_step, "log_dir": os.path.dirname(metrics),
        "final_val_loss": val.value[-1] if val.value else None, "final_val_step": val.step[-1] if val.step else None,
        "final_train_loss": train.value[-1], "flops": train.flops[-1],
        "dense_flops": state["dense_step_flops"] * curves.last_step, "flops_saved_frac": curves.flops_saved_frac,
        "tokens": train.tokens[-1] if train.tokens else None,
        "train_time_s": round(curves.train_seconds, 2) if curves.train_seconds is not None else None,
        "wall_clock_s": round(sum(a["seconds"] for a in state["attempts"]), 1),
        "attempts": len(state["attempts"]),
        "val": val.to_json(), "train": train.to_json(), "stage_transitions": curves.transitions,
    }
    return report, curves


def compare(logs: Sequence[RunLogs], baseline: Optional[str], table_steps: Sequence[int]):
    """Every run's per-seed reports and their means over seeds, compared with the baseline run (default: the
    first dense one) seed by seed. Returns (runs, baseline name or None, {run name: its seeds' curves})."""
    runs: List[dict] = []
    curves: Dict[str, List[RunCurves]] = {}
    for run_logs in logs:
        seeds, method = [], None
        for seed, directory, state in run_logs.seeds:
            method = method or (state or {}).get("method")
            report, run_curves = seed_report(directory, state)
            seeds.append({"seed": seed, **report})
            if run_curves is not None:
                curves.setdefault(run_logs.name, []).append(run_curves)
        runs.append({"name": run_logs.name, "flags": run_logs.flags, "method": method, "seeds": seeds})
    baseline = baseline or next((r["name"] for r in runs if r["method"] == "dense"), None)
    base = next((r for r in runs if r["name"] == baseline), None)
    base_val = {s["seed"]: s.get("final_val_loss") for s in base["seeds"]} if base else {}
    for run in runs:
        done = [s for s in run["seeds"] if s["status"] != "not started"]
        run["seeds_finished"] = sum(s["status"] == "finished" for s in run["seeds"])
        for key in SEED_MEANS:
            run[f"{key}_mean"], run[f"{key}_sd"] = mean_and_spread([s.get(key) for s in done])
        relative = [(s["final_val_loss"] / base_val[s["seed"]] - 1.0) * 100 for s in done
                    if s.get("final_val_loss") is not None and base_val.get(s["seed"])]
        run["val_loss_vs_baseline_pct_mean"], run["val_loss_vs_baseline_pct_sd"] = \
            mean_and_spread(relative) if base is not None and run is not base else (None, None)
        for step in table_steps:
            at = [_value_at(s, step) for s in done]
            run[f"val_loss_at_{step}_mean"], run[f"val_loss_at_{step}_sd"] = \
                mean_and_spread(at) if at and None not in at else (None, None)
    return runs, baseline, curves


def _value_at(report: dict, step: int) -> Optional[float]:
    val = report.get("val") or {}
    return dict(zip(val.get("step", []), val.get("loss", []))).get(step)
