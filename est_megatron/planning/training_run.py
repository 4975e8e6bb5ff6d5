"""The run the training launcher's parsed flags describe, as the memory planner's model, `PlannedRun` and stages.

The flags are parsed by the launcher's own parser (est_megatron.training.arguments) and read the way training reads
them: the model as `build_model_config` builds it, the layout through `validate_layout`, the DeepSpeed JSON through
`load_ds_config` (its batch checks, precision) and `resolve_zero3_auto`, recompute through `Recompute.from_args`, the
sparse optimizer as `build_optimizer` chooses it. So a layout the planner accepts is one training accepts.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

from est_megatron.config import MODEL_PRESETS, ModelConfig
from est_megatron.errors import UsageError
from est_megatron.model.recompute import Recompute
from est_megatron.planning.memory import DEFAULT_REDUCE_BUCKET, PlannedRun, stage_counts, zero3_retained
from est_megatron.subnet.flops import SubnetCounts
from est_megatron.tensor_parallel.layout import validate_layout
from est_megatron.training.ds_config import batch_geometry, load_ds_config, resolve_zero3_auto
from est_megatron.training.methods import subnet_config

DEEPSPEED_REDUCE_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size (elements) when a config leaves it out
OFFLOAD_DEVICES = ("cpu", "nvme")


@dataclass(frozen=True)
class ZeroLayout:
    """What the planner reads from a DeepSpeed config's zero_optimization section."""

    stage: int
    offload_optimizer: bool
    offload_params: bool
    reduce_bucket: int
    retained: Optional[int]  # ZeRO-3's zero3_retained elements; None where the section leaves it to "auto"

    @classmethod
    def from_section(cls, zero: dict) -> "ZeroLayout":
        """From a resolved section (ZeRO-3's "auto" sizes replaced, `resolve_zero3_auto`)."""
        stage = int(zero.get("stage", 0))
        offloaded = lambda key: zero.get(key, {}).get("device", "none") in OFFLOAD_DEVICES  # noqa: E731
        return cls(stage, offloaded("offload_optimizer") or bool(zero.get("cpu_offload")),
                   offloaded("offload_param"), int(zero.get("reduce_bucket_size", DEEPSPEED_REDUCE_BUCKET)),
                   zero3_retained(zero) if stage == 3 else None)


def training_model(args: argparse.Namespace) -> ModelConfig:
    """The model training builds from these flags, with the preset's vocabulary or the tokenizer's (--vocab-size)
    padded as training pads it."""
    from est_megatron.training.trainer import build_model_config  # imports DeepSpeed: only once flags parsed
    return build_model_config(args, args.vocab_size or MODEL_PRESETS[args.model]["vocab_size"])


def data_parallel_size(args: argparse.Namespace, processes: Optional[int]) -> int:
    """The launcher's processes over TP x PP, or --dp; both given, they must agree."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if processes is None:
        return args.dp or 1
    if processes % (tp * pp):
        raise UsageError(f"{processes} processes are not divisible by --tensor-model-parallel-size {tp} x "
                         f"--pipeline-model-parallel-size {pp}; launch a multiple of {tp * pp}")
    dp = processes // (tp * pp)
    if args.dp not in (None, dp):
        raise UsageError(f"--dp {args.dp} disagrees with the launcher's {processes} processes / (TP {tp} x PP {pp}) "
                         f"= {dp}; drop --dp")
    return dp


def zero_layout(args: argparse.Namespace, model: ModelConfig, dp: int, precision: str) -> ZeroLayout:
    """The ZeRO layout of --ds_config, which --zero/--offload-* must then agree with; without it, theirs (ZeRO-1
    by default, the launcher's default config)."""
    if args.deepspeed_config is None:
        layout = ZeroLayout(1 if args.zero is None else args.zero, args.offload_optimizer, args.offload_params,
                            DEFAULT_REDUCE_BUCKET, None)
    else:
        if not os.path.isfile(args.deepspeed_config):
            raise UsageError(f"DeepSpeed config {args.deepspeed_config} does not exist; pass one of "
                             "ds_configs/*.json with --ds_config")
        config = load_ds_config(args.deepspeed_config, args, dp, precision)
        zero = resolve_zero3_auto(config, model, args.tensor_model_parallel_size).get("zero_optimization", {})
        layout = ZeroLayout.from_section(zero)
        path = args.deepspeed_config
        if args.zero not in (None, layout.stage):
            raise UsageError(f"--zero {args.zero} disagrees with --ds_config {path}, which sets ZeRO stage "
                             f"{layout.stage}; drop --zero (the config decides)")
        for flag, given, offloaded, what in (("--offload-optimizer", args.offload_optimizer, layout.offload_optimizer,
                                              "offload_optimizer"),
                                             ("--offload-params", args.offload_params, layout.offload_params,
                                              "offload_param")):
            if given and not offloaded:
                raise UsageError(f"{flag} disagrees with --ds_config {path}, which has no zero_optimization.{what} "
                                 "to a cpu or nvme device; drop the flag or pass a config that offloads")
    return ZeroLayout(layout.stage, layout.offload_optimizer, layout.offload_params,
                      args.reduce_bucket_size or layout.reduce_bucket,
                      layout.retained if args.max_live_parameters is None else args.max_live_parameters)


def global_batch_size(args: argparse.Namespace, default: int, dp: int) -> int:
    """--global-batch-size, or the old --micro-batches (accumulation steps) times micro-batch x DP, or the
    launcher's default."""
    if args.micro_batches is None:
        return args.global_batch_size or default
    implied = args.micro_batches * args.micro_batch_size * dp
    if args.global_batch_size not in (None, implied):
        raise UsageError(f"--micro-batches {args.micro_batches} gives a global batch of {implied}, not "
                         f"--global-batch-size {args.global_batch_size}; pass one of them")
    return implied


def planned_training_run(args: argparse.Namespace, processes: Optional[int], default_global_batch: int) \
        -> Tuple[ModelConfig, PlannedRun, List[Tuple[str, SubnetCounts]]]:
    """(model, run, stages) of the training run `args` (the launcher's parser plus the planner's flags) describe on
    `processes` processes (None: --dp data-parallel ranks)."""
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    for name in ("micro_batch_size", "global_batch_size", "seq_length", "tensor_model_parallel_size",
                 "pipeline_model_parallel_size", "dp", "micro_batches"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    model = training_model(args)
    subnet = subnet_config(args, model)
    dp = data_parallel_size(args, processes)
    args.global_batch_size = global_batch_size(args, default_global_batch, dp)
    precision = args.precision or "bf16"  # training's default on a GPU with bf16
    zero = zero_layout(args, model, dp, precision)
    validate_layout(model, tp, pp, subnet_cfg=subnet, zero_stage=zero.stage)
    recompute = Recompute.from_args(args)
    run = PlannedRun(tp=tp, pp=pp, dp=dp, zero=zero.stage, offload_optimizer=zero.offload_optimizer,
                     offload_params=zero.offload_params, bf16=precision != "fp32", recompute=recompute.granularity,
                     recompute_num_layers=recompute.num_layers, micro_batch_size=args.micro_batch_size,
                     seq_length=args.seq_length,
                     micro_batches=batch_geometry(args.global_batch_size, args.micro_batch_size, dp),
                     sparse_optimizer=args.method != "dense" and args.est_optimizer == "sparse",
                     reduce_bucket=zero.reduce_bucket, zero3_retained=zero.retained)
    schedule = args.est_schedule if args.method == "est" else "dense"
    return model, run, stage_counts(model, schedule, subnet)
