"""Checkpoints: DeepSpeed's (model, ZeRO optimizer partitions, LR scheduler) plus our state, committed atomically.

Layout of `--save DIR`: `DIR/step_000123/` is DeepSpeed's tag directory, to which we add `est_state.json` (step,
consumed samples, FLOPs counters, model config, schedule, args) and one `rng_state_rankNNNNN.pt` per rank.
`DIR/latest` names the newest complete tag (DeepSpeed's own format, so its tools such as zero_to_fp32.py work).

DeepSpeed's own `latest` is written with a plain open/write (a crash mid-write leaves it empty or pointing at a
half-written tag), so we save with `save_latest=False` and, after a barrier that waits for every rank's files,
rank 0 replaces `latest` atomically (temp file, fsync, os.replace). A crash at any moment leaves `latest` on a
complete checkpoint. Old tags beyond `--keep-checkpoints` are removed only after the pointer moved.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from est_megatron.config import ModelConfig
from est_megatron.data.atomic import atomic_open
from est_megatron.errors import UsageError

TAG_RE = re.compile(r"^step_(\d+)$")
STATE_FILE = "est_state.json"


def tag_for(step: int) -> str:
    return f"step_{step:06d}"


def _atomic_write(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def rng_states() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_latest(load_dir: str) -> Optional[str]:
    """The tag `latest` points to, or None when the directory holds no checkpoint."""
    path = os.path.join(load_dir, "latest")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        tag = f.read().strip()
    if not tag or not os.path.isfile(os.path.join(load_dir, tag, STATE_FILE)):
        raise UsageError(f"{path} points at {tag!r}, which is not a complete checkpoint; point it at a "
                         f"step_* directory holding {STATE_FILE}")
    return tag


def save_checkpoint(engine, save_dir: str, step: int, state: dict, keep: int) -> str:
    """Collective: every rank saves its part; returns the tag. `state` must be JSON-serialisable."""
    tag = tag_for(step)
    rank = dist.get_rank()
    engine.save_checkpoint(save_dir, tag=tag, client_state={"est_step": step}, save_latest=False)
    tag_dir = os.path.join(save_dir, tag)
    os.makedirs(tag_dir, exist_ok=True)
    with atomic_open(os.path.join(tag_dir, f"rng_state_rank{rank:05d}.pt")) as f:
        torch.save(rng_states(), f)
    if rank == 0:
        _atomic_write(os.path.join(tag_dir, STATE_FILE), json.dumps(state, indent=2) + "\n")
    dist.barrier()  # every rank's DeepSpeed files and RNG state are on disk
    if rank == 0:
        _atomic_write(os.path.join(save_dir, "latest"), tag)
        if keep > 0:
            _remove_old(save_dir, keep, current=tag)
    dist.barrier()
    return tag


def _remove_old(save_dir: str, keep: int, current: str) -> None:
    tags = sorted((int(m.group(1)), name) for name in os.listdir(save_dir)
                  if (m := TAG_RE.match(name)) and os.path.isdir(os.path.join(save_dir, name)))
    for _, name in tags[:-keep]:
        if name != current:
            shutil.rmtree(os.path.join(save_dir, name), ignore_errors=True)


def check_model_matches(saved: dict, model: ModelConfig, where: str) -> None:
    """UsageError naming the first model field whose value differs from the checkpoint's."""
    current = dataclasses.asdict(model)
    for name, value in current.items():
        if name in saved and saved[name] != value:
            raise UsageError(f"checkpoint {where} has model {name}={saved[name]} but this run has {name}={value}; "
                             f"load it with the same model shape (--model/--{name.replace('_', '-')}) or start "
                             "a fresh --save directory")


def load_checkpoint(engine, load_dir: str, model: ModelConfig) -> Optional[dict]:
    """Collective: restore the latest checkpoint of `load_dir` into the engine; our state, or None if none."""
    tag = read_latest(load_dir)
    if tag is None:
        return None
    tag_dir = os.path.join(load_dir, tag)
    with open(os.path.join(tag_dir, STATE_FILE)) as f:
        state = json.load(f)
    check_model_matches(state["model"], model, tag_dir)
    path, _ = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise UsageError(f"DeepSpeed could not load {tag_dir}; is it a checkpoint of this ZeRO stage and world size?")
    rng_file = os.path.join(tag_dir, f"rng_state_rank{dist.get_rank():05d}.pt")
    if os.path.isfile(rng_file):
        set_rng_states(torch.load(rng_file, weights_only=False))
    return state
