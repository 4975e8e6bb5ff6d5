"""The pieces behind fail-fast and never-train-on-garbage, in one process: a failed save keeps the previous
checkpoint, metrics files never mix runs, random states round-trip through JSON, damaged caches and failed
preprocessing leave one line and no debris, and a DeepSpeed without the attribute we rely on is refused."""
import json
import os
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist

from data_fixtures import load_tool, slimpajama_records, tokenizer_model, write_jsonl  # noqa: F401
from dist_utils import free_port, tiny_shards  # noqa: F401
from est_megatron.data.corpus import Corpus
from est_megatron.errors import UsageError
from est_megatron.training import checkpoint as ckpt
from est_megatron.training.metrics_file import start_metrics_file
from est_megatron.training.preflight import directory_problem


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class FakeEngine:
    """Writes a model file like DeepSpeed's engine, or fails midway like a full disk."""

    def __init__(self):
        self.fail = False

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        with open(os.path.join(save_dir, tag, "mp_rank_00_model_states.pt"), "wb") as f:
            f.write(b"weights" * 100)
        if self.fail:
            raise OSError(28, "No space left on device")


def test_failed_save_keeps_the_previous_checkpoint_and_pruning_keeps_the_newest(one_process_group, tmp_path):
    engine, save = FakeEngine(), str(tmp_path / "ckpt")
    for step in (1, 2, 3):
        ckpt.save_checkpoint(engine, save, step, {"step": step}, keep=2)
    assert sorted(n for n in os.listdir(save) if n.startswith("step_")) == ["step_000002", "step_000003"]
    engine.fail = True
    with pytest.raises(ckpt.SaveFailed, match=r"No space left on device.*previous checkpoint .*step_000003 is kept"):
        ckpt.save_checkpoint(engine, save, 4, {"step": 4}, keep=2)
    assert not os.path.exists(os.path.join(save, "step_000004"))
    assert open(os.path.join(save, "latest")).read() == "step_000003"
    tag, state = ckpt.find_checkpoint(save)
    assert (tag, state["step"]) == ("step_000003", 3)


def test_rng_states_round_trip_through_json():
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    saved = json.loads(json.dumps(ckpt.rng_states()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    ckpt.set_rng_states(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_new_run_moves_old_metrics_aside_and_a_resume_drops_later_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4, "lo')
    note = start_metrics_file(str(tmp_path), resumed_step=2)
    assert "dropped 2 record(s) after step 2" in note
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    note = start_metrics_file(str(tmp_path), resumed_step=0)
    assert "moved them to" in note and not path.exists()
    assert len([n for n in os.listdir(tmp_path) if n.startswith("metrics.") and n != "metrics.jsonl"]) == 1


def test_directory_problems_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is a file" in directory_problem("--save", str(tmp_path / "file"))
    assert "free but one checkpoint needs" in directory_problem("--save", str(tmp_path / "d"), need_bytes=1 << 62)
    assert directory_problem("--save", str(tmp_path / "d")) is None


def test_zero3_without_the_private_buffer_is_refused():
    from est_megatron.training.zero3_grads import check_zero3_internals

    class Engine:
        optimizer = object()

    with pytest.raises(UsageError, match="grad_partitions_flat_buffer"):
        check_zero3_internals(Engine())


def test_damaged_index_cache_is_named(tiny_shards, tmp_path):  # noqa: F811
    from est_megatron.data import build_datasets
    build_datasets([tiny_shards["prefix"]], "90,10,0", 32, 1, (64, 8, 0), cache_dir=str(tmp_path))
    victim = sorted(p for p in os.listdir(tmp_path) if p.endswith("_sample.npy"))[0]
    with open(tmp_path / victim, "r+b") as f:
        f.truncate(100)
    with pytest.raises(UsageError, match=f"index cache .*{victim} is damaged.*delete it"):
        build_datasets([tiny_shards["prefix"]], "90,10,0", 32, 1, (64, 8, 0), cache_dir=str(tmp_path))


def test_failed_preprocessing_leaves_no_corpus_and_resumes_once_the_input_is_fixed(tokenizer_model, tmp_path,  # noqa: F811
                                                                                  capsys):
    good = write_jsonl(str(tmp_path / "in" / "a_good.jsonl"), slimpajama_records(300, seed=5))
    broken = tmp_path / "in" / "b_broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": oops}\n')
    argv = ["--input", good, "--input", str(broken), "--format", "jsonl", "--tokenizer-model", tokenizer_model,
            "--output-prefix", str(tmp_path / "out" / "x"), "--shard-size", "500", "--no-progress"]
    with pytest.raises(SystemExit):
        load_tool("tools/preprocess_data.py").main(argv)
    assert "invalid JSON" in capsys.readouterr().err
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith(".manifest.json")]
    with pytest.raises(ValueError, match="names no data"):
        Corpus(str(tmp_path / "out" / "x"))
    broken.write_text('{"text": "ok"}\n{"text": "fixed"}\n')
    manifest = load_tool("tools/preprocess_data.py").main(argv)
    assert manifest["run"]["attempts"] == 2 and [s["documents"] for s in manifest["sources"]][1] == 2
    assert len(Corpus(str(tmp_path / "out" / "x"))) == manifest["documents"]
