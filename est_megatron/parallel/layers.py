"""Vocab-parallel embedding and cross-entropy, and the rules that split a full parameter across TP ranks (`shard`)
and join the parts again (`unshard`, for checkpoints saved under tensor parallelism).

The vocabulary is padded to a multiple of the TP size (padded rows are zero and their logits are masked out of
the loss, so the loss equals the unpadded model's). A rank holds rows [start, start + V/TP) of the embedding
and of the output projection; no rank ever holds the full logits.

Initialisation is layout-independent: the full tensors of one part of the model (the embeddings, one layer, the
head) are drawn on CPU from a generator seeded by (seed, part) with the model's own init functions, then each
rank keeps its slice. A TP or PP run therefore starts from exactly the weights of a single-process run with the
same seed, and one part is materialised at a time. A parameter that ZeRO-3 already partitioned (built inside
`deepspeed.zero.Init`) receives only its rank's flat partition of the TP slice, so no rank holds the whole model.
"""
from __future__ import annotations

import contextlib
import math
import re
import zlib
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from est_megatron.config import ModelConfig
from est_megatron.parallel.mappings import copy_to_tensor_parallel_region, reduce_from_tensor_parallel_region

IGNORE_INDEX = -100


def group_size_rank(group: Optional[dist.ProcessGroup]) -> Tuple[int, int]:
    return (1, 0) if group is None else (dist.get_world_size(group), dist.get_rank(group))


def vocab_range(vocab_size: int, tp_rank: int, tp_size: int) -> Tuple[int, int]:
    """[start, end) of the padded vocabulary rows this rank holds."""
    per = math.ceil(vocab_size / tp_size)
    return tp_rank * per, (tp_rank + 1) * per


class VocabParallelEmbedding(nn.Module):
    """Token embedding whose rows are split over the TP group; lookups outside the shard add zero."""

    def __init__(self, vocab_size: int, hidden_size: int, group: Optional[dist.ProcessGroup] = None):
        super().__init__()
        self.group = group
        size, rank = group_size_rank(group)
        self.vocab_size = vocab_size
        self.vocab_start, self.vocab_end = vocab_range(vocab_size, rank, size)
        self.weight = nn.Parameter(torch.empty(self.vocab_end - self.vocab_start, hidden_size))
        self.weight.tensor_model_parallel = size > 1

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.group is None:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local = (input_ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight).masked_fill(outside[..., None], 0.0)
        return reduce_from_tensor_parallel_region(out, self.group)


def parallel_logits(x: torch.Tensor, weight: torch.Tensor, group: Optional[dist.ProcessGroup]) -> torch.Tensor:
    """This rank's vocabulary shard of the logits (column-parallel output projection)."""
    return F.linear(copy_to_tensor_parallel_region(x, group), weight)


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy over logits split along the vocabulary (Megatron's algorithm, fp32)."""

    @staticmethod
    def forward(ctx, logits, target, group, vocab_start, vocab_size):
        logits = logits.float()
        local_vocab = logits.shape[-1]
        padded = vocab_start + local_vocab - vocab_size
        if padded > 0:  # padded rows of the last shard take no part in the softmax
            logits = logits.clone()
            logits[..., local_vocab - padded:] = float("-inf")
        logits_max = logits.max(dim=-1).values
        if group is not None:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - logits_max[..., None]
        valid = target != IGNORE_INDEX
        in_shard = valid & (target >= vocab_start) & (target < vocab_start + local_vocab)
        local_target = (target - vocab_start).masked_fill(~in_shard, 0)
        predicted = shifted.gather(-1, local_target[..., None]).squeeze(-1) * in_shard
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        if group is not None:
            both = torch.stack([predicted, sum_exp])
            dist.all_reduce(both, group=group)
            predicted, sum_exp = both[0], both[1]
        loss = (sum_exp.log() - predicted) * valid
        ctx.save_for_backward(exp.div_(sum_exp[..., None]), local_target, in_shard, valid)
        ctx.dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_target, in_shard, valid = ctx.saved_tensors
        grad = softmax.clone()
        grad.scatter_add_(-1, local_target[..., None], -in_shard.to(grad.dtype)[..., None])
        grad.mul_((grad_loss * valid)[..., None])
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, group: Optional[dist.ProcessGroup],
                                 vocab_size: int) -> torch.Tensor:
    """Mean next-token loss over non-ignored labels (-100), from this rank's vocabulary shard of the logits."""
    size, rank = group_size_rank(group)
    start, _ = vocab_range(vocab_size, rank, size)
    losses = _VocabParallelCrossEntropy.apply(logits, labels, group, start, vocab_size)
    return losses.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)


# --- how each global parameter is split ----------------------------------------------------------------------

_COLUMN = re.compile(r"(^|\.)(attn\.qkv\.(weight|bias)|mlp\.up\.(weight|bias))$")
_ROW = re.compile(r"(^|\.)(attn\.out\.weight|mlp\.down\.weight)$")
_VOCAB = re.compile(r"^(embed|lm_head)\.weight$")


def is_tensor_parallel(name: str) -> bool:
    """Whether the global parameter `name` is split across TP ranks (else it is replicated on each)."""
    return bool(_COLUMN.search(name) or _ROW.search(name) or _VOCAB.match(name))


def shard(name: str, full: torch.Tensor, cfg: ModelConfig, tp_rank: int, tp_size: int) -> torch.Tensor:
    """This TP rank's part of the full (single-process) parameter `name`."""
    if _VOCAB.match(name):
        start, end = vocab_range(cfg.vocab_size, tp_rank, tp_size)
        padded = full.new_zeros(end - start, full.shape[1])  # rows past the real vocabulary stay zero
        rows = full[start:end]
        padded[: rows.shape[0]] = rows
        return padded
    if tp_size == 1:
        return full
    if _COLUMN.search(name):
        if cfg.is_llama and ".mlp.up." in f".{name}":  # [gate; up] -> [gate_local; up_local]
            halves = full.view(2, full.shape[0] // 2, *full.shape[1:])
            return halves.chunk(tp_size, dim=1)[tp_rank].reshape(-1, *full.shape[1:])
        return full.chunk(tp_size, dim=0)[tp_rank]  # QKV is group-major: a rank holds whole groups
    if _ROW.search(name):
        return full.chunk(tp_size, dim=1)[tp_rank]
    return full


def unshard(name: str, parts: Sequence[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """The full (single-process) parameter `name` from its TP ranks' parts in rank order: the inverse of `shard`
    (the vocabulary padding of the last shard is dropped)."""
    tp_size = len(parts)
    if _VOCAB.match(name):
        return torch.cat(list(parts))[: cfg.vocab_size]
    if tp_size == 1 or not is_tensor_parallel(name):
        return parts[0]  # replicated: every rank holds the same tensor
    if _COLUMN.search(name):
        if cfg.is_llama and ".mlp.up." in f".{name}":  # [gate_local; up_local] per rank -> [gate; up]
            halves = [p.view(2, p.shape[0] // 2, *p.shape[1:]) for p in parts]
            return torch.cat(halves, dim=1).reshape(-1, *parts[0].shape[1:])
        return torch.cat(list(parts), dim=0)  # whole key/value groups per rank, in group order
    return torch.cat(list(parts), dim=1)  # row-parallel: input columns


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
    import sys
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
    from est_megatron.model.norms import build_norm
    from est_megatron.model.transformer import TransformerLayer

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
        full = full_part(cfg, part, seed)
        for name, param in params:
            assign(param, shard(name, full[name], cfg, tp_rank, tp_size))


@torch.no_grad()
def load_full_state(named_parameters: Iterable[Tuple[str, nn.Parameter]], state: Dict[str, torch.Tensor],
                    cfg: ModelConfig, tp_rank: int = 0, tp_size: int = 1) -> None:
    """Load a single-process (TP=1) state dict into a TP shard, parameters given by their global names."""
    for name, param in named_parameters:
        assign(param, shard(name, state[name], cfg, tp_rank, tp_size))
