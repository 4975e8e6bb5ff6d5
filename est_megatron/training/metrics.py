"""Training logs on rank 0: a console line (above the tqdm bar), `metrics.jsonl`, TensorBoard events and, with
--wandb-project, Weights & Biases.

Every logged step is one JSON object (step, loss, lr, grad_norm, stage, realised rates, tokens/s, TFLOP/s, MFU,
tokens and FLOPs so far, FLOPs saved, memory); evaluations add `{"step", "val_loss", "val_ppl"}`; stage
transitions `{"event": "stage_transition"}`. The run's arguments are written once per start (`args.json` and a
TensorBoard text). Losses are also plotted against tokens seen and against FLOPs spent (Megatron's
`--log-*-vs-samples` idea): EST's steps cost less than dense ones, so FLOPs is the fair axis to compare runs on.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

import torch

from est_megatron.errors import UsageError

# Dense bf16 peak TFLOP/s of one device (vendor data sheets, SXM parts).
PEAK_BF16_TFLOPS = {"A100": 312.0, "H100": 989.0, "H200": 989.0}


def peak_tflops(override: Optional[float]) -> Optional[float]:
    """Peak of this device for MFU: --peak-tflops, else the table by CUDA device name, else None (CPU)."""
    if override:
        return override
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, value in PEAK_BF16_TFLOPS.items():
            if key in name:
                return value
    return None


def memory_gb() -> float:
    """CUDA max allocated, or the process' resident set size on CPU, in GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import psutil
    return psutil.Process().memory_info().rss / 2 ** 30


# TensorBoard steps are int64: FLOPs are counted in GFLOPs on the "vs FLOPs" axis so that any run fits.
FLOPS_AXIS_UNIT = 1e9


def _wandb_run(project: str, log_dir: Optional[str]):
    try:
        import wandb
    except ImportError:
        raise UsageError(f"--wandb-project {project} needs wandb: pip install wandb (or drop the flag)") from None
    return wandb.init(project=project, dir=log_dir)


class MetricsLogger:
    """Writes on rank 0 only; every method is a no-op elsewhere. `log_dir` holds metrics.jsonl and args.json,
    `tensorboard_dir` (default LOG_DIR/tensorboard) the event files."""

    def __init__(self, log_dir: Optional[str], active: bool, progress: bool, total: int, initial: int,
                 tensorboard_dir: Optional[str] = None, wandb_project: Optional[str] = None):
        self.active = active
        self.log_dir = log_dir or tensorboard_dir
        self.jsonl = None
        self.tb = None
        self.bar = None
        self.wandb = None
        if not active:
            return
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
            self.jsonl = open(os.path.join(self.log_dir, "metrics.jsonl"), "a", buffering=1)
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(tensorboard_dir or os.path.join(self.log_dir, "tensorboard"))
        if wandb_project:
            self.wandb = _wandb_run(wandb_project, self.log_dir)
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def line(self, text: str) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def record(self, obj: dict) -> None:
        if self.active and self.jsonl is not None:
            self.jsonl.write(json.dumps(obj) + "\n")

    def arguments(self, args: dict) -> None:
        """The run's arguments: args.json beside metrics.jsonl, a TensorBoard text, the W&B run's config."""
        if not self.active:
            return
        if self.log_dir:
            with open(os.path.join(self.log_dir, "args.json"), "w") as f:
                json.dump(args, f, indent=2, sort_keys=True)
        if self.tb is not None:
            table = "\n".join(f"| {k} | `{json.dumps(v)}` |" for k, v in sorted(args.items()))
            self.tb.add_text("arguments", "| argument | value |\n|---|---|\n" + table, 0)
        if self.wandb is not None:
            self.wandb.config.update(args, allow_val_change=True)

    def scalars(self, step: int, values: dict, prefix: str) -> None:
        if not self.active:
            return
        finite = {f"{prefix}/{k}": v for k, v in values.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if self.tb is not None:
            for key, value in finite.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None and finite:
            self.wandb.log(finite, step=step)

    def loss_series(self, prefix: str, loss: float, tokens: int, flops: int) -> None:
        """`loss` on the tokens-seen and FLOPs-spent axes: PREFIX_vs_tokens/loss, PREFIX_vs_gflops/loss."""
        if self.active and self.tb is not None and math.isfinite(loss):
            self.tb.add_scalar(f"{prefix}_vs_tokens/loss", loss, int(tokens))
            self.tb.add_scalar(f"{prefix}_vs_gflops/loss", loss, int(flops / FLOPS_AXIS_UNIT))

    def advance(self, n: int = 1, **postfix) -> None:
        if self.active and self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()
        sys.stdout.flush()
        sys.stderr.flush()
