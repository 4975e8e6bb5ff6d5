"""A pasted training command line, split into what the memory planner needs from its prefix and the training flags.

`deepspeed --num_gpus 8 --num_nodes 2 launch/pretrain_tinyllama.py --tensor-model-parallel-size 2 ...` (or
`torchrun --nproc_per_node 8 ...`, `python launch/pretrain_gpt2.py ...`, `deepspeed --module
est_megatron.cli.pretrain_gpt2 ...`): the launcher's process count sets the data-parallel size, the script's name
the model family whose defaults the training flags start from, and the rest are the training flags themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

from est_megatron.errors import UsageError

# The launchers' options that set the process count: processes per node and nodes.
PER_NODE = ("--num_gpus", "--num-gpus", "--nproc_per_node", "--nproc-per-node")
NODES = ("--num_nodes", "--num-nodes", "--nnodes")
# The launchers' options that take no value (every other option takes one).
LAUNCHER_SWITCHES = ("--module", "-m", "--standalone", "--no_python", "--no-python", "--no_local_rank",
                     "--no-local-rank", "--force_multi", "--save_pid", "--enable_each_rank_log", "--bind_cores_to_rank")
LAUNCHERS = ("deepspeed", "torchrun")


@dataclass(frozen=True)
class LaunchCommand:
    training_flags: List[str]
    family: str  # the FAMILY_DEFAULTS key of the training script ("tinyllama" unless it is a GPT-2 script)
    processes: Optional[int]  # all nodes' processes, when the launcher's flags give them


def _is_script(token: str, module: bool) -> bool:
    return token.endswith(".py") or (module and not token.startswith("-"))


def _is_python(token: str) -> bool:
    return os.path.basename(token).startswith("python")


def split_launch_command(argv: Sequence[str]) -> LaunchCommand:
    """The training flags of `argv`, and the family and process count its prefix names (argv without a prefix is
    all training flags)."""
    argv = list(argv)
    per_node = nodes = None
    module = False
    if argv and os.path.basename(argv[0]) in LAUNCHERS:
        argv.pop(0)
        while argv and argv[0].startswith("-") and not _is_script(argv[0], False):
            option, _, value = argv.pop(0).partition("=")
            module = module or option in ("--module", "-m")
            if not value and option not in LAUNCHER_SWITCHES and argv and not _is_script(argv[0], module):
                value = argv.pop(0)
            if option in PER_NODE:
                per_node = _count(option, value)
            elif option in NODES:
                nodes = _count(option, value)
    elif argv and _is_python(argv[0]):
        argv.pop(0)
        if argv[:1] == ["-m"]:
            argv.pop(0)
            module = True
    family = "tinyllama"
    if argv and _is_script(argv[0], module):
        family = "gpt2" if "gpt2" in os.path.basename(argv.pop(0)) else "tinyllama"
    processes = None if per_node is None else per_node * (nodes or 1)
    return LaunchCommand(argv, family, processes)


def _count(option: str, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"launcher option {option} {value!r} must be a positive number of processes or nodes")
    return int(value)
