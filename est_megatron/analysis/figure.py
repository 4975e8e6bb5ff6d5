"""The paper's Figure 2 layout from training logs: validation (top) and training loss (bottom) against steps
(left) and training FLOPs (right).

One colour per run; a run trained with several seeds is drawn as the mean over seeds with the min-max range
shaded. Stage transitions are dotted vertical lines in the run's colour, at the step and at the FLOPs where they
happened, so a reader can see whether the loss stays stable across them. The first tenth of the run is clipped at
the top of each loss axis (the initial loss is several times the final one and would flatten the differences
that matter). matplotlib is optional for the package, so it is imported here only, through `require_matplotlib`.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, Optional, Sequence

from est_megatron.analysis.curves import DENSE_STEPS, FLOPS, RunCurves, Series, band
from est_megatron.errors import UsageError

EARLY_FRACTION = 0.1  # steps before this fraction of the run do not set the loss axes' upper limit


def require_matplotlib():
    """The matplotlib module, or one clear line on how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("matplotlib is not installed; pip install 'matplotlib>=3.7' "
                         "(or pip install -e \".[plot]\" in the repository)") from None
    return matplotlib


def as_dense_steps(curves: RunCurves) -> RunCurves:
    """The same curves with FLOPs in dense-step equivalents, to share an axis with logs that lack absolute FLOPs."""
    if curves.flops_unit == DENSE_STEPS:
        return curves
    saved = curves.flops_saved_frac
    if saved is None:
        raise UsageError(f"{curves.path} has no flops_saved_frac to put its FLOPs beside the other logs'")
    per_dense_step = curves.train.flops[-1] / (curves.train.step[-1] * (1.0 - saved))

    def scaled(series: Series) -> Series:
        return replace(series, flops=[f / per_dense_step for f in series.flops])

    marks = [dict(m, flops=m["flops"] / per_dense_step) for m in curves.transitions]
    return replace(curves, train=scaled(curves.train), val=scaled(curves.val), test=scaled(curves.test),
                   transitions=marks, flops_unit=DENSE_STEPS)


def _upper_limit(bands, last_step: int) -> Optional[float]:
    late = [v for b in bands for t, v in zip(b.step, b.high) if t >= EARLY_FRACTION * last_step]
    low = [v for b in bands for v in b.low]
    if not late or not low:
        return None
    top, bottom = max(late), min(low)
    return top + 0.05 * max(top - bottom, 1e-3)


def loss_figure(groups: Dict[str, Sequence[RunCurves]], title: Optional[str] = None):
    """A matplotlib Figure of the curves; groups maps a run's label to its seeds' curves (one or more)."""
    require_matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not groups or not all(groups.values()):
        raise UsageError("nothing to plot: give at least one metrics.jsonl")
    if len({c.flops_unit for runs in groups.values() for c in runs}) > 1:
        groups = {label: [as_dense_steps(c) for c in runs] for label, runs in groups.items()}
    unit = next(iter(groups.values()))[0].flops_unit
    flops_label = "training FLOPs" if unit == FLOPS else "training FLOPs (dense-step equivalents)"

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    axes = fig.subplots(2, 2)
    colours = [f"C{i % 10}" for i in range(len(groups))]
    last_step = max(c.last_step for runs in groups.values() for c in runs)
    has_marks = False
    for row, kind, name in ((0, "val", "validation loss"), (1, "train", "training loss")):
        bands = []
        for (label, runs), colour in zip(groups.items(), colours):
            b = band([getattr(c, kind) for c in runs])
            if not b.step:
                continue
            bands.append(b)
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            for col, xs in ((0, b.step), (1, b.flops)):
                ax = axes[row][col]
                ax.plot(xs, b.mean, color=colour, label=label + seeds, linewidth=1.4,
                        marker="o" if kind == "val" and len(xs) <= 30 else None, markersize=3)
                if len(runs) > 1:
                    ax.fill_between(xs, b.low, b.high, color=colour, alpha=0.2, linewidth=0)
            for step, flops in _transition_marks(runs):
                has_marks = True
                axes[row][0].axvline(step, color=colour, linestyle=":", linewidth=1.1, alpha=0.8)
                axes[row][1].axvline(flops, color=colour, linestyle=":", linewidth=1.1, alpha=0.8)
        top = _upper_limit(bands, last_step)
        for col, xlabel in ((0, "step"), (1, flops_label)):
            ax = axes[row][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(name)
            ax.grid(True, alpha=0.3)
            if top is not None:
                ax.set_ylim(top=top)
            if not bands:
                ax.text(0.5, 0.5, f"no {name} records", ha="center", va="center", transform=ax.transAxes)
        if unit == FLOPS:
            axes[row][1].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    handles, labels = axes[1][0].get_legend_handles_labels()
    if has_marks:
        handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.1))
        labels.append("stage transition")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _transition_marks(runs: Sequence[RunCurves]):
    """(step, mean FLOPs) of every stage transition any seed of a run logged."""
    flops_by_step: Dict[int, list] = {}
    for curves in runs:
        for mark in curves.transitions:
            flops_by_step.setdefault(mark["step"], []).append(mark["flops"])
    return [(step, sum(f) / len(f)) for step, f in sorted(flops_by_step.items())]


def save_loss_figure(groups: Dict[str, Sequence[RunCurves]], path: str, title: Optional[str] = None) -> str:
    """Draw `loss_figure` to a PNG file (directories created); returns the path."""
    fig = loss_figure(groups, title)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130)
    return path
