"""Layout-independent initialisation: every parallel layout starts from the weights of a one-process run.

The full tensors of one part of the model (the embeddings, one layer, the head) are drawn on CPU from a generator
seeded by (seed, part) with the model's own init code (`TransformerLayer.reset_parameters`), then each rank keeps
its slice (`tensor_parallel.sharding.shard`). One part is materialised at a time. A parameter that ZeRO-3 already
partitioned (built inside `deepspeed.zero.Init`) receives only its rank's flat partition of the TP slice, so no
rank holds the whole model.
"""
from __future__ import annotations

import contextlib
import re
import sys
import zlib
from typing import Dict, Iterable, Tuple

import torch
import torch.distributed as dist
from torch import nn

from est_megatron import host_heap
from est_megatron.config import ModelConfig
from est_megatron.model.layer import TransformerLayer
from est_megatron.model.norms import build_norm
from est_megatron.tensor_parallel.sharding import shard


def _part_of(name: str) -> str:
    match = re.match(r"layers\.(\d+)\.", name)
    if match:
        return f"layers.{match.group(1)}"
    return "embed" if name.split(".")[0] in ("embed", "pos_embed") else "head"


def is_partitioned(param: torch.Tensor) -> bool:
    """Whether ZeRO-3 partitioned `param` (built inside deepspeed.zero.Init): its data lives in `ds_tensor`."""
    return getattr(param, "ds_tensor", None) is not None


@contextlib.contextmanager
def _outside_zero_init():
    """Modules built here are ordinary full-size modules even inside deepspeed.zero.Init, which would otherwise
    partition them (and allocate their tensors on its device, in its dtype)."""
    zero_init = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    active = zero_init is not None and zero_init.top_level_context is not None
    if active:
        zero_init.shutdown_init_context()
    try:
        yield
    finally:
        if active:
            zero_init.restore_init_context()


def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """param := value (this TP rank's whole tensor); a ZeRO-3-partitioned parameter keeps only its rank's part of
    the flattened tensor, as DeepSpeed lays it out (equal parts in data-parallel rank order, zero padding last)."""
    if not is_partitioned(param):
        param.copy_(value)
        return
    part = param.ds_tensor
    start = part.ds_numel * dist.get_rank(group=param.ds_process_group)
    mine = value.reshape(-1)[start:start + part.ds_numel]
    part[:mine.numel()].copy_(mine)
    part[mine.numel():].zero_()


def full_part(cfg: ModelConfig, part: str, seed: int) -> Dict[str, torch.Tensor]:
    """Full initial tensors of one part ("embed", "layers.<i>" or "head"), drawn as the model's init does."""
    std = cfg.init_std
    generator_seed = (seed * 1_000_003 + zlib.crc32(part.encode())) % (2 ** 63)
    with torch.random.fork_rng(devices=[]), _outside_zero_init():
        torch.manual_seed(generator_seed)
        if part == "embed":
            out = {"embed.weight": torch.empty(cfg.vocab_size, cfg.hidden_size).normal_(std=std)}
            if not cfg.is_llama:
                out["pos_embed.weight"] = torch.empty(cfg.max_position_embeddings,
                                                      cfg.hidden_size).normal_(std=std / 2)
            return out
        if part == "head":
            out = {f"final_norm.{k}": v for k, v in build_norm(cfg).state_dict().items()}
            if not cfg.tie_embeddings:
                out["lm_head.weight"] = torch.empty(cfg.vocab_size, cfg.hidden_size).normal_(std=std)
            return out
        layer = TransformerLayer(cfg, None)
        layer.reset_parameters(std, cfg.num_layers)
        return {f"{part}.{k}": v for k, v in layer.state_dict().items()}


@torch.no_grad()
def initialize_from_seed(named_parameters: Iterable[Tuple[str, nn.Parameter]], cfg: ModelConfig, seed: int,
                         tp_rank: int = 0, tp_size: int = 1) -> None:
    """Fill parameters given by their *global* names with their TP slice of the seeded full initial weights."""
    by_part: Dict[str, list] = {}
    for name, param in named_parameters:
        by_part.setdefault(_part_of(name), []).append((name, param))
    for part, params in by_part.items():
        host_heap.release_freed()  # the previous draw's freed pages
        full = full_part(cfg, part, seed)
        for name, param in params:
            assign(param, shard(name, full[name], cfg, tp_rank, tp_size))


@torch.no_grad()
def load_full_state(named_parameters: Iterable[Tuple[str, nn.Parameter]], state: Dict[str, torch.Tensor],
                    cfg: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Load a single-process (TP=1) state dict into a TP shard, parameters given by their global names."""
    for name, param in named_parameters:
        assign(param, shard(name, state[name], cfg, tp_rank, tp_size))
