"""SAT and RAPTR on 2 processes under ZeRO-1/2/3, tested like EST: exit 0, identical plans and replicas on both
ranks (--check-plan-consistency), a falling loss. SAT's importance pre-pass is a forward of its own, which under
ZeRO-3 must leave the parameter bookkeeping intact; its ZeRO-3 checkpoint also merges for --init-from without
unpickling, to exactly what DeepSpeed's zero_to_fp32 gives."""
import pytest
import torch

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401
from est_megatron.checkpoint.reader import load_est_weights


@pytest.mark.parametrize("method, zero", [("sat", 3), ("raptr", 3), ("sat", 1), ("raptr", 2)])
def test_method_trains_on_two_processes(method, zero, tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, zero=zero, steps=6, **{
        "--method": method, "--check-plan-consistency": True, "--save": str(tmp_path / "ckpt"),
        "--save-interval": "100"}), nproc=2)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "terminate called" not in output and "Traceback" not in output
    records = [r for r in read_metrics(tmp_path / "logs") if "loss" in r and "event" not in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("replicas_identical") for r in records)
    losses = train_losses(records)
    assert losses[-1] < losses[0] - 0.3
    assert any(r["flops_saved_frac"] != 0 for r in records)  # the method trained subnetworks

    if zero == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        _, merged = load_est_weights(str(tmp_path / "ckpt"))
        reference = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path / "ckpt"), tag="step_000006")
        assert merged.keys() == reference.keys()
        assert all(torch.equal(merged[k], reference[k]) for k in reference)
