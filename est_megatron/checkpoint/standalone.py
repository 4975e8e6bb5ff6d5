"""Our standalone checkpoint: weights and model config without DeepSpeed, what tools/convert_hf_to_est.py writes
and `--init-from` reads. A directory with `model.safetensors` (or shards with their index; our parameter names,
`lm_head.weight` absent when embeddings are tied), `est_config.json` (`{"model": ModelConfig fields, "source":
...}`) and the tokenizer files it came with. Being safetensors and JSON, it loads without unpickling anything."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Dict, Optional, Tuple

import torch

from est_megatron.checkpoint.safetensors_files import (DEFAULT_MAX_SHARD_SIZE, WEIGHTS, read_safetensors,
                                                       save_safetensors)
from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError

StateDict = Dict[str, torch.Tensor]
EST_CONFIG = "est_config.json"


def save_est_checkpoint(directory: str, model: ModelConfig, state: StateDict, source: str = "",
                        tokenizer: Optional[Dict[str, str]] = None,
                        max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> None:
    """model.safetensors (or shards past `max_shard_size`, with their index) + est_config.json (+ tokenizer files,
    {name: path})."""
    save_safetensors(directory, {k: v.detach().cpu().contiguous() for k, v in state.items()}, max_shard_size,
                     metadata={"format": "est_megatron"})
    with open(os.path.join(directory, EST_CONFIG), "w") as f:
        json.dump({"model": dataclasses.asdict(model), "source": source}, f, indent=2)
    for name, path in (tokenizer or {}).items():
        shutil.copyfile(path, os.path.join(directory, name))


def read_standalone(directory: str) -> Tuple[ModelConfig, StateDict]:
    config_path = os.path.join(directory, EST_CONFIG)
    if not os.path.isfile(config_path):
        raise UsageError(f"{directory} has {WEIGHTS} but no {EST_CONFIG}; convert it again")
    with open(config_path) as f:
        model = ModelConfig(**json.load(f)["model"]).validate()
    return model, read_safetensors(directory)
