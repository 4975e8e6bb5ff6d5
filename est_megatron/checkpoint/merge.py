"""Merging DeepSpeed training checkpoints into single-process weights.

A training tag (step_N/, see checkpoint.tags) holds DeepSpeed's per-rank files: `mp_rank_XX_model_states.pt` per
tensor-parallel rank (key "module"), `layer_XX-model_YY-model_states.pt` per pipeline layer and TP rank under
pipeline parallelism, and under ZeRO-3 placeholders whose fp32 values live in the
`zero_pp_rank_R_mp_rank_00_optim_states.pt` partitions; our `est_state.json` holds the model config.
`training_weights` merges any of these into the weights of one process (TP=1, no pipeline). Files are read with
`safe_load`, which never unpickles code. Model, pipeline and sharding code is imported inside the functions that use
it, so importing this module (and est_megatron.hf) stays cheap.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Dict

import torch

from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError

StateDict = Dict[str, torch.Tensor]


PIPE_FILE = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")
TP_FILE = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")


def safe_load(path: str) -> dict:
    """torch.load that never runs code from the file (tensors and plain containers only, plus the few DeepSpeed
    classes of its optimizer files, which are rebuilt from their fields); a damaged file is one line naming it."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    try:
        with torch.serialization.safe_globals([LossScaler, DynamicLossScaler, ZeroStageEnum]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UsageError(f"{path} holds objects other than tensors ({str(err).splitlines()[0][:160]}); it is not "
                         "loaded, since unpickling could run code: convert the weights to safetensors") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise UsageError(f"{path} cannot be read ({str(err).splitlines()[0][:160]}); it is truncated or damaged, "
                         "copy it again") from None


def load_module_state(path: str) -> StateDict:
    blob = safe_load(path)
    state = blob.get("module", blob)
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def zero3_state(tag_dir: str, model_states: str) -> StateDict:
    """The full fp32 parameters of a ZeRO-3 checkpoint (TP=1): every rank's `zero_pp_rank_R_mp_rank_00_optim_states
    .pt` holds, per parameter group, one flat tensor with, for each parameter in order, its R-th slice of
    ceil(numel / world) elements; `param_shapes` in the model-states file gives the order and shapes. (DeepSpeed's
    zero_to_fp32 does the same but unpickles the files.)"""
    optim = {int(g.group(1)): os.path.join(tag_dir, n) for n in os.listdir(tag_dir)
             if (g := re.match(r"^zero_pp_rank_(\d+)_mp_rank_00_optim_states\.pt$", n))}
    world = ranks_complete(list(optim), "zero_pp_rank_*_optim_states.pt", tag_dir)
    meta = safe_load(model_states)
    flat = [safe_load(optim[r])["optimizer_state_dict"]["fp32_flat_groups"] for r in range(world)]
    state: StateDict = {}
    for group, shapes in enumerate(meta["param_shapes"]):
        offset = 0
        for name, shape in shapes.items():
            numel = int(torch.Size(shape).numel())
            part = -(-numel // world)
            pieces = [flat[r][group][offset:offset + part] for r in range(world)]
            if any(p.numel() != part for p in pieces):
                raise UsageError(f"{tag_dir}: the ZeRO-3 partitions are shorter than the model-states file says; "
                                 "copy the whole checkpoint directory")
            state[name.removeprefix("module.")] = torch.cat(pieces)[:numel].view(shape).clone()
            offset += part
    for name, source in (meta.get("shared_params") or {}).items():
        state[name.removeprefix("module.")] = state[source.removeprefix("module.")]
    return state


def ranks_complete(ranks, what: str, tag_dir: str) -> int:
    """The TP size from the ranks found; a gap means a missing file."""
    size = max(ranks) + 1
    if sorted(set(ranks)) != list(range(size)):
        raise UsageError(f"{tag_dir} lacks the {what} files of some tensor-parallel ranks (found ranks "
                         f"{sorted(set(ranks))}); copy the whole checkpoint directory")
    return size


def pipeline_shards(tag_dir: str, m: ModelConfig, files: dict) -> list:
    """Per TP rank, the state dict of a pipeline run: `layer_XX-model_YY-model_states.pt`, XX the PipelineModule
    layer, YY the TP rank; keys are the layer's own names, placed under the layer's global prefix."""
    from est_megatron.parallel.pipeline import pipeline_layer_prefixes
    prefixes = pipeline_layer_prefixes(m)
    tp = ranks_complete([rank for _, rank in files], "layer_*", tag_dir)
    layers = sorted({layer for layer, _ in files})
    if layers[-1] >= len(prefixes) or any((layer, rank) not in files for layer in layers for rank in range(tp)):
        raise UsageError(f"{tag_dir} has pipeline layer files that do not fit this model ({len(prefixes)} pipeline "
                         "layers); is est_state.json from the same run?")
    states = [{} for _ in range(tp)]
    for (layer, rank), path in sorted(files.items()):
        for key, value in load_module_state(path).items():
            states[rank].setdefault(prefixes[layer] + key, value)  # a tied embedding counts once
    return states


def training_weights(tag_dir: str, m: ModelConfig) -> StateDict:
    """The single-process weights of a training checkpoint of any layout: DeepSpeed's per-rank files are merged
    with the sharding rules of est_megatron.tensor_parallel.sharding (TP) and the layer order of the pipeline (PP)."""
    from est_megatron.tensor_parallel.sharding import merge_tensor_parallel
    names = os.listdir(tag_dir)
    pipe = {(int(g.group(1)), int(g.group(2))): os.path.join(tag_dir, n) for n in names if (g := PIPE_FILE.match(n))}
    if pipe:
        states = pipeline_shards(tag_dir, m, pipe)
    else:
        tp_files = {int(g.group(1)): os.path.join(tag_dir, n) for n in names if (g := TP_FILE.match(n))}
        if not tp_files and "zero_pp_rank_0_mp_rank_00_model_states.pt" in names:  # ZeRO-3 writes only these
            tp_files = {0: os.path.join(tag_dir, "zero_pp_rank_0_mp_rank_00_model_states.pt")}
        if not tp_files:
            raise UsageError(f"{tag_dir} has no mp_rank_00_model_states.pt; is it a DeepSpeed checkpoint tag?")
        tp = ranks_complete(list(tp_files), "mp_rank_*_model_states.pt", tag_dir)
        states = [load_module_state(tp_files[rank]) for rank in range(tp)]
        if any(v.numel() == 0 for v in states[0].values()):  # ZeRO-3 keeps placeholders here: merge the partitions
            if tp > 1:
                raise UsageError(f"{tag_dir} is a ZeRO-3 checkpoint of a tensor-parallel run, which cannot be merged; "
                                 "train with ZeRO-1/2 under tensor parallelism, or with TP=1 under ZeRO-3")
            states = [zero3_state(tag_dir, tp_files[0])]
    state = merge_tensor_parallel(states, m)
    check_shapes(state, m, tag_dir)
    return state


def check_shapes(state: StateDict, m: ModelConfig, where: str) -> None:
    from est_megatron.model.transformer import Transformer
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Transformer(m).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        name = next(k for k in sorted(set(got) | set(expected)) if got.get(k) != expected.get(k))
        raise UsageError(f"{where} does not hold this model's weights: {name} is {got.get(name)} but the model needs "
                         f"{expected.get(name)}; is est_state.json from the same run?")
