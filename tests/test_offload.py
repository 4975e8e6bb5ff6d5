"""The offload configs (optimizer states, and under ZeRO-3 parameters, in CPU memory) train with our optimizer:
2 steps on 2 CPU processes, exit 0, finite losses that fall."""
import math

import pytest

from dist_utils import launch, read_metrics, tiny_shards, train_flags, train_losses  # noqa: F401


@pytest.mark.parametrize("config", ["2_offload", "3_offload"])
def test_offload_config_trains_two_steps(config, tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, zero=config, steps=2), nproc=2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    losses = train_losses(read_metrics(tmp_path / "logs"))
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[1] < losses[0]
