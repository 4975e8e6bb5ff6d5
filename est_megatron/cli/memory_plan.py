"""Per-rank memory of a training run: weights, gradients, optimizer states, activations per EST stage, and whether
the peak fits a GPU. It takes the training launcher's own flags, so the flags of a planned run can be pasted as
they are, launcher prefix included:

    python tools/memory_plan.py deepspeed --num_gpus 8 launch/pretrain_tinyllama.py \\
        --ds_config ds_configs/zero3_offload.json --tensor-model-parallel-size 2 --recompute-activations \\
        --micro-batch-size 8 --seq-length 2048 --data-path shards/slimpajama --save ckpt/tinyllama --lr 4e-4

The flags are parsed by the launcher's parser (est_megatron.training.arguments) and read as training reads them:
the model preset and shape flags, --tensor-model-parallel-size and --pipeline-model-parallel-size, the ZeRO stage
and offload of the --ds_config JSON (ZeRO-1, the launcher's default, without it), --recompute-activations and
--recompute-granularity/--recompute-num-layers, --micro-batch-size, --global-batch-size (gradient accumulation),
--seq-length, --bf16/--fp16/--fp32 (bf16 unless given), --method and --est-schedule (raptr and sat get the dense
row, which bounds their sampled steps). Training-only flags (data, learning rate, checkpoints, logging) are
accepted and ignored; a flag the launcher does not know is an error, as it is for training. The data-parallel size
is the launcher's process count (`deepspeed --num_gpus N [--num_nodes M]`, `torchrun --nproc_per_node N
[--nnodes M]`) over TP x PP, or --dp. The older short spellings stay: --tp, --pp, --zero with --offload-optimizer and
--offload-params (they must agree with --ds_config when both are given), --recompute, --micro-batches,
--dense-optimizer.

The counts are the training code's: the parameter split of tensor and pipeline parallelism, the realised
head/column/layer counts of each stage of --est-schedule (`PlanSampler.counts`, as `tools/est_plan.py` prices
them), the tensors this model saves for its backward pass, the chunked loss (a pipeline's last stage holds whole
logits), and DeepSpeed ZeRO's partitions and buffers (est_megatron/planning/memory.py explains each term). Bytes
are GiB (2^30); --gpu-memory-gb is decimal GB as GPUs are sold (80 for an A100/H100 80GB). The fixed runtime
overhead (CUDA context, NCCL, allocator slack) is an assumption unless --overhead-gb gives it;
tools/bench/memory.py checks the rest against measured peaks on the CPU.
"""
import argparse
import sys

from est_megatron.errors import UsageError, exit_on_usage_error
from est_megatron.planning.launch_command import split_launch_command
from est_megatron.planning.memory import GIB, plan_memory
from est_megatron.planning.training_run import planned_training_run
from est_megatron.training.arguments import FAMILY_DEFAULTS
from est_megatron.training.arguments import build_parser as training_parser

# The launcher's flags the plan reads; --help lists these, the launcher's others are accepted and ignored.
PLANNED_FLAGS = ("model", "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                 "max_position_embeddings", "make_vocab_size_divisible_by", "seq_length", "micro_batch_size",
                 "global_batch_size", "method", "est_schedule", "est_optimizer", "est_whole_groups",
                 "est_head_strata", "est_mlp_strata", "est_layer_strata", "tensor_model_parallel_size",
                 "pipeline_model_parallel_size", "deepspeed_config", "precision", "recompute_activations",
                 "recompute_granularity", "recompute_num_layers", "help")

EPILOG = """example, the flags of a TinyLlama run on 2 nodes of 8 GPUs pasted after the tool:

    python tools/memory_plan.py deepspeed --num_gpus 8 --num_nodes 2 launch/pretrain_tinyllama.py \\
        --ds_config ds_configs/zero3.json --tensor-model-parallel-size 2 --recompute-granularity full \\
        --micro-batch-size 16 --global-batch-size 1024 --data-path shards/slimpajama --save ckpt/tinyllama

and the same plan in the short spellings:

    python tools/memory_plan.py --tp 2 --dp 8 --zero 3 --recompute full --micro-batch-size 16 --micro-batches 8
"""


def build_parser(family: str = "tinyllama") -> argparse.ArgumentParser:
    """The launcher's parser of `family`, its unplanned flags hidden from --help, plus the planner's own flags."""
    p = training_parser(family)
    p.description, p.epilog = __doc__, EPILOG
    for action in p._actions:
        if action.dest not in PLANNED_FLAGS:
            action.help = argparse.SUPPRESS
    # None: not given, so the planner can tell the launcher's defaults from the flags (zero_layout, global_batch_size)
    p.set_defaults(deepspeed_config=None, global_batch_size=None)
    g = p.add_argument_group("planner")
    g.add_argument("--dp", type=int, help="data-parallel size when the command has no launcher prefix (default 1)")
    g.add_argument("--vocab-size", type=int,
                   help="the tokenizer's vocabulary, padded by --make-vocab-size-divisible-by as training pads it "
                        "(default: the preset's)")
    g.add_argument("--reduce-bucket-size", type=int,
                   help="DeepSpeed's reduce_bucket_size (elements; default: --ds_config's, 5e7 as ds_configs/*.json)")
    g.add_argument("--max-live-parameters", type=int,
                   help="ZeRO-3's stage3_max_live_parameters (elements): what its prefetcher may keep gathered "
                        "(default: --ds_config's; two layers, the \"auto\" of ds_configs/zero3.json)")
    g.add_argument("--gpu-memory-gb", type=float, default=80.0, help="GPU memory to fit in, GB")
    g.add_argument("--overhead-gb", type=float,
                   help="fixed runtime overhead per rank, GiB (default: 2.5 on a GPU, an assumption)")
    g = p.add_argument_group("short spellings")
    g.add_argument("--tp", dest="tensor_model_parallel_size", type=int, help="--tensor-model-parallel-size")
    g.add_argument("--pp", dest="pipeline_model_parallel_size", type=int, help="--pipeline-model-parallel-size")
    g.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="ZeRO stage, as --ds_config ds_configs/zeroN.json")
    g.add_argument("--offload-optimizer", action="store_true",
                   help="optimizer states in host memory, as ds_configs/zero*_offload.json")
    g.add_argument("--offload-params", action="store_true",
                   help="ZeRO-3 weight partition in host memory, as ds_configs/zero3_offload.json")
    g.add_argument("--recompute", dest="recompute_granularity", choices=("selective", "full"),
                   help="--recompute-granularity")
    g.add_argument("--micro-batches", type=int,
                   help="micro-batches per optimizer step on a data-parallel rank: --global-batch-size / "
                        "(--micro-batch-size x DP)")
    g.add_argument("--dense-optimizer", dest="est_optimizer", action="store_const", const="dense",
                   help="--est-optimizer dense: plain AdamW, without SparseAdamW's per-row/column step counts")
    return p


@exit_on_usage_error
def main(argv=None) -> int:
    command = split_launch_command(sys.argv[1:] if argv is None else argv)
    args = build_parser(command.family).parse_args(command.training_flags)
    if args.gpu_memory_gb <= 0:
        raise UsageError(f"--gpu-memory-gb {args.gpu_memory_gb:g} must be positive, e.g. 80")
    overhead = None if args.overhead_gb is None else int(args.overhead_gb * GIB)
    if overhead is not None and overhead < 0:
        raise UsageError(f"--overhead-gb {args.overhead_gb:g} must not be negative")
    model, run, stages = planned_training_run(args, command.processes,
                                              FAMILY_DEFAULTS[command.family]["global_batch_size"])
    if args.method in ("raptr", "sat"):
        print(f"--method {args.method}: planned as dense, which bounds its sampled steps\n")
    print(plan_memory(model, run, stages, overhead_bytes=overhead).table(args.gpu_memory_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
