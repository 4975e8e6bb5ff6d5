"""2 processes on gloo under ZeRO 2 and 3: 3 steps, save, resume, 3 steps. (ZeRO-1 resumes in
tests/test_parallel_checkpoints.py, under tensor parallelism.)

Each stage must: exit 0 (no "terminate called" at teardown), lower the loss, keep the plan and the parameters
identical on both ranks (--check-plan-consistency raises otherwise), log the stage transition at the scheduled
step, and reproduce the losses of one uninterrupted 6-step ZeRO-2 run — exactly for ZeRO-2 (exact resumption),
to float32 rounding for ZeRO-3 (which also shows that ZeRO-3 does not apply stale gradients to the layers a
plan skips). Two torchrun "nodes" on this machine (--nnodes 2, each with its own --data-cache-dir, a shared
--save) do the same as one node.
"""
import os

import pytest

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401
from est_megatron.bench import soak


def check_run(result):
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "terminate called" not in output


@pytest.fixture(scope="module")
def reference(tiny_shards, tmp_path_factory):  # noqa: F811
    work = tmp_path_factory.mktemp("reference")
    result = launch(train_flags(tiny_shards, work, zero=2, steps=6, **{"--check-plan-consistency": True}), nproc=2)
    check_run(result)
    return train_losses(read_metrics(work / "logs"))


@pytest.mark.parametrize("zero", [2, 3])
def test_zero_stage_resume_matches_uninterrupted(zero, tiny_shards, reference, tmp_path):  # noqa: F811
    flags = dict(zero=zero, steps=6, **{"--check-plan-consistency": True, "--save": str(tmp_path / "ckpt"),
                                        "--save-interval": "100"})
    first = launch(train_flags(tiny_shards, tmp_path, **flags, **{"--exit-interval": "3"}), nproc=2)
    check_run(first)
    with open(tmp_path / "ckpt" / "latest") as f:
        assert f.read() == "step_000003"
    second = launch(train_flags(tiny_shards, tmp_path, **flags, **{"--load": str(tmp_path / "ckpt")}), nproc=2)
    check_run(second)
    assert "resumed from" in second.stdout + second.stderr

    records = read_metrics(tmp_path / "logs")
    losses = train_losses(records)
    assert [r["step"] for r in records if "loss" in r and "event" not in r] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("replicas_identical") for r in records if "loss" in r and "event" not in r)
    assert losses[-1] < losses[0] - 0.3
    if zero == 2:
        assert losses == reference
    else:
        assert losses == pytest.approx(reference, rel=1e-5)

    transitions = [r for r in records if r.get("event") == "stage_transition"]
    assert [(t["step"], t["stage"], t["rates"]) for t in transitions] == [(3, 2, [1.0, 1.0, 1.0])]
    first_steps = [r for r in records if r.get("step") == 1 and "loss" in r]
    assert first_steps[0]["stage"] == 1 and first_steps[0]["p_layers"] == 0.5
    assert 0 < first_steps[0]["flops_saved_frac"] < 1 and first_steps[0]["mfu"] is None
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert sorted(os.listdir(tmp_path / "ckpt" / "step_000006")) != []


def test_two_nodes_on_one_machine_train_save_and_resume_as_one_node(tiny_shards, reference, tmp_path):  # noqa: F811
    ckpt = str(tmp_path / "ckpt")
    flags = train_flags(tiny_shards, tmp_path, zero=2, steps=6, **{"--check-plan-consistency": True, "--save": ckpt,
                                                                   "--load": ckpt, "--data-cache-dir": None})
    outputs = []
    for extra in (["--exit-interval", "3"], []):
        run = soak.run_once(soak.commands(soak.Cell("two-node", 2, "zero2"), flags + extra, str(tmp_path)),
                            str(tmp_path), bound=240, grace=30, stop=None)
        assert run["statuses"] == [0, 0] and run["orphans"] == 0 and not run["hung"], run["output"][-4000:]
        outputs.append(run["output"])
    assert f"resumed from {ckpt} at step 3" in outputs[1]
    assert train_losses(read_metrics(tmp_path / "logs")) == reference
    for node in (0, 1):  # each node built the indices it reads
        assert len(list((tmp_path / f"cache_node{node}").glob("*_train_*.npy"))) == 3
