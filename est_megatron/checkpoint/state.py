"""The run state of a training checkpoint: `est_state.json` in its tag directory, written by rank 0 beside
DeepSpeed's files. It holds what DeepSpeed does not: step, consumed samples, FLOPs counters, the model config,
schedule, layout and the run's flags, so a checkpoint can be resumed, checked against a run, or read without the
flags that made it."""
from __future__ import annotations

import json
import os

from est_megatron.checkpoint.durable import write_durably

STATE_FILE = "est_state.json"


def write_state(tag_dir: str, state: dict) -> None:
    write_durably(os.path.join(tag_dir, STATE_FILE), json.dumps(state, indent=2) + "\n")


def read_state(tag_dir: str) -> dict:
    """The tag's run state, {} when it has none."""
    path = os.path.join(tag_dir, STATE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)
