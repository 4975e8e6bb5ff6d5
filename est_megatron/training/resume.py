"""Resume only what the checkpoint is a checkpoint of: the flags that decide the data order, the plans and the
tokens must match the saved run, and the saved ZeRO partitions must fit this run's layout.

A changed flag is refused with one line naming it; `--override-resume-args NAME...` accepts the change (say,
new data on purpose). ZeRO's optimizer partitions are cut per data-parallel rank, so another world size or layout
is refused with one line that names `--init-from` (the weights, with a fresh optimizer) as the way.
"""
from __future__ import annotations

import os
from typing import Optional

from est_megatron.errors import UsageError

# (flag, args attribute): what a resumed run must share with the saved one.
RESUME_FLAGS = (("--seed", "seed"), ("--method", "method"), ("--est-schedule", "est_schedule"),
                ("--train-steps", "train_steps"), ("--data-path", "data_path"),
                ("--train-data-path", "train_data_path"), ("--split", "split"),
                ("--seq-length", "seq_length"), ("--global-batch-size", "global_batch_size"))
TOKENIZER_FLAG = "--tokenizer-model"
DATA_ORDER = "--data-order"  # not a flag: the version of the sample order, accepted like one
OVERRIDABLE = tuple(flag for flag, _ in RESUME_FLAGS) + (TOKENIZER_FLAG, DATA_ORDER)


def normalise_override(name: str) -> str:
    """'seed', '--seed' or 'est_schedule' -> the flag ('--seed', '--est-schedule'); UsageError if unknown."""
    flag = "--" + name.lstrip("-").replace("_", "-")
    if flag not in OVERRIDABLE:
        raise UsageError(f"--override-resume-args {name!r} is not a checked flag; choose from "
                         f"{', '.join(f.lstrip('-') for f in OVERRIDABLE)}")
    return flag


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _partitioning(layout: dict) -> tuple:
    """What DeepSpeed's saved partitions depend on: the layout, and ZeRO-3 or not (ZeRO-1 and 2 files agree)."""
    return layout["world_size"], layout["tp"], layout["pp"], layout["dp"], layout["zero_stage"] == 3


def check_resume(args, saved: dict, tokenizer_sha256: str, layout: dict, where: str,
                 data_order: Optional[int] = None) -> None:
    """UsageError naming the first flag whose value differs from the checkpoint's (unless overridden), another
    sample order than `data_order` (a checkpoint without one predates the versions: 1), or the layout change."""
    overrides = {normalise_override(n) for n in (getattr(args, "override_resume_args", None) or [])}
    saved_args = saved.get("args") or {}
    for flag, name in RESUME_FLAGS:
        if flag in overrides or name not in saved_args:
            continue
        if saved_args[name] != getattr(args, name):
            raise UsageError(f"checkpoint {where} was trained with {flag} {_show(saved_args[name])} but this run has "
                             f"{flag} {_show(getattr(args, name))}; resume with the same value, or accept the change "
                             f"with --override-resume-args {flag.lstrip('-')}")
    if TOKENIZER_FLAG not in overrides and saved.get("tokenizer_sha256") not in (None, tokenizer_sha256):
        raise UsageError(f"checkpoint {where} was trained with another tokenizer (SHA-256 "
                         f"{saved['tokenizer_sha256'][:12]}..., {saved_args.get('tokenizer_model')}) than "
                         f"{TOKENIZER_FLAG} {args.tokenizer_model}; pass that tokenizer, or accept the change with "
                         f"--override-resume-args {TOKENIZER_FLAG.lstrip('-')}")
    saved_order = saved.get("data_order", 1)
    if data_order is not None and DATA_ORDER not in overrides and saved_order != data_order:
        raise UsageError(f"checkpoint {where} was trained on sample order {saved_order} (an earlier est_megatron) but "
                         f"this version reads the samples in order {data_order}, so a resumed run would repeat some "
                         "and skip others; finish the run with the version that started it, or accept the change "
                         f"with --override-resume-args {DATA_ORDER.lstrip('-')}")
    saved_layout = saved.get("layout")
    if saved_layout is not None and _partitioning(saved_layout) != _partitioning(layout):
        def show(d):
            return f"world size {d['world_size']} (tp {d['tp']} x pp {d['pp']} x dp {d['dp']}, ZeRO-{d['zero_stage']})"
        raise UsageError(f"checkpoint {where} was saved by {show(saved_layout)} but this run has {show(layout)}; "
                         "DeepSpeed's optimizer partitions cannot be re-cut: resume with the saved layout, or start "
                         f"a new run from its weights with --init-from {os.path.dirname(where) or where} (fresh "
                         "optimizer state, new --save directory)")
