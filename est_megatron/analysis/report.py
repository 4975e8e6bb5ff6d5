"""The files of a comparison (analysis.comparison): summary.json, table.md and figure2.png in one directory.

The table is markdown so that it reads as text on a terminal and pastes into a paper draft or an issue unchanged;
summary.json keeps every number behind it, and the curves, for other plots.
"""
from __future__ import annotations

import json
import os
import shlex
from typing import Dict, List, Sequence

from est_megatron.analysis.curves import RunCurves


def _pm(mean, sd, digits=4, suffix=""):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}{suffix}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _duration(seconds):
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _relative(mean, sd):
    if mean is None:
        return "–"
    return f"{mean:+.2f}%" + (f" ± {sd:.2f}" if sd is not None else "")


def _run_label(run: dict) -> str:
    of = run.get("equal_flops_of")
    return run["name"] if of is None else f"{run['name']} (dense at {of}'s FLOPs)"


def markdown_table(summary: dict, table_steps: Sequence[int]) -> str:
    """Final loss of every run against the baseline: mean ± sd over seeds, FLOPs saved, time. With a
    learning-rate sweep each run at its chosen rate, compared on test loss, then the validation loss per rate."""
    base, measure = summary["baseline"], summary.get("compared_on", "val")
    sweep = measure == "test"
    equal_flops = any("equal_flops_of" in r for r in summary["runs"])
    final_steps = sorted({s["final_val_step"] for r in summary["runs"] for s in r["seeds"]
                          if s.get("final_val_step") is not None})
    at = f"step {final_steps[0]}" if len(final_steps) == 1 else "the last evaluation"
    seeds = ", ".join(str(s) for s in summary["seeds"])
    over = f"mean ± standard deviation over seeds {seeds}" if len(summary["seeds"]) > 1 else f"seed {seeds}"
    loss = "test loss" if sweep else "validation loss"
    intro = f"Validation loss (the dense model on the same held-out batches) at {at}; {over}. "
    if sweep:
        intro = (f"Each run at the peak learning rate of the sweep with the lowest mean validation loss; its test "
                 f"loss (the test split, which took no part in the choice) once the run completed; {over}. ")
    intro += (f"'vs {base}' is the relative difference in {loss} to {base} with the same seed, averaged over seeds."
              if base else "No dense run to compare with (add --run dense).")
    if equal_flops:
        intro += (f" 'vs dense at equal FLOPs' compares an EST-family run's {loss} with the dense run given its "
                  "FLOPs (named after it), same seed.")
    lines = [intro, ""]
    header = ["run", "flags"] + (["lr"] if sweep else []) + ["seeds done", "val loss"]
    header += [f"val loss @{t}" for t in table_steps] + (["test loss"] if sweep else [])
    header += [f"vs {base}"] if base else []
    header += ["vs dense at equal FLOPs"] if equal_flops else []
    header += ["FLOPs saved", "train loss", "wall-clock"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in summary["runs"]:
        cells = [_run_label(run), f"`{shlex.join(run['flags'])}`" if run["flags"] else ""]
        cells += ["–" if run["lr"] is None else f"{run['lr']:g}"] if sweep else []
        cells += [f"{run['seeds_finished']}/{len(run['seeds'])}", _pm(run["final_val_loss_mean"],
                                                                      run["final_val_loss_sd"])]
        cells += [_pm(run[f"val_loss_at_{t}_mean"], run[f"val_loss_at_{t}_sd"]) for t in table_steps]
        cells += [_pm(run["final_test_loss_mean"], run["final_test_loss_sd"])] if sweep else []
        if base:
            cells.append("" if run["name"] == base else _relative(run[f"{measure}_loss_vs_baseline_pct_mean"],
                                                                  run[f"{measure}_loss_vs_baseline_pct_sd"]))
        if equal_flops:
            cells.append(_relative(run[f"{measure}_loss_vs_equal_flops_pct_mean"],
                                   run[f"{measure}_loss_vs_equal_flops_pct_sd"])
                         if "equal_flops_baseline" in run else "")
        saved = run["flops_saved_frac_mean"]
        cells += ["–" if saved is None else f"{saved * 100:.1f}%",
                  _pm(run["final_train_loss_mean"], run["final_train_loss_sd"]),
                  _duration(run["wall_clock_s_mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    for extra in (corpus_table(summary), downstream_table(summary)):
        if extra:
            lines += ["", extra]
    if sweep:
        lines += ["", sweep_table(summary)]
    return "\n".join(lines) + "\n"


def corpus_table(summary: dict) -> str:
    """The compared loss per corpus (prose and code apart): mean ± sd over seeds, and against the baseline; empty
    when the runs trained on one corpus."""
    measure, base = summary.get("compared_on", "val"), summary["baseline"]
    key = f"{measure}_loss_by_corpus"
    names = sorted({name for run in summary["runs"] for name in run.get(key) or {}})
    if len(names) < 2:
        return ""
    loss = "test" if measure == "test" else "validation"
    header = ["run"] + [f"{name} {loss} loss" + (f" (vs {base})" if base else "") for name in names]
    lines = [f"Final {loss} loss per corpus, same seeds and rates as above.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in summary["runs"]:
        cells = [_run_label(run)]
        for name in names:
            c = (run.get(key) or {}).get(name)
            if c is None:
                cells.append("–")
                continue
            rel = "" if run["name"] == base or not base else \
                f" ({_relative(c['vs_baseline_pct_mean'], c['vs_baseline_pct_sd'])})"
            cells.append(_pm(c["mean"], c["sd"]) + rel)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def downstream_table(summary: dict) -> str:
    """tools/evaluate.py on each run's final checkpoint (compare_runs --eval-tasks, --eval-data-path): accuracy per
    task (difference to the baseline in points) and loss per held-out corpus (relative to it); mean ± sd over
    seeds. Empty when no run was evaluated."""
    base = summary["baseline"]
    columns = [(kind, name) for kind in ("acc", "loss")
               for name in sorted({n for run in summary["runs"] for n in (run.get("downstream") or {}).get(kind, {})})]
    if not columns:
        return ""
    versus = {"acc": f" (vs {base}, points)", "loss": f" (vs {base})"} if base else {"acc": "", "loss": ""}
    header = ["run"] + [f"{name} {kind}{versus[kind]}" for kind, name in columns]
    lines = ["tools/evaluate.py on each run's final checkpoint, same seeds and rates as above: lm-eval `acc` per task "
             "and the loss on each held-out corpus.", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for run in summary["runs"]:
        cells = [_run_label(run)]
        for kind, name in columns:
            value = (run.get("downstream") or {}).get(kind, {}).get(name)
            if value is None or value["mean"] is None:
                cells.append("–")
                continue
            text = _pm(value["mean"], value["sd"], digits=3 if kind == "acc" else 4)
            diff, sd = value["vs_baseline_mean"], value["vs_baseline_sd"]
            if diff is not None:
                text += f" ({diff:+.1f}" + (f" ± {sd:.1f})" if sd is not None else ")") if kind == "acc" else \
                    f" ({_relative(diff, sd)})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(summary: dict) -> str:
    """Mean validation loss of every run at every peak rate of the sweep, the chosen one in bold."""
    rates = sorted({row["lr"] for run in summary["runs"] for row in run["lr_sweep"]})
    seeds = len(summary["seeds"])
    lines = ["Validation loss at each peak learning rate (mean over the finished seeds, their count when not all; "
             "bold: the rate chosen, on the seeds finished at every rate).", "",
             "| run | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |", "|" + "---|" * (len(rates) + 1)]
    for run in summary["runs"]:
        rows = {row["lr"]: row for row in run["lr_sweep"]}
        cells = [_run_label(run)]
        for lr in rates:
            row = rows.get(lr)
            text = "–" if row is None or row["val_loss_mean"] is None else \
                _pm(row["val_loss_mean"], row["val_loss_sd"]) + \
                (f" ({row['seeds_finished']}/{seeds})" if row["seeds_finished"] < seeds else "")
            cells.append(f"**{text}**" if row is not None and row["chosen"] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_report(summary: dict, curves: Dict[str, List[RunCurves]], output_dir: str, table_steps: Sequence[int],
                plot: bool):
    """summary.json, table.md and, when `plot` and some run has logs, figure2.png (matplotlib needed) in
    output_dir. Returns ({"summary"|"table"|"figure": path}, the table)."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"summary": os.path.join(output_dir, "summary.json"), "table": os.path.join(output_dir, "table.md")}
    with open(paths["summary"], "w") as f:
        json.dump(summary, f, indent=1)
    table = markdown_table(summary, table_steps)
    with open(paths["table"], "w") as f:
        f.write(table)
    if plot and curves:
        from est_megatron.analysis.figure import save_loss_figure
        seeds = ", ".join(map(str, summary["seeds"]))
        paths["figure"] = save_loss_figure(curves, os.path.join(output_dir, "figure2.png"),
                                           title=f"{' vs '.join(curves)} (seeds {seeds})")
    return paths, table
