"""One entry point for the training loop: the model for any (TP, PP) layout, initialised identically from a seed.

TP=1 x PP=1 is the plain `Transformer` (what SAT and the tools expect); TP>1 its tensor-parallel form; PP>1 a
DeepSpeed `PipelineModule` (pass it to `deepspeed.initialize` without `mpu`, the others with `mpu=state`).

Under ZeRO-3 the model is built inside `deepspeed.zero.Init`: every module's parameters are partitioned over the
data-parallel ranks as soon as the module exists, and the seeded initialisation writes each rank's partition
from one full part of the model (a layer, the embeddings) at a time, so no rank ever holds the whole model and
every rank count starts from the weights of a one-process run.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

from est_megatron.config import ModelConfig
from est_megatron.model.documents import DocumentResets
from est_megatron.model.init import load_full_state
from est_megatron.model.recompute import Recompute
from est_megatron.model.transformer import Transformer
from est_megatron.parallel.pipeline import build_pipeline_model, global_named_parameters
from est_megatron.tensor_parallel.layout import validate_layout
from est_megatron.tensor_parallel.plan_localization import PlanHolder


def build_model(cfg: ModelConfig, state, seed: int, subnet_cfg=None, zero_stage: int = 0,
                full_state: Optional[Dict[str, torch.Tensor]] = None, recompute: Optional[Recompute] = None,
                ds_config: Optional[dict] = None, resets: Optional[DocumentResets] = None) \
        -> Tuple[torch.nn.Module, Optional[PlanHolder]]:
    """(model, step_plan): `step_plan` is the holder a pipeline model reads the step's plan from (set it before
    `train_batch`; None without pipeline parallelism, where the plan is an argument of the forward);
    `full_state`, a single-process state dict, replaces the seeded weights (e.g. --init-from); `recompute` marks
    layers for activation recompute; with ZeRO-3 and `ds_config` (the engine's config: dtype, parameter offload)
    the model is built partitioned, inside `deepspeed.zero.Init`; `resets`: what packed documents reset, for the
    pipeline stages (the other layouts take them with each forward)."""
    tp, pp = state.tp_size, state.get_pipe_parallel_world_size()
    validate_layout(cfg, tp, pp, dist.get_world_size(), subnet_cfg, zero_stage)
    step_plan = PlanHolder(cfg, state.tp_rank, tp) if pp > 1 else None
    if pp > 1:
        model = build_pipeline_model(cfg, state, step_plan, seed, subnet_cfg, resets)
        named = global_named_parameters(model)
    elif zero_stage == 3 and ds_config is not None:
        import deepspeed
        with deepspeed.zero.Init(config_dict_or_path=ds_config, mpu=state):
            model = Transformer(cfg, state.tp_group if tp > 1 else None, seed)
        named = list(model.named_parameters())
    else:
        model = Transformer(cfg, state.tp_group if tp > 1 else None, seed)
        named = list(model.named_parameters())
    if full_state is not None:
        load_full_state(named, full_state, cfg, state.tp_rank, tp)
    (recompute or Recompute()).apply(model)
    return model, step_plan
