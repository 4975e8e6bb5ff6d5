"""--compile: torch.compile of every transformer layer (`model.regional_compile`), and the layouts it refuses.

Verified here (CPU): one process and data parallelism under ZeRO-1/2, activation recompute (full and selective),
packed documents on torch's SDPA path, every method. Refused, each in one line naming the flag and the layout:
tensor parallelism (all-reduces inside the layer), pipeline parallelism (DeepSpeed's stage modules), ZeRO-3
(parameters gathered by module hooks around the layer) and --reset-attention-mask on flash-attn (the longest
document's length is a Python number that changes every micro-batch: a recompile each time).
"""
from __future__ import annotations

from est_megatron.errors import UsageError
from est_megatron.model.regional_compile import DEFAULT_BACKEND

BACKENDS = (DEFAULT_BACKEND, "aot_eager", "eager")  # aot_eager and eager: fast compiles for tests and debugging


def add_compile_args(group) -> None:
    group.add_argument("--compile", action="store_true",
                       help="torch.compile each transformer layer (regional, static shapes): a stage compiles once "
                            "on its first step; compiled graphs and recompiles are logged")
    group.add_argument("--compile-backend", default=DEFAULT_BACKEND, choices=BACKENDS,
                       help="torch.compile backend of --compile (aot_eager/eager compile fast but do not fuse)")


def check_compile_layout(args, zero_stage: int, flash_attn: bool) -> None:
    """UsageError for a layout --compile is not verified with; `flash_attn`: the attention runs flash-attn."""
    if not args.compile:
        return
    refused = [(args.tensor_model_parallel_size > 1,
                f"tensor parallelism (--tensor-model-parallel-size {args.tensor_model_parallel_size})"),
               (args.pipeline_model_parallel_size > 1,
                f"pipeline parallelism (--pipeline-model-parallel-size {args.pipeline_model_parallel_size})"),
               (zero_stage == 3, f"ZeRO-3 (--ds_config {args.deepspeed_config})"),
               (flash_attn and args.reset_attention_mask, "--reset-attention-mask on flash-attn's variable-length "
                                                          "kernel")]
    for hit, layout in refused:
        if hit:
            raise UsageError(f"--compile is not supported with {layout}; drop --compile or change the layout")
