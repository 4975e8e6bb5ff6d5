"""Bad input ends the run with one `error: ...` line (exit 2), no traceback."""
from dist_utils import launch, tiny_shards, train_flags  # noqa: F401


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and all(f in errors[0] for f in fragments), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_batch_not_divisible(tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, **{"--global-batch-size": "10", "--micro-batch-size": "4"}))
    assert_one_line_error(result, "--global-batch-size 10 is not divisible by micro-batch 4 x data-parallel size 1")


def test_missing_data_path(tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, **{"--data-path": str(tmp_path / "nowhere" / "corpus")}))
    assert_one_line_error(result, "nowhere")


def test_world_size_mismatch_on_two_ranks(tiny_shards, tmp_path):  # noqa: F811
    result = launch(train_flags(tiny_shards, tmp_path, **{"--global-batch-size": "6", "--micro-batch-size": "2"}),
                    nproc=2)
    assert result.returncode != 0
    assert "error: --global-batch-size 6 is not divisible by micro-batch 2 x data-parallel size 2" in result.stderr
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr


def test_checkpoint_of_another_shape(tiny_shards, tmp_path):  # noqa: F811
    ckpt = str(tmp_path / "ckpt")
    first = launch(train_flags(tiny_shards, tmp_path, steps=2, **{"--save": ckpt}))
    assert first.returncode == 0, first.stderr[-3000:]
    result = launch(train_flags(tiny_shards, tmp_path, steps=4, **{"--load": ckpt, "--num-layers": "2"}))
    assert_one_line_error(result, "num_layers=4", "num_layers=2")
