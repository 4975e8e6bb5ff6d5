"""Checks that a parallel layout can work, before any process group or model is built (no DeepSpeed import)."""
from __future__ import annotations

from typing import Optional

from est_megatron.errors import UsageError


def validate_layout(model_cfg, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                    world_size: Optional[int] = None, subnet_cfg=None, zero_stage: int = 0) -> None:
    """Raise a one-line UsageError for a layout that cannot work; call it before any work starts."""
    tp, pp = tensor_parallel, pipeline_parallel
    if tp < 1 or pp < 1:
        raise UsageError(f"--tensor-model-parallel-size {tp} and --pipeline-model-parallel-size {pp} must be >= 1")
    if world_size is not None and world_size % (tp * pp):
        raise UsageError(f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
                         f"--pipeline-model-parallel-size {pp}; launch a multiple of {tp * pp} processes")
    if model_cfg.num_attention_heads % tp:
        raise UsageError(f"--tensor-model-parallel-size {tp} does not divide the {model_cfg.num_attention_heads} "
                         "attention heads; choose a divisor of the head count")
    if model_cfg.num_query_groups % tp:
        raise UsageError(f"--tensor-model-parallel-size {tp} does not divide the {model_cfg.num_query_groups} "
                         "key/value heads (num_query_groups); choose a divisor so every rank holds whole groups")
    if model_cfg.ffn_hidden_size % tp:
        raise UsageError(f"--tensor-model-parallel-size {tp} does not divide ffn_hidden_size "
                         f"{model_cfg.ffn_hidden_size}; choose a divisor")
    if model_cfg.num_layers % pp:
        raise UsageError(f"--pipeline-model-parallel-size {pp} does not divide the {model_cfg.num_layers} layers; "
                         "choose a divisor of the layer count")
    if pp > 1 and zero_stage > 1:
        raise UsageError(f"ZeRO stage {zero_stage} cannot run with pipeline parallelism "
                         f"(--pipeline-model-parallel-size {pp}); use ZeRO-1 (ds_configs/zero1_pipeline.json)")
    if subnet_cfg is not None:
        subnet = subnet_cfg.resolved(model_cfg)
        if subnet.whole_groups and subnet.head_strata % tp:
            raise UsageError(f"--tensor-model-parallel-size {tp} does not divide --est-head-strata "
                             f"{subnet.head_strata}; set --est-head-strata to a multiple of {tp}")
        if subnet.mlp_strata % tp:
            raise UsageError(f"--tensor-model-parallel-size {tp} does not divide --est-mlp-strata "
                             f"{subnet.mlp_strata}; set --est-mlp-strata to a multiple of {tp}")
        if subnet.layer_strata % pp:
            raise UsageError(f"--pipeline-model-parallel-size {pp} does not divide --est-layer-strata "
                             f"{subnet.layer_strata}; set --est-layer-strata to a multiple of {pp}")
