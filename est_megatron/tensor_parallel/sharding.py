"""The rules that split a full (single-process) parameter across TP ranks (`shard`) and join the parts again
(`unshard`, `merge_tensor_parallel`: checkpoints saved under tensor parallelism).

Column-parallel weights (fused QKV, group-major, and Llama's [gate; up]) split their output rows, row-parallel
weights (attention output, MLP down, stored input-major) their input rows, the embedding and output projection
their vocabulary rows (padded to a multiple of the TP size); everything else is replicated. Parameters are named
by their global (single-process) names in every layout, so one table of name patterns decides.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, Sequence, Tuple

import torch
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.tensor_parallel.vocab_parallel import vocab_range

_COLUMN = re.compile(r"(^|\.)(attn\.qkv\.(weight|bias)|mlp\.up\.(weight|bias))$")
_ROW = re.compile(r"(^|\.)(attn\.out\.weight|mlp\.down\.weight)$")
_VOCAB = re.compile(r"^(embed|lm_head)\.weight$")


def is_tensor_parallel(name: str) -> bool:
    """Whether the global parameter `name` is split across TP ranks (else it is replicated on each)."""
    return bool(_COLUMN.search(name) or _ROW.search(name) or _VOCAB.match(name))


def _is_gate_up(name: str, cfg: ModelConfig) -> bool:
    return cfg.is_llama and bool(_COLUMN.search(name)) and ".mlp.up." in f".{name}"


def shard(name: str, full: torch.Tensor, cfg: ModelConfig, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's part of the full (single-process) parameter `name`."""
    if _VOCAB.match(name):
        start, end = vocab_range(cfg.vocab_size, tp_rank, tp_size)
        if end <= full.shape[0]:
            return full[start:end]
        padded = full.new_zeros(end - start, full.shape[1])  # rows past the real vocabulary stay zero
        rows = full[start:end]
        padded[: rows.shape[0]] = rows
        return padded
    if tp_size == 1 or not is_tensor_parallel(name):
        return full
    if _is_gate_up(name, cfg):  # [gate; up] -> [gate_local; up_local]
        halves = full.view(2, full.shape[0] // 2, *full.shape[1:])
        return halves.chunk(tp_size, dim=1)[tp_rank].reshape(-1, *full.shape[1:])
    return full.chunk(tp_size, dim=0)[tp_rank]  # whole key/value groups (QKV is group-major), or input rows


def unshard(name: str, parts: Sequence[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """The full (single-process) parameter `name` from its TP ranks' parts in rank order: the inverse of `shard`
    (the vocabulary padding of the last shard is dropped)."""
    tp_size = len(parts)
    if _VOCAB.match(name):
        return torch.cat(list(parts))[: cfg.vocab_size]
    if tp_size == 1 or not is_tensor_parallel(name):
        return parts[0]  # replicated: every rank holds the same tensor
    if _is_gate_up(name, cfg):  # [gate_local; up_local] per rank -> [gate; up]
        halves = [p.view(2, p.shape[0] // 2, *p.shape[1:]) for p in parts]
        return torch.cat(halves, dim=1).reshape(-1, *parts[0].shape[1:])
    return torch.cat(list(parts), dim=0)  # whole key/value groups, or input rows, in rank order


def merge_tensor_parallel(states: Sequence[Dict[str, torch.Tensor]], cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """The single-process state dict from every TP rank's state dict (global names, TP rank order)."""
    names = list(states[0])
    for rank, state in enumerate(states[1:], 1):
        if set(state) != set(names):
            raise ValueError(f"TP rank {rank} holds parameters {sorted(set(state) ^ set(names))[:3]} that rank 0 "
                             "does not (or the reverse)")
    return {name: unshard(name, [state[name] for state in states], cfg) for name in names}


def mark_tensor_parallel(named_parameters: Iterable[Tuple[str, nn.Parameter]], tp_size: int) -> None:
    """Set Megatron's `tensor_model_parallel` flag that DeepSpeed's norm computations read."""
    for name, param in named_parameters:
        param.tensor_model_parallel = tp_size > 1 and is_tensor_parallel(name)
