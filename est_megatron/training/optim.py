"""AdamW, the warm-up + decay learning-rate schedule, and the DeepSpeed config filled from the command line.

We build the optimizer and the LR scheduler ourselves and hand both to `deepspeed.initialize`: DeepSpeed keeps
and updates the full (fp32) parameters through its ZeRO wrapper, steps the scheduler at every optimizer step
and saves both in its checkpoints.
"""
from __future__ import annotations

import copy
import json
import math

import torch

from est_megatron.errors import UsageError
from est_megatron.training.optimizer_layout import segments_of
from est_megatron.training.sparse_adamw import SparseAdamW


class WarmupDecay:
    """LR multiplier of step s (0-based): linear warm-up to 1 over `warmup` steps, then cosine or linear decay
    to min_lr/lr at `train_steps` (Megatron's schedule). A class, not a lambda, so LambdaLR can save it."""

    def __init__(self, warmup: int, train_steps: int, min_ratio: float, style: str):
        if style not in ("cosine", "linear", "constant"):
            raise UsageError(f"--lr-decay-style {style!r} is unknown; use cosine, linear or constant")
        self.warmup, self.train_steps, self.min_ratio, self.style = warmup, train_steps, min_ratio, style

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.style == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.train_steps - self.warmup))
        if self.style == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            decay = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def build_optimizer(model: torch.nn.Module, args) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms (1-D parameters). A subnetwork method gets the sparse step
    (SparseAdamW: what the plan does not train stays untouched) unless --est-optimizer dense; the dense model gets
    torch's AdamW with its fused kernel where it has one (CUDA, CPU): as fast as DeepSpeed's FusedAdam, and no
    extension to compile at start-up (FusedAdam's build failed on an H200 under torch 2.11, its "9.0a" arch)."""
    decay, no_decay = [], []
    for param in model.parameters():  # a ZeRO-3-partitioned parameter keeps its shape in ds_shape
        (no_decay if len(getattr(param, "ds_shape", param.shape)) < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps)
    if args.method != "dense" and args.est_optimizer == "sparse":
        return SparseAdamW(groups, bias_correction=args.est_bias_correction, lr_power=args.est_lr_power, **kwargs)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError):  # no fused kernel for this device or dtype in this torch build
        return torch.optim.AdamW(groups, **kwargs)


def bind_sparse_optimizer(optimizer: SparseAdamW, engine, model: torch.nn.Module, model_cfg, layout) -> None:
    """Tell the sparse optimizer, after `deepspeed.initialize`, which parameters it steps (global names, this
    rank's transformer layers) and where DeepSpeed keeps their fp32 copies; plans are localised to this TP rank."""
    from est_megatron.model.layer import TransformerLayer
    from est_megatron.parallel.pipeline import global_named_parameters
    from est_megatron.tensor_parallel.plan_localization import localize_plan

    named = global_named_parameters(model) if layout.get_pipe_parallel_world_size() > 1 else \
        list(model.named_parameters())
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    optimizer.bind(named, layers, segments_of(engine, optimizer),
                   lambda plan: localize_plan(plan, model_cfg, layout.tp_rank, layout.tp_size))


def lr_decay_end(args) -> int:
    """The step at which the decay reaches --min-lr: --lr-decay-steps, else --train-steps."""
    return getattr(args, "lr_decay_steps", None) or args.train_steps


def build_lr_scheduler(optimizer: torch.optim.Optimizer, args) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupDecay(args.lr_warmup_steps, lr_decay_end(args), args.min_lr / args.lr, args.lr_decay_style))


def describe_lr_schedule(args) -> str:
    """The start-up line of the learning-rate schedule, with a warning when the warm-up is as long as the run (the
    family's defaults, TinyLlama's 2000 warm-up steps, in a short run): the rate would rise all run long."""
    line = f"learning rate: linear warm-up over {args.lr_warmup_steps} steps to {args.lr:g}"
    if args.lr_decay_style != "constant":
        line += f", {args.lr_decay_style} decay to {args.min_lr:g} by step {lr_decay_end(args)}"
    if args.lr_warmup_steps >= args.train_steps:
        line += (f"; warning: the warm-up is at least the whole run ({args.train_steps} steps), so the rate rises "
                 f"all run long and never decays; set --lr-warmup-steps below --train-steps (e.g. "
                 f"{max(1, args.train_steps // 20)})")
    return line


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
