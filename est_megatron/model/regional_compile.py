"""Regional compilation (--compile): each transformer layer's block goes through torch.compile on its own, as
torchtitan does, instead of the whole model.

All layers run one code object (`TransformerLayer.block`) with their parameters as graph inputs, so they share
its compiled graphs. Shapes are static (`dynamic=False`): a stage's exact rates fix every gathered shape, so a
stage compiles once; the plan's index tensors are graph inputs, whose values change every step without a
recompile, and its scales (fixed within a stage) are constants. `recompile_limit` bounds the graphs of the block
so that a layer whose guards keep failing cannot recompile every step: past the bound torch runs the layer
eagerly, and `CompileWatch` reports that in one line instead of torch's warning.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from est_megatron.model.layer import TransformerLayer

DEFAULT_BACKEND = "inductor"
LIMIT_WARNING = "torch._dynamo hit config."  # how torch's recompile-limit warning starts


def recompile_limit(num_stages: int) -> int:
    """Graphs the block may need: per stage its training graph and one more for RAPTR's scaled residual; and the
    dense model's two (validation without gradients, and training)."""
    return 2 * num_stages + 2


def compile_layers(model: torch.nn.Module, num_stages: int, backend: str = DEFAULT_BACKEND) -> int:
    """Compile the block of every transformer layer of `model` (this rank's part of it, on its device); returns
    the bound on its graphs. The rotary tables are made first: made inside the first graph, they would make the
    second layer's call a recompile."""
    limit = recompile_limit(num_stages)
    for layer in model.modules():
        if isinstance(layer, TransformerLayer):
            if layer.attn.rotary is not None:
                layer.attn.rotary.get(0, layer.attn.qkv.weight)
            layer.compiled_block = torch.compile(layer.block, backend=backend, dynamic=False,
                                                 recompile_limit=limit)
    return limit


class CompileWatch:
    """Counts the block's compiled graphs and notices torch falling back to eager at the recompile bound.

    `warn` gets one line the first time the bound is hit (torch's own multi-line warning is held back until
    `close`, which a run never needs: its watch lasts as long as its process)."""

    def __init__(self, limit: int, warn: Callable[[str], None]):
        self.limit, self.warn = limit, warn
        self.limit_hit = False
        self._graphs_before = _dynamo_counters()["stats"]["unique_graphs"]
        logging.getLogger("torch._dynamo.convert_frame").addFilter(self._on_torch_warning)

    def _on_torch_warning(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(LIMIT_WARNING):
            return True
        if not self.limit_hit:
            self.limit_hit = True
            self.warn(f"--compile: the transformer layer recompiled {self.limit} times (the bound: 2 per stage + 2);"
                      " from now on a layer whose inputs match none of its compiled graphs runs eagerly, which is "
                      "correct but slower (a plan shape or scale changing within a stage?)")
        return False

    @property
    def graphs(self) -> int:
        """FX graphs torch.compile has built since the watch began (a graph break splits a compile in several)."""
        return _dynamo_counters()["stats"]["unique_graphs"] - self._graphs_before

    @property
    def recompiles(self) -> int:
        """Compiles of the layer block after its first (one per stage and mode is expected)."""
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
        return max(len(_debug_get_cache_entry_list(TransformerLayer.block.__code__)) - 1, 0)

    def record(self) -> dict:
        return {"compiled_graphs": self.graphs, "recompiles": self.recompiles,
                "compile_eager_fallback": self.limit_hit}

    def close(self) -> None:
        logging.getLogger("torch._dynamo.convert_frame").removeFilter(self._on_torch_warning)


def _dynamo_counters():
    """torch._dynamo's counters, imported here: importing torch._dynamo takes a second or more, which every run
    without --compile (and every DataLoader worker it spawns) would pay at start-up."""
    from torch._dynamo.utils import counters
    return counters
