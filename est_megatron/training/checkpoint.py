"""Checkpoints: DeepSpeed's (model, ZeRO optimizer partitions, LR scheduler) plus our state, committed atomically
and verified on load.

The layout of `--save DIR` is est_megatron.checkpoint's: `DIR/step_000123/` is DeepSpeed's tag directory, to which
we add the run state `est_state.json` (checkpoint.state), one `rng_state_rankNNNNN.json` per rank (plain JSON:
loading it can run no code) and, written last, `checksums.json` (checkpoint.checksums). `DIR/latest` names the
newest complete tag (checkpoint.tags). This module holds what needs the DeepSpeed engine: saving and restoring.

DeepSpeed's own `latest` is written with a plain open/write (a crash mid-write leaves it empty or pointing at a
half-written tag), so we save with `save_latest=False` and, after every rank has written its files, rank 0 writes
the checksums and then replaces `latest` atomically (temp file, fsync, os.replace). A crash or a full disk at any
moment leaves `latest` on a complete, verified checkpoint; a failed save removes its partial tag and says which
checkpoint is kept. Old tags beyond `--keep-checkpoints` are removed only after the pointer moved, and only tags
older than the one just written.

DeepSpeed reads its own files with `torch.load(weights_only=False)`: only `--load` checkpoints you trust (our
checksums catch damage, not a forged checkpoint). Weights from elsewhere go through `--init-from`, which never
unpickles.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import random
import shutil
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from est_megatron.checkpoint.checksums import damaged_file, write_checksums
from est_megatron.checkpoint.durable import write_durably
from est_megatron.checkpoint.state import read_state, write_state
from est_megatron.checkpoint.tags import (LATEST, complete_tags, latest_tag, previous_tag, read_latest, step_of,
                                          tag_for, write_latest)
from est_megatron.config import ModelConfig
from est_megatron.errors import UsageError
from est_megatron.training.distributed import agree


# ---- RNG states as JSON ----

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _bytes_tensor(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def rng_states() -> dict:
    """Python, numpy, torch (and CUDA) generator states as plain JSON values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_states(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


def rng_file(tag_dir: str, rank: int) -> str:
    return os.path.join(tag_dir, f"rng_state_rank{rank:05d}.json")


# ---- save ----

class SaveFailed(UsageError):
    """A save that could not complete; the previous checkpoint is untouched."""


def save_checkpoint(engine, save_dir: str, step: int, state: dict, keep: int) -> str:
    """Collective: every rank saves its part; returns the tag. `state` must be JSON-serialisable.

    A rank that fails to write (disk full, I/O error) still joins the collectives, so every rank raises
    SaveFailed with the same line; the partial tag is removed and `latest` keeps pointing at the previous one.
    """
    tag = tag_for(step)
    rank = dist.get_rank()
    tag_dir = os.path.join(save_dir, tag)
    error = None
    try:
        engine.save_checkpoint(save_dir, tag=tag, client_state={"est_step": step}, save_latest=False)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        error = err
        dist.barrier()  # DeepSpeed's save ends in a barrier that the other ranks are waiting in
    if error is None:
        try:
            os.makedirs(tag_dir, exist_ok=True)
            write_durably(rng_file(tag_dir, rank), json.dumps(rng_states()))
            if rank == 0:
                write_state(tag_dir, state)
        except OSError as err:
            error = err
    problem = agree(None if error is None else f"rank {rank}: {_short(error)}")
    if problem is None and rank == 0:
        try:
            write_checksums(tag_dir)
            write_latest(save_dir, tag)
        except OSError as err:
            error = err
    if problem is None:
        problem = agree(None if error is None else f"rank {rank}: {_short(error)}")
    if problem is not None:
        _abandon(save_dir, tag, problem)
    if rank == 0 and keep > 0:
        _remove_old(save_dir, keep, step)
    dist.barrier()
    return tag


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _abandon(save_dir: str, tag: str, problem: str) -> None:
    """Remove the partial tag (never the one `latest` names) and raise SaveFailed on every rank."""
    kept = latest_tag(save_dir)
    if dist.get_rank() == 0 and kept != tag:
        shutil.rmtree(os.path.join(save_dir, tag), ignore_errors=True)
    dist.barrier()
    where = f"the previous checkpoint {os.path.join(save_dir, kept)} is kept" if kept else "no earlier checkpoint"
    raise SaveFailed(f"saving checkpoint {tag} to {save_dir} failed ({problem}); {where}; free space or fix "
                     f"--save, then resume with --load {save_dir}")


def _remove_old(save_dir: str, keep: int, step: int) -> None:
    """Keep the newest `keep` complete tags up to `step`; older ones (and older incomplete leftovers) go."""
    complete = [name for s, name in complete_tags(save_dir) if s <= step]
    keep_names = set(complete[-keep:])
    for name in os.listdir(save_dir):
        tag_step = step_of(name)
        if tag_step is not None and tag_step < step and name not in keep_names and \
                os.path.isdir(os.path.join(save_dir, name)):
            shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)


# ---- load ----

# The flags that set a model field (fields not listed come from the --model preset alone).
MODEL_FLAGS = {"num_layers": "--num-layers", "hidden_size": "--hidden-size", "ffn_hidden_size": "--ffn-hidden-size",
               "num_attention_heads": "--num-attention-heads", "num_query_groups": "--num-query-groups",
               "max_position_embeddings": "--max-position-embeddings/--seq-length",
               "vocab_size": "--tokenizer-model/--make-vocab-size-divisible-by"}


def check_model_matches(saved: dict, model: ModelConfig, where: str) -> None:
    """UsageError naming the first model field whose value differs from the checkpoint's, and its flag."""
    current = dataclasses.asdict(model)
    for name, value in current.items():
        if name in saved and saved[name] != value:
            flags = "--model" + (f" and {MODEL_FLAGS[name]}" if name in MODEL_FLAGS else "")
            raise UsageError(f"checkpoint {where} has model {name}={saved[name]} but this run has {name}={value}; "
                             f"load it with the same model shape ({flags}) or start a fresh --save directory")


def _previous_hint(load_dir: str, tag: str) -> str:
    older = previous_tag(load_dir, tag)
    if older:
        return (f"resume from the previous checkpoint with `echo {older} > {os.path.join(load_dir, LATEST)}`"
                f" (or start from its weights with --init-from {os.path.join(load_dir, older)})")
    return "there is no earlier checkpoint in this directory; restore the files from a copy or start a new run"


def find_checkpoint(load_dir: str) -> Optional[tuple]:
    """Collective: (tag, our state) of the latest checkpoint of `load_dir` after verifying its checksums on rank 0,
    or None when there is none. A damaged checkpoint is one line naming the file and the previous checkpoint."""
    tag = read_latest(load_dir)
    if tag is None:
        return None
    tag_dir = os.path.join(load_dir, tag)
    problem = None
    if dist.get_rank() == 0:
        damage = damaged_file(tag_dir)
        if damage is not None:
            problem = f"checkpoint {tag_dir} cannot be trusted: {damage}; {_previous_hint(load_dir, tag)}"
    problem = agree(problem)
    if problem is not None:
        raise UsageError(problem)
    return tag, read_state(tag_dir)


def restore(engine, load_dir: str, tag: str, load_rng: bool = True) -> None:
    """Collective: DeepSpeed's model, optimizer and LR scheduler states, and this rank's RNG states."""
    tag_dir = os.path.join(load_dir, tag)
    path, _ = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise UsageError(f"DeepSpeed could not load {tag_dir}; is it a checkpoint of this ZeRO stage and world size?")
    path = rng_file(tag_dir, dist.get_rank())
    if load_rng and os.path.isfile(path):
        try:
            with open(path) as f:
                set_rng_states(json.load(f))
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise UsageError(f"{path} is not a random-state file of this version ({type(err).__name__}); resume "
                             "with --no-load-rng, or from another checkpoint") from None
