"""A training run's logs: grad_norm, tokens and cumulative FLOPs in metrics.jsonl and TensorBoard, the loss against
tokens and FLOPs, the arguments once; Megatron's flag spellings drive the run."""
import json
import math
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dist_utils import launch, read_metrics, tiny_shards, train_flags  # noqa: F401
from est_megatron.errors import UsageError
from est_megatron.training.metrics import FLOPS_AXIS_UNIT, MetricsLogger

TOKENS_PER_STEP = 8 * 32  # global batch x sequence length of dist_utils.train_flags


def test_run_writes_new_metrics_and_tensorboard_scalars(tiny_shards, tmp_path):  # noqa: F811
    tb_dir = tmp_path / "tb"
    flags = train_flags(tiny_shards, tmp_path, zero=1, **{
        "--train-steps": None, "--train-iters": "3", "--lr-warmup-steps": None, "--lr-warmup-iters": "1",
        "--lr-decay-iters": "2", "--data-cache-dir": None, "--data-cache-path": str(tmp_path / "cache"),
        "--tensorboard-dir": str(tb_dir), "--eval-interval": "2",
        "--reset-position-ids": True, "--reset-attention-mask": True, "--eod-mask-loss": True})
    done = launch(flags)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "packed documents (EOD id 2): positions restart, attention stays inside each document, no loss where " \
        "the input is EOD" in done.stdout + done.stderr
    rows = [r for r in read_metrics(tmp_path / "logs") if "loss" in r and "event" not in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["tokens"] for r in rows] == [TOKENS_PER_STEP * s for s in (1, 2, 3)]
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) for r in rows)
    assert 0 < rows[0]["flops"] < rows[1]["flops"] < rows[2]["flops"]
    assert rows[2]["lr"] == pytest.approx(3e-4)  # --lr-decay-iters 2: the decay ended at --min-lr
    with open(tmp_path / "logs" / "args.json") as f:
        recorded = json.load(f)
    assert recorded["train_steps"] == 3
    assert recorded["reset_position_ids"] and recorded["reset_attention_mask"] and recorded["eod_mask_loss"]

    events = EventAccumulator(str(tb_dir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/grad_norm", "train/tokens", "train/flops", "train_vs_tokens/loss",
            "train_vs_gflops/loss", "valid/loss", "valid_vs_tokens/loss"} <= scalars
    by_tokens = events.Scalars("train_vs_tokens/loss")
    assert [e.step for e in by_tokens] == [r["tokens"] for r in rows]
    assert [e.value for e in by_tokens] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [e.step for e in events.Scalars("train_vs_gflops/loss")] == [int(r["flops"] / FLOPS_AXIS_UNIT)
                                                                       for r in rows]
    assert [e.value for e in events.Scalars("train/grad_norm")] == pytest.approx([r["grad_norm"] for r in rows])
    assert any(tag.startswith("arguments") for tag in events.Tags()["tensors"])


def test_wandb_project_without_wandb_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: import fails
    with pytest.raises(UsageError, match="--wandb-project demo needs wandb: pip install wandb"):
        MetricsLogger(str(tmp_path), True, False, 1, 0, wandb_project="demo")
