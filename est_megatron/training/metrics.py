"""Training logs on rank 0: a console line (above the tqdm bar), `metrics.jsonl` and TensorBoard events.

Every logged step is one JSON object (step, loss, lr, stage, realised rates, tokens/s, TFLOP/s, MFU, FLOPs saved,
memory); evaluations add `{"step", "val_loss", "val_ppl"}`; stage transitions `{"event": "stage_transition"}`.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Optional

import torch

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


class MetricsLogger:
    """Writes on rank 0 only; every method is a no-op elsewhere."""

    def __init__(self, log_dir: Optional[str], active: bool, progress: bool, total: int, initial: int):
        self.active = active
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not active:
            return
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            self.jsonl = open(os.path.join(log_dir, "metrics.jsonl"), "a", buffering=1)
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(log_dir, "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None
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

    def scalars(self, step: int, values: dict, prefix: str) -> None:
        if self.active and self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and value is not None and math.isfinite(value):
                    self.tb.add_scalar(f"{prefix}/{key}", value, step)

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
        sys.stdout.flush()
        sys.stderr.flush()
