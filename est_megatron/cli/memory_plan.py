"""Per-rank memory of a training layout: weights, gradients, optimizer states, activations per EST stage, and
whether the peak fits a GPU.

    python tools/memory_plan.py --model tinyllama-1.1b --dp 8 --zero 2 --micro-batch-size 8 --seq-length 2048
    python tools/memory_plan.py --model llama2-7b --tp 2 --dp 16 --zero 3 --offload-optimizer \
        --micro-batch-size 2 --seq-length 4096 --recompute full --gpu-memory-gb 80

The model is a preset (--model) with any shape flag overriding it. The counts are the training code's: the
parameter split of tensor and pipeline parallelism, the realised head/column/layer counts of each stage of
--est-schedule (`PlanSampler.counts`, as `tools/est_plan.py` prices them), the tensors this model saves for its
backward pass, and DeepSpeed ZeRO's partitions and buffers (est_megatron/planning/memory.py explains each
term). Bytes are GiB (2^30); --gpu-memory-gb is decimal GB as GPUs are sold (80 for an A100/H100 80GB).
The fixed runtime overhead (CUDA context, NCCL, allocator slack) is an assumption unless --overhead-gb gives
it; tools/bench/memory.py checks the rest against measured peaks on the CPU.
"""
import argparse
import sys

from est_megatron.config import MODEL_PRESETS, model_preset
from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.help_format import HelpFormatter
from est_megatron.planning.memory import DEFAULT_REDUCE_BUCKET, GIB, PlannedRun, plan_memory, stage_counts

SHAPE_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
               "vocab_size", "max_position_embeddings")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", default="tinyllama-1.1b", choices=sorted(MODEL_PRESETS), help="model preset")
    for flag in SHAPE_FLAGS:
        g.add_argument("--" + flag.replace("_", "-"), type=int, help="override the preset's " + flag)
    g = p.add_argument_group("layout")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    g.add_argument("--pp", type=int, default=1, help="pipeline-parallel size")
    g.add_argument("--dp", type=int, default=1, help="data-parallel size (GPUs / (TP x PP))")
    g.add_argument("--zero", type=int, default=1, choices=(0, 1, 2, 3), help="ZeRO stage")
    g.add_argument("--offload-optimizer", action="store_true",
                   help="optimizer states in host memory (ds_configs/zero*_offload.json)")
    g.add_argument("--offload-params", action="store_true", help="ZeRO-3 weight partition in host memory")
    g.add_argument("--fp32", action="store_true", help="fp32 weights and activations instead of bf16")
    g.add_argument("--reduce-bucket-size", type=int, default=DEFAULT_REDUCE_BUCKET,
                   help="DeepSpeed's reduce_bucket_size (elements)")
    g.add_argument("--max-live-parameters", type=int,
                   help="ZeRO-3's stage3_max_live_parameters (elements): what its prefetcher may keep gathered "
                        "(default: two layers, the \"auto\" of ds_configs/zero3.json; DeepSpeed's own default is "
                        "1e9)")
    g = p.add_argument_group("batch and recompute")
    g.add_argument("--micro-batch-size", type=int, default=1, help="sequences per micro-batch and GPU")
    g.add_argument("--seq-length", type=int, help="tokens per sequence (default: the model's context length)")
    g.add_argument("--micro-batches", type=int, default=1,
                   help="micro-batches per optimizer step on a data-parallel rank (gradient accumulation)")
    g.add_argument("--recompute", choices=("selective", "full"), help="activation recompute granularity")
    g.add_argument("--recompute-num-layers", type=int,
                   help="--recompute full: only the first N layers of each pipeline stage")
    g = p.add_argument_group("method and machine")
    g.add_argument("--est-schedule", default="tinyllama",
                   help="EST schedule whose stages get an activation row: a preset name or a spec like "
                        "0.2,0.5,1:0.5,0.5,0.5/0.5,0.5,1/1,1,1 ('dense' for dense training only)")
    g.add_argument("--dense-optimizer", action="store_true",
                   help="plain AdamW, without SparseAdamW's per-row/column step counts")
    g.add_argument("--gpu-memory-gb", type=float, default=80.0, help="GPU memory to fit in, GB")
    g.add_argument("--overhead-gb", type=float,
                   help="fixed runtime overhead per rank, GiB (default: 2.5 on a GPU, an assumption)")
    return p


@exit_on_usage_error
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    model = model_preset(args.model, **{flag: getattr(args, flag) for flag in SHAPE_FLAGS})
    run = PlannedRun(tp=args.tp, pp=args.pp, dp=args.dp, zero=args.zero, offload_optimizer=args.offload_optimizer,
                     offload_params=args.offload_params, bf16=not args.fp32, recompute=args.recompute,
                     recompute_num_layers=args.recompute_num_layers, micro_batch_size=args.micro_batch_size,
                     seq_length=args.seq_length or model.max_position_embeddings, micro_batches=args.micro_batches,
                     sparse_optimizer=not args.dense_optimizer and args.est_schedule != "dense",
                     reduce_bucket=args.reduce_bucket_size, zero3_retained=args.max_live_parameters)
    if args.gpu_memory_gb <= 0:
        raise UsageError(f"--gpu-memory-gb {args.gpu_memory_gb:g} must be positive, e.g. 80")
    overhead = None if args.overhead_gb is None else int(args.overhead_gb * GIB)
    if overhead is not None and overhead < 0:
        raise UsageError(f"--overhead-gb {args.overhead_gb:g} must not be negative")
    plan = plan_memory(model, run, stage_counts(model, args.est_schedule), overhead_bytes=overhead)
    print(plan.table(args.gpu_memory_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
