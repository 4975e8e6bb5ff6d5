"""Reading any of our checkpoints outside training (--init-from, tools/convert_to_hf.py, evaluation): a standalone
one, or a training checkpoint (`latest` -> step_N/, or a step_N/ itself) whose checksums are verified first, as
training's --load verifies them, so damaged weights are refused rather than exported or evaluated."""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

from est_megatron.checkpoint.checksums import damaged_file
from est_megatron.checkpoint.merge import training_weights
from est_megatron.checkpoint.safetensors_files import WEIGHTS, has_safetensors
from est_megatron.checkpoint.standalone import read_standalone
from est_megatron.checkpoint.state import STATE_FILE, read_state
from est_megatron.checkpoint.tags import previous_tag, tag_dir_of
from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError

StateDict = Dict[str, torch.Tensor]


def check_intact(tag_dir: str) -> None:
    """UsageError naming the damaged file of a training checkpoint and the earlier checkpoint to use instead."""
    damage = damaged_file(tag_dir)
    if damage is None:
        return
    run_dir, tag = os.path.split(os.path.normpath(tag_dir))
    older = previous_tag(run_dir, tag)
    fix = f"give the previous checkpoint {os.path.join(run_dir, older)} instead" if older else \
        "restore the files from a copy"
    raise UsageError(f"checkpoint {tag_dir} cannot be trusted: {damage}; {fix}")


def run_state(directory: str) -> dict:
    """The run state (est_state.json) of the training checkpoint a directory holds; {} for any other directory."""
    tag_dir = tag_dir_of(directory)
    return read_state(tag_dir) if tag_dir else {}


def load_est_weights(directory: str) -> Tuple[ModelConfig, StateDict]:
    """(ModelConfig, our single-process state dict) from a standalone checkpoint or a verified training checkpoint
    of any TP/PP/ZeRO layout (merged by checkpoint.merge)."""
    if has_safetensors(directory):
        return read_standalone(directory)
    tag_dir = tag_dir_of(directory)
    if tag_dir is None:
        raise UsageError(f"{directory} holds neither {WEIGHTS} (tools/convert_hf_to_est.py) nor a training "
                         "checkpoint (latest -> step_N/); give one of those")
    check_intact(tag_dir)
    saved = read_state(tag_dir).get("model")
    if saved is None:
        raise UsageError(f"{tag_dir} has no {STATE_FILE} with the model config; is it an est_megatron checkpoint?")
    model = ModelConfig(**saved).validate()
    return model, training_weights(tag_dir, model)
