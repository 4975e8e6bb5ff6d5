"""Runs compared seed by seed: each seed's curves and final numbers, their mean ± sd over seeds, and the final
loss relative to a baseline run with the same seed: validation loss, or with a learning-rate sweep each run at its
best rate (analysis.lr_sweep) on test loss. A dense run at an EST-family run's FLOPs (analysis.equal_flops) is
also compared with that run.

It reads only what the runs left behind (their `metrics.jsonl` and run records), never how they were launched,
so a comparison can be redrawn from the logs alone. Each run is paired with the baseline's run of the same seed,
because the seed also fixes the data order: the per-seed difference compares runs that saw the same batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from est_megatron.analysis.curves import RunCurves, load_curves, mean_and_spread
from est_megatron.analysis.downstream import compare_downstream, read_downstream
from est_megatron.analysis.lr_sweep import choose_rate

SEED_MEANS = ("final_val_loss", "final_test_loss", "final_train_loss", "flops_saved_frac", "wall_clock_s",
              "train_time_s")


@dataclass
class RunLogs:
    """One run to compare: its name and flags, and per seed its directory (logs/metrics.jsonl inside) and run
    record (dense_step_flops, seq_length, train_steps, method, attempts with their seconds; None if not started).
    lr: its peak rate when it is one rate of a sweep (the same name at several rates); equal_flops_of: the
    EST-family run whose FLOPs this dense run was given."""

    name: str
    flags: List[str]
    seeds: List[Tuple[int, str, Optional[dict]]]
    lr: Optional[float] = None
    equal_flops_of: Optional[str] = None


def seed_report(directory: str, state: Optional[dict]):
    """One run and seed: its curves and final numbers from metrics.jsonl, and its wall-clock from its record.
    Returns (report, curves), curves None for a run not started."""
    metrics = os.path.join(directory, "logs", "metrics.jsonl")
    if state is None or not os.path.isfile(metrics):
        return {"status": "not started", "log_dir": os.path.join(directory, "logs")}, None
    curves = load_curves(metrics, dense_step_flops=state["dense_step_flops"], seq_length=state["seq_length"])
    train, val, test = curves.train, curves.val, curves.test
    done = curves.end_step is not None and curves.end_step >= state["train_steps"] and \
        curves.last_step >= state["train_steps"]
    report = {
        "status": "finished" if done else "incomplete",
        "train_steps": state["train_steps"], "last_step": curves.last_step, "log_dir": os.path.dirname(metrics),
        "final_val_loss": val.value[-1] if val.value else None, "final_val_step": val.step[-1] if val.step else None,
        "final_test_loss": test.value[-1] if test.value else None,
        "final_val_loss_by_corpus": val.extra["by_corpus"][-1] if val.extra.get("by_corpus") else None,
        "final_test_loss_by_corpus": test.extra["by_corpus"][-1] if test.extra.get("by_corpus") else None,
        "final_train_loss": train.value[-1], "flops": train.flops[-1],
        "dense_flops": state["dense_step_flops"] * curves.last_step, "flops_saved_frac": curves.flops_saved_frac,
        "tokens": train.tokens[-1] if train.tokens else None,
        "train_time_s": round(curves.train_seconds, 2) if curves.train_seconds is not None else None,
        "wall_clock_s": round(sum(a["seconds"] for a in state["attempts"]), 1),
        "attempts": len(state["attempts"]),
        "val": val.to_json(), "train": train.to_json(), "stage_transitions": curves.transitions,
        "downstream": read_downstream(directory, state["train_steps"]) if done else None,
    }
    if "equal_flops" in state:
        report["equal_flops"] = state["equal_flops"]
    return report, curves


def run_entry(run_logs: RunLogs, table_steps: Sequence[int]):
    """One run (at one rate): its seeds' reports, their means over seeds and the validation loss at table_steps.
    Returns (entry, its seeds' curves)."""
    seeds, curves, method = [], [], None
    for seed, directory, state in run_logs.seeds:
        method = method or (state or {}).get("method")
        report, run_curves = seed_report(directory, state)
        seeds.append({"seed": seed, **report})
        if run_curves is not None:
            curves.append(run_curves)
    entry = {"name": run_logs.name, "flags": run_logs.flags, "method": method, "seeds": seeds}
    if run_logs.equal_flops_of is not None:
        entry["equal_flops_of"] = run_logs.equal_flops_of
    done = [s for s in seeds if s["status"] != "not started"]
    entry["seeds_finished"] = sum(s["status"] == "finished" for s in seeds)
    for key in SEED_MEANS:
        entry[f"{key}_mean"], entry[f"{key}_sd"] = mean_and_spread([s.get(key) for s in done])
    for step in table_steps:
        at = [_value_at(s, step) for s in done]
        entry[f"val_loss_at_{step}_mean"], entry[f"val_loss_at_{step}_sd"] = \
            mean_and_spread(at) if at and None not in at else (None, None)
    return entry, curves


def relative_pct(run: dict, other: dict, key: str, corpus: Optional[str] = None):
    """Mean ± sd over seeds of run's `key` (of `corpus` in a per-corpus key) relative to other's with the same
    seed, in percent."""
    def value(seed_report):
        v = seed_report.get(key)
        return v.get(corpus) if corpus is not None and v is not None else v
    theirs = {s["seed"]: value(s) for s in other["seeds"]}
    return mean_and_spread([(value(s) / theirs[s["seed"]] - 1.0) * 100 for s in run["seeds"]
                            if value(s) is not None and theirs.get(s["seed"])])


def corpus_losses(run: dict, base: Optional[dict], measure: str) -> Dict[str, dict]:
    """Per corpus: the final `measure` loss's mean and sd over seeds, and relative to `base` with the same seed."""
    key = f"final_{measure}_loss_by_corpus"
    names = sorted({name for s in run["seeds"] for name in (s.get(key) or {})})
    out = {}
    for name in names:
        mean, sd = mean_and_spread([(s.get(key) or {}).get(name) for s in run["seeds"]])
        rel = relative_pct(run, base, key, name) if base is not None and base is not run else (None, None)
        out[name] = {"mean": mean, "sd": sd, "vs_baseline_pct_mean": rel[0], "vs_baseline_pct_sd": rel[1]}
    return out


def compare(logs: Sequence[RunLogs], baseline: Optional[str], table_steps: Sequence[int]):
    """Every run's per-seed reports and their means over seeds, compared with the baseline run (default: the
    first dense one) seed by seed, and each EST-family run with its equal-FLOPs dense run. With a sweep (logs with
    an lr) each run is taken at its chosen rate and compared on test loss.
    Returns (runs, baseline name or None, {run name: its seeds' curves}, "val" or "test": the loss compared)."""
    by_name: Dict[str, Dict[Optional[float], tuple]] = {}
    for run_logs in logs:
        by_name.setdefault(run_logs.name, {})[run_logs.lr] = run_entry(run_logs, table_steps)
    sweep = any(run_logs.lr is not None for run_logs in logs)
    runs: List[dict] = []
    curves: Dict[str, List[RunCurves]] = {}
    for name, at_rates in by_name.items():
        if sweep:
            best, rows = choose_rate({lr: entry for lr, (entry, _) in at_rates.items()})
            entry, run_curves = at_rates[best] if best is not None else next(iter(at_rates.values()))
            entry = dict(entry, lr=best, lr_sweep=rows)
        else:
            entry, run_curves = at_rates[None]
        runs.append(entry)
        if run_curves:
            curves[name] = run_curves
    measure = "test" if sweep else "val"
    key = f"final_{measure}_loss"
    baseline = baseline or next((r["name"] for r in runs if r["method"] == "dense"), None)
    base = next((r for r in runs if r["name"] == baseline), None)
    by_run = {r["name"]: r for r in runs}
    for run in runs:
        run[f"{measure}_loss_vs_baseline_pct_mean"], run[f"{measure}_loss_vs_baseline_pct_sd"] = \
            relative_pct(run, base, key) if base is not None and run is not base else (None, None)
        run[f"{measure}_loss_by_corpus"] = corpus_losses(run, base, measure)
        run["downstream"] = compare_downstream(run, base)
        if "equal_flops_of" in run:
            matched = by_run[run["equal_flops_of"]]
            matched["equal_flops_baseline"] = run["name"]
            matched[f"{measure}_loss_vs_equal_flops_pct_mean"], matched[f"{measure}_loss_vs_equal_flops_pct_sd"] = \
                relative_pct(matched, run, key)
    return runs, baseline, curves, measure


def _value_at(report: dict, step: int) -> Optional[float]:
    val = report.get("val") or {}
    return dict(zip(val.get("step", []), val.get("loss", []))).get(step)
