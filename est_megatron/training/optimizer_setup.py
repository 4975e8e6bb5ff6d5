"""AdamW and the warm-up + decay learning-rate schedule, built from the command line.

We build the optimizer and the LR scheduler ourselves and hand both to `deepspeed.initialize`: DeepSpeed keeps
and updates the full (fp32) parameters through its ZeRO wrapper, steps the scheduler at every optimizer step
and saves both in its checkpoints. The DeepSpeed config they go with is training/ds_config.py's.
"""
from __future__ import annotations

import math

import torch

from est_megatron.errors import UsageError
from est_megatron.optim.partitions import segments_of
from est_megatron.optim.sparse_adamw import SparseAdamW


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
    extension to compile at start-up, a build that can fail on a new GPU architecture (docs/performance.md)."""
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
