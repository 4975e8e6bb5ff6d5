"""The DeepSpeed config a run hands `deepspeed.initialize`: the JSON file filled and checked from the command line,
and ZeRO-3's "auto" sizes resolved from the model.

Kept apart from building the optimizer: the memory planner reads the same ZeRO-3 settings without training.
"""
from __future__ import annotations

import copy
import json

from est_megatron.errors import UsageError


def batch_geometry(global_batch: int, micro_batch: int, dp_size: int) -> int:
    """Gradient-accumulation steps, or a UsageError when the batch sizes do not fit the data-parallel size."""
    if global_batch % (micro_batch * dp_size):
        raise UsageError(f"--global-batch-size {global_batch} is not divisible by micro-batch {micro_batch} x "
                         f"data-parallel size {dp_size}; use a multiple of {micro_batch * dp_size} or change "
                         "--micro-batch-size / the number of processes")
    return global_batch // (micro_batch * dp_size)


def load_ds_config(path: str, args, dp_size: int, precision: str) -> dict:
    """The JSON config with batch sizes, clipping and precision ("bf16", "fp16" or "fp32", from
    arguments.resolve_precision) set from the flags (consistency checked)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UsageError(f"cannot read DeepSpeed config {path}: {err}; pass a JSON file with --ds_config") from None
    config = copy.deepcopy(config)
    for section in ("optimizer", "scheduler"):
        if section in config:
            raise UsageError(f"DeepSpeed config {path} has an {section!r} section; remove it: AdamW and the LR "
                             "schedule come from --lr, --min-lr, --lr-warmup-steps, --weight-decay, ...")
    accumulation = batch_geometry(args.global_batch_size, args.micro_batch_size, dp_size)
    for key, value in (("train_batch_size", args.global_batch_size),
                       ("train_micro_batch_size_per_gpu", args.micro_batch_size),
                       ("gradient_accumulation_steps", accumulation)):
        if key in config and config[key] not in (value, "auto"):
            raise UsageError(f"DeepSpeed config {path} sets {key}={config[key]} but the flags give {value}; "
                             "drop it from the JSON (it is filled from --global-batch-size/--micro-batch-size)")
        config[key] = value
    config["gradient_clipping"] = args.clip_grad
    config["zero_allow_untested_optimizer"] = True
    config.setdefault("steps_per_print", 10 ** 9)  # we log ourselves
    config.setdefault("wall_clock_breakdown", False)
    config["bf16"] = dict(config.get("bf16", {}), enabled=precision == "bf16")
    config["fp16"] = dict(config.get("fp16", {}), enabled=precision == "fp16")
    return config


ZERO3_AUTO_KEYS = ("stage3_max_live_parameters", "stage3_max_reuse_distance")
# DeepSpeed's defaults (elements) for the ZeRO-3 keys a config leaves out
ZERO3_DEFAULTS = {"stage3_max_live_parameters": 1_000_000_000, "stage3_max_reuse_distance": 1_000_000_000,
                  "stage3_prefetch_bucket_size": 50_000_000}


def zero3_setting(zero_optimization: dict, key: str) -> int:
    """A ZeRO-3 size from a resolved config's zero_optimization section, DeepSpeed's default when it is missing."""
    return int(zero_optimization.get(key, ZERO3_DEFAULTS[key]))


def zero3_live_budget(model, tp: int = 1) -> int:
    """ZeRO-3's "auto" stage3_max_live_parameters and stage3_max_reuse_distance (elements): two layers' weights on
    one TP rank, the layer that runs and the one prefetched. DeepSpeed's default, 1e9, is the whole model below a
    billion parameters: its prefetcher, which runs ahead of the forward pass until that many weights are gathered,
    then marks the weights it passes for their backward use, and they stay gathered; a rank held every weight."""
    return 2 * model.layer_parameters(tp)


def resolve_zero3_auto(config: dict, model, tp: int = 1) -> dict:
    """`config` with each "auto" of ZERO3_AUTO_KEYS replaced by `zero3_live_budget` (ds_configs/zero3*.json use it;
    DeepSpeed itself takes numbers only)."""
    zero = config.get("zero_optimization", {})
    auto = [key for key in ZERO3_AUTO_KEYS if zero.get(key) == "auto"]
    config = copy.deepcopy(config)
    for key in auto:
        config["zero_optimization"][key] = zero3_live_budget(model, tp)
    left = [key for key, value in _flat_items(config) if value == "auto"]
    if left:
        raise UsageError(f"the DeepSpeed config (--ds_config) sets {', '.join(left)} to \"auto\", which only the "
                         f"batch sizes and {' and '.join(ZERO3_AUTO_KEYS)} take here; give a number")
    return config


def _flat_items(config: dict, prefix: str = ""):
    """(dotted key, value) of every leaf of a nested config."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _flat_items(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))
