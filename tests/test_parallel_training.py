"""The real training loop (launch/pretrain_tinyllama.py) under TP=2 and PP=2 reproduces the single-process losses.

3 steps of the tiny Llama on tiny shards with a stage-1 EST schedule (0.5, 0.5, 0.5) then dense, ZeRO-1, plan and
replica checks on, validation at the end (the pipeline evaluates through eval_batch), packed documents kept apart
(--reset-position-ids, --reset-attention-mask, --eod-mask-loss: the document ids travel between pipeline stages).
"""
import pytest

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401


def run(shards, workdir, nproc, tp=1, pp=1):
    flags = train_flags(shards, workdir, zero=1, steps=3, **{
        "--check-plan-consistency": True, "--tensor-model-parallel-size": str(tp),
        "--pipeline-model-parallel-size": str(pp), "--eval-interval": "3",
        "--reset-position-ids": True, "--reset-attention-mask": True, "--eod-mask-loss": True})
    result = launch(flags, nproc=nproc)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "terminate called" not in output
    records = read_metrics(workdir / "logs")
    return train_losses(records), [r["val_loss"] for r in records if "val_loss" in r]


@pytest.fixture(scope="module")
def single(tiny_shards, tmp_path_factory):  # noqa: F811
    return run(tiny_shards, tmp_path_factory.mktemp("single"), 1)


@pytest.mark.parametrize("tp, pp", [(2, 1), (1, 2)])
def test_training_loop_layout_matches_single_process(tp, pp, single, tiny_shards, tmp_path):  # noqa: F811
    losses, val = run(tiny_shards, tmp_path, 2, tp, pp)
    assert len(losses) == 3 and len(val) == 1
    assert losses == pytest.approx(single[0], abs=1e-5, rel=0)
    assert val == pytest.approx(single[1], abs=1e-5, rel=0)


def test_training_loop_rejects_a_layout_that_cannot_work(tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, zero=2, steps=2, **{"--pipeline-model-parallel-size": "2"}),
                    nproc=2)
    assert result.returncode != 0  # each rank exits 2; torchrun reports 1
    assert "error: ZeRO stage 2 cannot run with pipeline parallelism" in result.stderr
