"""Overlay the loss curves of any training runs from their metrics.jsonl files, in the paper's Figure 2 layout.

    python tools/plot_metrics.py runs/dense/logs runs/est/logs --output loss.png
    python tools/plot_metrics.py dense=a/logs est=b/logs est=c/logs --title "EST vs dense" --output loss.png

Each input is a metrics.jsonl (or the --log-dir holding one), optionally prefixed by LABEL=. Inputs that share a
label are seeds of one run: drawn as their mean with the min-max range shaded. Without labels every input is its
own run, named by its path. Panels: validation and training loss against steps and against training FLOPs, stage
transitions dotted. FLOPs are absolute when the logs carry them, else dense-step equivalents (steps x the
fraction of a dense step's FLOPs spent). Needs matplotlib (pip install 'matplotlib>=3.7').
"""
import argparse
import os

from est_megatron.analysis.curves import load_curves
from est_megatron.analysis.figure import require_matplotlib, save_loss_figure
from est_megatron.errors import exit_on_usage_error
from est_megatron.help_format import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="[LABEL=]PATH",
                   help="metrics.jsonl files or log directories; a shared LABEL averages them as seeds")
    p.add_argument("--output", "-o", default="loss_curves.png", help="PNG to write (default: loss_curves.png)")
    p.add_argument("--title", help="figure title (default: none)")
    return p


def _run_dir(path: str) -> str:
    """The directory naming a run: the log directory, or its parent when it is a plain `logs`."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "metrics.jsonl":
        path = os.path.dirname(path)
    if os.path.basename(path) == "logs":
        path = os.path.dirname(path)
    return path


def labelled_inputs(inputs):
    """[(label, path)]: explicit LABEL=PATH, else the run directory relative to what the unlabelled inputs
    share."""
    pairs = []
    for item in inputs:
        label, sep, path = item.partition("=")
        if sep and label and not os.path.exists(item):
            pairs.append((label, path))
        else:
            pairs.append((None, item))
    unnamed = [_run_dir(path) for label, path in pairs if label is None]
    # one input: its last two path components (a run/seed_S pair of compare_runs.py reads well)
    base = os.path.commonpath(unnamed) if len(unnamed) > 1 else \
        os.path.dirname(os.path.dirname(unnamed[0])) if unnamed else ""
    return [(label if label is not None else os.path.relpath(_run_dir(path), base), path) for label, path in pairs]


@exit_on_usage_error
def main(argv=None) -> str:
    args = build_parser().parse_args(argv)
    require_matplotlib()
    groups = {}
    for label, path in labelled_inputs(args.inputs):
        curves = load_curves(path)
        groups.setdefault(label, []).append(curves)
        final = f"final validation loss {curves.val.value[-1]:.4f} at step {curves.val.step[-1]}" \
            if curves.val.step else "no validation records"
        saved = curves.flops_saved_frac
        print(f"{label}: {path}: {curves.last_step} steps, {final}"
              + (f", FLOPs saved {saved * 100:.1f}%" if saved is not None else ""))
    out = save_loss_figure(groups, args.output, args.title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
