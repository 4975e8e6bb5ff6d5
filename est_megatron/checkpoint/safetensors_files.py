"""Weights as safetensors, in one file or in numbered shards with an index (huggingface_hub's layout, which
transformers reads): the weight files of both our standalone checkpoint and the Hugging Face export. safetensors
holds tensors only, so reading it never runs code."""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Optional

import torch

from est_megatron.errors import UsageError

StateDict = Dict[str, torch.Tensor]
WEIGHTS = "model.safetensors"
# Above this many bytes the weights are written as numbered shards with an index (Hugging Face's layout and default).
DEFAULT_MAX_SHARD_SIZE = "5GB"
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
               "GIB": 2**30, "TIB": 2**40}


def parse_shard_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 bytes ('500MB', '2GiB', '1000000' too), as --max-shard-size takes it."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).upper() if match else None
    if unit not in _SIZE_UNITS or float(match.group(1)) * _SIZE_UNITS[unit] < 1:
        raise UsageError(f"--max-shard-size {text!r} is not a size; give bytes or a number with a unit, e.g. 5GB, "
                         f"500MB or 2GiB")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def has_safetensors(directory: str) -> bool:
    """Whether the directory holds model.safetensors or a shard index."""
    return any(os.path.isfile(os.path.join(directory, WEIGHTS + end)) for end in ("", ".index.json"))


def save_safetensors(directory: str, state: StateDict, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE,
                     metadata: Optional[Dict[str, str]] = None) -> List[str]:
    """Writes `state` as model.safetensors, or, past `max_shard_size`, as model-0000i-of-0000n.safetensors with
    model.safetensors.index.json; any earlier weight files of either layout in `directory` are removed first.
    Returns the weight files written."""
    from huggingface_hub import save_torch_state_dict
    os.makedirs(directory, exist_ok=True)
    # A slice of a larger tensor (a split fused weight) gets its own storage, else the whole storage would be saved.
    state = {k: v if v.untyped_storage().nbytes() == v.numel() * v.element_size() else v.clone()
             for k, v in state.items()}
    save_torch_state_dict(state, directory, max_shard_size=parse_shard_size(max_shard_size), metadata=metadata)
    index = os.path.join(directory, WEIGHTS + ".index.json")
    if not os.path.isfile(index):
        return [WEIGHTS]
    with open(index) as f:
        return sorted(set(json.load(f)["weight_map"].values()))


def read_safetensors(directory: str) -> Optional[StateDict]:
    """The tensors of model.safetensors, or of the shards model.safetensors.index.json names; None if neither."""
    from safetensors.torch import load_file
    single = os.path.join(directory, WEIGHTS)
    if os.path.isfile(single):
        return load_file(single)
    index = single + ".index.json"
    if not os.path.isfile(index):
        return None
    try:
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{index} is not a safetensors index ({type(err).__name__}: {err}); write the weights "
                         "again") from None
    state: StateDict = {}
    for name in sorted(set(weight_map.values())):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise UsageError(f"{index} names {name}, which is missing; copy every shard or write the weights again")
        state.update(load_file(path))
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise UsageError(f"{index} maps {missing[0]} (and {len(missing) - 1} more) to shards that lack it; write "
                         "the weights again")
    return state
